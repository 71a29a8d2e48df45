"""The primary's mail volume, as the image sees it: /etc/rc.securelevel mounts it at boot (the
volume itself is components/data_volume.py's). Not a daemon, but a unit like one: a file on the
primary and its check. Its own module rather than the host basics': only the primary has it, and
configtest expects every file of a module that runs on every host on every host."""

from __future__ import annotations

from ..model import MAIL_UID, MAIL_USER, MAILBOXES, STATE_MOUNT, Host, Site
from ..templates import RenderedFile, render_template
from .acme import JOB as CERTIFICATES_JOB
from .base import ConfigTest, Daemon, HostContext

RC_SECURELEVEL = "etc/rc.securelevel"
# spamd(8)'s greylist database: the path is compiled in (PATH_SPAMD_DB), so it becomes a link
# to the volume.
SPAMD_DB = "/var/db/spamd"
SPAMD_ON_VOLUME = f"{STATE_MOUNT}/spamd/spamd"


def render_rc_securelevel(site: Site, host: Host) -> str:
    return render_template(
        "mail-volume/rc.securelevel.j2",
        mx_name=host.mx_name,
        duid=site.mail_volume_duid,
        mount_point=STATE_MOUNT,
        mailboxes=MAILBOXES,
        mail_user=MAIL_USER,
        mail_uid=MAIL_UID,
        spamd_db=SPAMD_DB,
        spamd_on_volume=SPAMD_ON_VOLUME,
        certificates_job=f"/{CERTIFICATES_JOB}",
    )


def files(context: HostContext) -> dict[str, RenderedFile]:
    # /etc/rc runs it with sh (`sh /etc/rc.securelevel`): it needs no execute bit.
    return {RC_SECURELEVEL: RenderedFile(render_rc_securelevel(context.site, context.host))}


mail_volume = Daemon(
    "mail-volume",
    runs_on=lambda site, host: host.is_primary,
    files=files,
    # /etc/rc runs it as root before the daemons start: a slip there leaves the mail unmounted.
    configtests=(ConfigTest("sh -n", RC_SECURELEVEL),),
)
