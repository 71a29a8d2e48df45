"""MailSite: the whole site. Addresses first (the images need them), then each host's image and
VM, then DNS that points at them; the firewall is made from the same rule set as pf."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pulumi
import pulumi_libvirt as libvirt

from mailsite.model import HostSecrets, Site
from mailsite.render import render_host
from mailsite.replacement import host_resource, image_resource

from .host_image import HostImage, HostImageArgs, ImageSettings
from .mx_host import MxHost, MxHostArgs, drain_hook
from .site_addresses import SiteAddresses, SiteAddressesArgs
from .site_dns import SiteDns, SiteDnsArgs
from .site_firewall import SiteFirewall, SiteFirewallArgs


@dataclass
class MailSiteArgs:
    site: Site
    secrets: Mapping[str, HostSecrets]  # by host name; read from the backend by the program
    images: ImageSettings


class MailSite(pulumi.ComponentResource):
    hosts: dict[str, MxHost]
    images: dict[str, HostImage]

    def __init__(self, name: str, args: MailSiteArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:MailSite", name, None, opts)
        site = args.site
        # The stack's own libvirt URI (qemu+ssh://... for a remote host), not the ambient default.
        providers = {"libvirt": libvirt.Provider(f"{name}-libvirt", uri=site.libvirt.uri, opts=pulumi.ResourceOptions(parent=self))} \
            if site.target == "libvirt" else {}
        child = pulumi.ResourceOptions(parent=self, providers=providers)
        addresses = SiteAddresses(f"{name}-addresses", SiteAddressesArgs(site), child)
        firewall = SiteFirewall(f"{name}-firewall", SiteFirewallArgs(site, addresses.addresses), child)
        every_address = pulumi.Output.all(**addresses.addresses)

        hook = drain_hook(site, pulumi.get_stack())
        self.hosts, self.images = {}, {}
        previous: MxHost | None = None
        # The primary's VM first, then the backups, best first: the reverse of the order they
        # are taken down in (a backup drains to the primary, so the primary goes last).
        for host in reversed(site.replacement_order):
            secrets = args.secrets[host.name]
            # The tree holds the queue key: it is a secret Output from here on, in state and in
            # the image resource's inputs.
            key = pulumi.Output.secret(secrets.queue_key.get_secret_value())
            tree = pulumi.Output.all(every_address, key).apply(
                lambda values, h=host, s=secrets: render_host(site, h, values[0], s)
            )
            image = HostImage(
                image_resource(name, host.name),
                HostImageArgs(site=site, host=host, tree=tree, secrets=secrets, settings=args.images),
                child,
            )
            self.images[host.name] = image
            previous = self.hosts[host.name] = MxHost(
                host_resource(name, host.name),
                MxHostArgs(
                    site=site,
                    host=host,
                    image=image.image_id,
                    addresses=addresses.addresses[host.name],
                    drain_hook=hook,
                    after=previous.vm if previous else None,
                    reserved_ip_id=addresses.reserved_ip_ids.get(host.name),
                    firewall_group_id=firewall.group_ids.get(host.name),
                    network_id=addresses.network_id,
                ),
                pulumi.ResourceOptions(parent=self, depends_on=[image], providers=providers),
            )

        SiteDns(
            f"{name}-dns",
            SiteDnsArgs(
                site,
                ipv4={h: mx.ipv4 for h, mx in self.hosts.items()},
                ipv6={h: mx.ipv6 for h, mx in self.hosts.items()},
            ),
            child,
        )
        self.mx_table = [
            {"domain": domain, "preference": preference, "target": target} for domain, preference, target in site.mx_records()
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
