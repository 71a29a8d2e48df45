"""httpd(8): on every MX, the answers to the CA's http-01 challenges on port 80 for each name
acme-client asks a certificate for; on the primary also the site's MTA-STS policy over https at
mta-sts.<domain> of each site domain. Nothing else: any other request is refused."""

from __future__ import annotations

from typing import Mapping

from ..model import Host, HostAddresses, Site
from ..mta_sts import WELL_KNOWN_PATH, policy_text
from ..service import ANYWHERE, Service
from ..templates import RenderedFile, render_template
from .acme import CHALLENGEDIR, certificates, mta_sts_names
from .base import Daemon, HostContext

CONFIG = "etc/httpd.conf"
# httpd's chroot; a location's root is a directory below it.
CHROOT = "/var/www"
POLICY_ROOT = "/mta-sts"
# The policy at the path senders ask for, below POLICY_ROOT in the chroot.
POLICY_FILE = f"{CHROOT.lstrip('/')}{POLICY_ROOT}{WELL_KNOWN_PATH}"


def render_httpd_conf(site: Site, host: Host) -> str:
    names = [name for certificate in certificates(site, host) for name in certificate.names]
    servers = [
        {"name": chunk[0], "aliases": chunk[1:], "certificate": site.tls.certificate_named(chunk[0]),
         "key": site.tls.key_named(chunk[0])}
        for chunk in mta_sts_names(site, host)
    ]
    return render_template(
        "httpd/httpd.conf.j2",
        mx_name=host.mx_name,
        # Every other name the host's certificates are for: the CA asks each one at this host.
        challenge_aliases=[name for name in names if name != host.mx_name],
        challengedir=CHALLENGEDIR,
        mta_sts_servers=servers,
        policy_file=f"/{POLICY_FILE}",
        policy_path=WELL_KNOWN_PATH,
        policy_root=POLICY_ROOT,
    )


def files(context: HostContext) -> dict[str, RenderedFile]:
    site, host = context.site, context.host
    tree = {CONFIG: RenderedFile(render_httpd_conf(site, host))}
    if host.is_primary:
        # RFC 8461, 3.2: a line of the policy ends in LF or CRLF; LF, as every rendered file (a CR
        # is a control character no file of a host's tree holds).
        tree[POLICY_FILE] = RenderedFile(policy_text(site).replace("\r\n", "\n"))
    return tree


def services(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    # The CA connects from wherever it likes (Let's Encrypt validates from several networks at
    # once, undisclosed), so port 80 is open to all; 443 only where the MTA-STS policy is.
    opened = [Service("www", "tcp", 80, ANYWHERE, "the certificate authority's http-01 challenges (acme-client)")]
    if host.is_primary:
        opened.append(Service("https", "tcp", 443, ANYWHERE, "the MTA-STS policy senders fetch"))
    return opened


def rc_conf_local(context: HostContext) -> str:
    return render_template("httpd/rc.conf.local.j2", mta_sts=context.host.is_primary)


# No lab run: httpd is OpenBSD's alone (the lab's ACME scenario answers http-01 with lego's own server).
httpd = Daemon("httpd", files=files, services=services, rc_conf_local=rc_conf_local)
