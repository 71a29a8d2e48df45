"""The site's zones on Vultr DNS: every record mailsite.dns computes, in Vultr's API's shapes."""

from __future__ import annotations

from typing import cast

import ediri_vultr as vultr
import pulumi

from mailsite.dns import DnsRecord, relative_name, zone_of

from ..target import DnsArgs


def vultr_data(record: DnsRecord) -> tuple[str, int | None]:
    """A record's data and priority as Vultr's API takes them: TXT text in one pair of quotes
    (Vultr splits long text itself and takes no quote inside), SRV's priority apart from
    "weight port target" (no final dot), CAA as 'flags tag "value"'."""
    if record.type == "TXT":
        return f'"{record.value}"', None
    if record.type == "SRV":
        priority, rest = record.value.split(" ", 1)
        return rest, int(priority)
    return record.value, record.priority


def vultr_dns(name: str, args: DnsArgs, opts: pulumi.ResourceOptions) -> None:
    domains = {d: vultr.DnsDomain(f"{name}-{d}", domain=d, opts=opts) for d in args.domains}

    def record(resource: str, zone: str, owner: str, kind: str, data: pulumi.Input[str], priority: int | None = None,
               after: list[pulumi.Resource] | None = None) -> None:
        vultr.DnsRecord(resource, domain=domains[zone].domain, type=kind, name=relative_name(owner, zone), data=data,
                        priority=priority, ttl=args.ttl, opts=pulumi.ResourceOptions(parent=domains[zone], depends_on=after))

    seen: set[str] = set()
    for entry in args.named:
        zone = zone_of(entry.name, args.domains)
        assert zone is not None, "mailsite.dns makes records inside the site domains only"
        # The names of the records an earlier version made (MX) stay as they were: a renamed
        # resource is deleted and made again, a moment without the record.
        resource = (f"{name}-{entry.name}-mx-{entry.value}" if entry.type == "MX"
                    else f"{name}-{entry.name}-{entry.type.lower()}")
        assert resource not in seen, f"two {entry.type} records at {entry.name}"
        seen.add(resource)
        data, priority = vultr_data(entry)
        # A new MTA-STS id only once the primary made from the new image serves the new policy: a
        # sender that saw the id early would fetch the old policy, keep it under the new id for
        # max_age, and refuse a renamed or added MX until then.
        after = [args.policy_server] if entry.name.startswith("_mta-sts.") and args.policy_server is not None else None
        record(resource, zone, entry.name, entry.type, data, priority, after)
    for owner, host in args.address_names:
        zone = zone_of(owner, args.domains)
        assert zone is not None, "the model keeps MX names inside a site domain on Vultr DNS"
        # A host with IPv6 has an address for it: the instance's own.
        families = [("A", args.ipv4[host.name])] + ([("AAAA", cast(pulumi.Input[str], args.ipv6[host.name]))] if host.ipv6 is not None else [])
        for record_type, address in families:
            # An MX name's records keep the resource names they always had.
            resource = f"{name}-{host.name}-{record_type.lower()}" if owner == host.mx_name else f"{name}-{owner}-{record_type.lower()}"
            record(resource, zone, owner, record_type, address)
