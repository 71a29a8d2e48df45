"""The one exception hierarchy: every error the tool means to report is a MailsiteError, and the
command line translates it once (mailsite.cli), one line per problem, into its exit status."""

from __future__ import annotations


class MailsiteError(Exception):
    """An operation that could not be done (a host unreachable, a bake or a daemon that failed):
    the message is one line saying what failed and what to do. Exit status 1."""

    exit_code = 1


class UserError(MailsiteError):
    """Something the user must fix (a setting, an argument, a path) before running again.
    Exit status 2."""

    exit_code = 2
