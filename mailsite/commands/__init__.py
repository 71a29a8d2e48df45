"""The tool's commands, one module each: `register(commands, parents)` adds its parser (taking
shared options from `parents`), `run(args)` does it and returns the exit status. A command raises
MailsiteError for what it cannot do; mailsite.cli says it, once, for every command."""

from __future__ import annotations

from . import backup, bake, configtest, diff, doctor, lab, render, rotate, rotate_dkim, secrets, snapshot, user

# In the order `mailsite --help` lists them.
COMMANDS = (render, configtest, diff, doctor, bake, rotate, rotate_dkim, secrets, user, backup, lab, snapshot)
