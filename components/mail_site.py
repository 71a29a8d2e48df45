"""MailSite: the whole site. Addresses first (the images need them), then each host's image and
VM, then DNS that points at them; the firewall is made from the same rule set as pf.

The one component that reads the Site: it picks the target (components/targets.py) and hands
every other component only the values it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pulumi

from mailsite.dns import DnsRecord
from mailsite.firewall import cloud_rules, inbound_services
from mailsite.model import Host, HostSecrets, Site
from mailsite.render import render_host
from mailsite.templates import HostTree
from mailsite.replacement import data_volume_resource, host_resource, image_resource

from .data_volume import DataVolume, DataVolumeArgs
from .host_image import HostImage, HostImageArgs, ImageSettings
from .mx_host import MxHost, MxHostArgs, drain_hook
from .site_addresses import SiteAddresses, SiteAddressesArgs
from .site_dns import SiteDns, SiteDnsArgs, dns_args
from .site_firewall import SiteFirewall, SiteFirewallArgs
from .targets import target_for


@dataclass
class MailSiteArgs:
    site: Site  # the stack's `mailsite:` settings, validated
    secrets: Mapping[str, HostSecrets]  # by host name; read from the backend by the program
    # The DKIM keys' TXT records, every selector still valid (mailsite.dkim): public, read from
    # the backend by the program too, so the primary's keys and DNS come from one stored state.
    dkim: Sequence[DnsRecord] = ()


class MailSite(pulumi.ComponentResource):
    hosts: dict[str, MxHost]
    images: dict[str, HostImage]

    def __init__(self, name: str, args: MailSiteArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:MailSite", name, None, opts)
        site = args.site
        target = target_for(site)
        providers = target.providers(name, pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, providers=providers)
        addresses = SiteAddresses(f"{name}-addresses", SiteAddressesArgs(target, site.hosts), child)
        firewall = SiteFirewall(
            f"{name}-firewall",
            SiteFirewallArgs(target, site.hosts, addresses.addresses,
                             rules=lambda host, every: cloud_rules(inbound_services(site, host, every))),
            child,
        )
        every_address = pulumi.Output.all(**addresses.addresses)
        images = ImageSettings(site.images, site.image_format)

        hook = drain_hook(site, pulumi.get_stack())
        # The primary's mail outlives its VM: the volume is made once, by role, and only attached
        # to whichever VM is the primary now.
        mail = DataVolume(data_volume_resource(name), DataVolumeArgs(target, site.mail_volume.size_gb), child)
        self.hosts, self.images = {}, {}
        previous: MxHost | None = None
        # The primary's VM first, then the backups, best first: the reverse of the order they
        # are taken down in (a backup drains to the primary, so the primary goes last).
        for host in reversed(site.replacement_order):
            secrets = args.secrets[host.name]
            # The tree holds the queue key: it is a secret Output from here on, in state and in
            # the image resource's inputs.
            key = pulumi.Output.secret(secrets.queue_key.get_secret_value())
            tree = pulumi.Output.all(every_address, key).apply(_renderer(site, host, secrets))
            image = HostImage(
                image_resource(name, host.name),
                HostImageArgs(target=target, host=host, tree=tree, secrets=secrets, settings=images),
                child,
            )
            self.images[host.name] = image
            previous = self.hosts[host.name] = MxHost(
                host_resource(name, host.name),
                MxHostArgs(
                    target=target,
                    host=host,
                    image=image.image_id,
                    addresses=addresses.addresses[host.name],
                    drain_hook=hook,
                    after=previous.vm if previous else None,
                    attach=addresses.attach.get(host.name),
                    firewall_id=firewall.group_ids.get(host.name),
                    data_disk=mail.disk_id if host.is_primary else None,
                ),
                pulumi.ResourceOptions(parent=self, depends_on=[image], providers=providers),
            )
            if host.is_primary:
                mail.attach(previous.instance_id)

        ipv4 = {h: mx.ipv4 for h, mx in self.hosts.items()}
        ipv6 = {h: mx.ipv6 for h, mx in self.hosts.items()}
        dns = dns_args(site, ipv4, ipv6, args.dkim, policy_server=self.hosts[site.primary.name].vm)
        SiteDns(f"{name}-dns", SiteDnsArgs(target, dns), child)
        self.mx_table = [
            {"domain": domain, "preference": preference, "target": mx} for domain, preference, mx in site.mx_records()
        ]
        self.host_outputs = {
            h: {
                "ipv4": mx.ipv4,
                "ipv6": mx.ipv6,
                "imageId": self.images[h].image_id,
                "imageIdentity": self.images[h].identity,
                "queueKeyVersion": args.secrets[h].queue_key_version,
            }
            for h, mx in self.hosts.items()
        }
        self.register_outputs({"mx": self.mx_table, "hosts": self.host_outputs})


def _renderer(site: Site, host: Host, secrets: HostSecrets) -> Callable[[list[Any]], HostTree]:
    return lambda values: render_host(site, host, values[0], secrets)

