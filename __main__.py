"""The Pulumi program: the mail site this stack's `mailsite:` settings describe."""

import os
from pathlib import Path

import pulumi

from components.mail_site import MailSite, MailSiteArgs
from mailsite.departure import DECOMMISSION
from mailsite.problems import SiteConfigError
from mailsite.replacement import SITE
from mailsite.dkim import dkim_records
from mailsite.secrets import site_dkim_keys, site_secrets
from mailsite.stack import stack_site


def main() -> MailSite:
    try:
        site = stack_site()
        # Keys are read, never created here (that is `python -m mailsite secrets init`).
        secrets = site_secrets(site, pulumi.get_stack(), Path(__file__).resolve().parent)
        dkim = dkim_records(site_dkim_keys(site, pulumi.get_stack(), Path(__file__).resolve().parent).values())
    except SiteConfigError as error:
        # One line per problem, no traceback: the same words `python -m mailsite` prints.
        raise pulumi.RunError("\n".join(f"error: {problem}" for problem in error.problems)) from None
    if os.environ.get(DECOMMISSION):
        pulumi.log.warn(f"{DECOMMISSION} is set: each VM this run deletes is drained without waiting for its peers (a decommission)")
    mail = MailSite(SITE, MailSiteArgs(site, secrets, dkim))
    pulumi.export("mx", mail.mx_table)
    pulumi.export("hosts", mail.host_outputs)
    return mail


if __name__ == "__main__":
    main()
