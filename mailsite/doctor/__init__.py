"""`mailsite doctor`: the live site compared with its stack, from outside (DNS, SMTP, TLS,
blocklists) and inside (each host over its HostControl), one Result per check.

core runs checks concurrently, each bounded; view holds what every check reads; one module per
area (dns, smtp, blocklists, inside) turns a SiteView into Checks.
"""
