"""What a daemon module declares: which hosts run it, the files it renders, the services it needs
opened, its lines in the files several daemons share (rc.conf.local, root's crontab), how its
configuration is checked, and how the lab starts it.

Pure data: a daemon module builds one Daemon from small functions of the model; the registry in
mailsite/daemons/__init__.py lists them, and everything that goes daemon by daemon (render_host,
the firewall's rule set, configtest, the lab) iterates that one registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Literal, Mapping

from ..model import Host, HostAddresses, HostSecrets, Site
from ..service import Service
from ..templates import OPENBSD, LinuxDifferences, RenderedFile


@dataclass(frozen=True)
class LabRun:
    """How the lab starts a daemon inside a host's namespaces (its /etc is the rendered tree)."""

    argv: tuple[str, ...]  # in the foreground, so the lab holds its pid and its log
    listens: tuple[int, Literal["tcp", "udp"]] | None  # (port, protocol) it listens on once ready
    # The configuration argv makes it read, absolute as on the host: the host's tree carries it.
    # None: its package's own, which reads the tree's files (rspamd's rspamd.conf, its local.d).
    config: str | None = None
    # The daemon root it runs from (mailsite.daemonroot.ROOTS): a daemon of another root than the
    # host's other daemons gets a tree over that root, in the host's network but its own mounts.
    root: str = "daemons"


@dataclass(frozen=True)
class ConfigTest:
    """A daemon's own parser run on one file of a rendered tree (mailsite.configtest runs it)."""

    parser: Literal["smtpd -n", "bgpd -n", "sh -n", "doveconf", "rspamadm configtest"]
    path: str  # below the tree's root: etc/mail/smtpd.conf


@dataclass(frozen=True, eq=False)
class HostContext:
    """What a daemon renders a host's files from."""

    site: Site
    host: Host
    addresses: Mapping[str, HostAddresses]
    secrets: HostSecrets
    daemons: tuple[Daemon, ...]  # every daemon on this host, in start order
    linux: LinuxDifferences = OPENBSD

    @cached_property
    def services(self) -> list[Service]:
        """Everything this host's daemons need opened (pf.conf is made from it)."""
        return opened(self.daemons, self.site, self.host, self.addresses)

    @property
    def own(self) -> HostAddresses:
        return self.addresses[self.host.name]


def opened(daemons: tuple[Daemon, ...], site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    """The services of `daemons` on `host`: what the whole internet reaches first, then what only
    named sources reach, each part in registry order (pf.conf lists its rules in this order)."""
    services = [service for daemon in daemons for service in daemon.services(site, host, addresses)]
    return sorted(services, key=lambda service: not service.from_anywhere)


def every_host(site: Site, host: Host) -> bool:
    return True


def no_files(context: HostContext) -> dict[str, RenderedFile]:
    return {}


def no_services(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    return []


def no_lines(context: HostContext) -> str:
    return ""


@dataclass(frozen=True)
class Daemon:
    name: str  # as rc.d(8) names it: smtpd, bgpd, spamd
    # The OpenBSD package it comes from (dovecot, rspamd), None for the base system's. rc(8) starts
    # a package's rc.d script only when it is listed in pkg_scripts, the one variable every
    # package daemon shares: the host basics write it, in registry order, from this field.
    package: str | None = None
    # Other packages it needs that start no daemon of their own (the filter smtpd runs for rspamd,
    # Dovecot's Sieve plugin): the image installs them too, pinned in images.packages like `package`.
    packages: tuple[str, ...] = ()
    runs_on: Callable[[Site, Host], bool] = every_host
    files: Callable[[HostContext], dict[str, RenderedFile]] = no_files  # path below / -> file
    services: Callable[[Site, Host, Mapping[str, HostAddresses]], list[Service]] = no_services
    # Its lines in the files several daemons share; the host basics put them together in
    # registry order after their own header.
    rc_conf_local: Callable[[HostContext], str] = no_lines
    crontab: Callable[[HostContext], str] = no_lines
    configtests: tuple[ConfigTest, ...] = ()
    lab: LabRun | None = None  # None: the lab does not run it (Linux has no pf, no spamd)
