"""redis(1) on the primary: where rspamd keeps its state, reached over loopback only."""

from __future__ import annotations

from ..model import Host, Site
from ..templates import RenderedFile, render_template
from .base import Daemon, HostContext, LabRun

CONFIG = "etc/redis/redis.conf"  # where OpenBSD's rc.d/redis reads it
ADDRESS = "127.0.0.1"
PORT = 6379
# The package's own directory (its DBDIR), made by pkg_add for _redis.
DIRECTORY = "/var/redis"
MAX_MEMORY = "128mb"


def on_the_primary(site: Site, host: Host) -> bool:
    return host.is_primary  # rspamd runs there alone


def files(context: HostContext) -> dict[str, RenderedFile]:
    text = render_template("redis/redis.conf.j2", mx_name=context.host.mx_name, address=ADDRESS, port=PORT,
                           directory=DIRECTORY, max_memory=MAX_MEMORY)
    return {CONFIG: RenderedFile(text)}


redis = Daemon(
    "redis",
    package="redis",
    runs_on=on_the_primary,
    files=files,
    # In the foreground: the lab holds its pid and its log (rc.d/redis lets it go to the background).
    lab=LabRun(("redis-server", f"/{CONFIG}", "--daemonize", "no", "--syslog-enabled", "no"), (PORT, "tcp"),
               config=f"/{CONFIG}"),
)
