"""spamlogd(8): keeps senders white while they keep talking to us, from what pf logs to pflog1."""

from __future__ import annotations

from ..templates import RenderedFile, render_template
from .base import Daemon, HostContext


def files(context: HostContext) -> dict[str, RenderedFile]:
    # pf.conf logs smtp to pflog1 for spamlogd alone; the interface exists for it.
    return {"etc/hostname.pflog1": RenderedFile(render_template("spamlogd/hostname.pflog1.j2"), 0o640)}


def rc_conf_local(context: HostContext) -> str:
    site, host = context.site, context.host
    return render_template(
        "spamlogd/rc.conf.local.j2",
        white_expiry_hours=site.greylist.white_expiry_hours,
        sync_peers=[context.addresses[peer.name].ipv4 for peer in site.spamd_sync_peers(host)],
    )


# No lab run: without pf there is no pflog1 to read.
spamlogd = Daemon("spamlogd", files=files, rc_conf_local=rc_conf_local)
