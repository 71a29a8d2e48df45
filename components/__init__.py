"""Pulumi ComponentResources: each translates part of the site model into provider resources.

MailSite (mail_site.py) reads the Site and picks the target (targets.py); the shared components
(SiteAddresses, SiteFirewall, HostImage, MxHost, SiteDns) take narrow Args and have the target
(vultr/, libvirt/, behind target.py's interface) make what differs under them.
"""
