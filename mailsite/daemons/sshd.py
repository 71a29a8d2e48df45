"""sshd(8): the administrators' way in, from adminCidrs only, with the keys of adminSshKeys."""

from __future__ import annotations

from typing import Mapping

from ..model import Host, HostAddresses, Site
from ..service import Service
from ..templates import RenderedFile, render_template
from .base import Daemon, HostContext


def files(context: HostContext) -> dict[str, RenderedFile]:
    return {"root/.ssh/authorized_keys": RenderedFile(render_template("sshd/authorized_keys.j2", keys=context.site.admin_ssh_keys), 0o600)}


def services(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    admin = tuple(str(cidr) for cidr in site.admin_cidrs)
    # No adminCidrs: no ssh from outside at all (the console is the way in).
    return [Service("ssh", "tcp", 22, admin, "administration", rate_limited=True)] if admin else []


# OpenBSD enables sshd by default: no rc.conf.local line. The lab reaches hosts by nsenter.
sshd = Daemon("sshd", files=files, services=services)
