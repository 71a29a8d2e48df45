"""The lab: the whole mail site on the real daemons, in network namespaces on one Linux machine.

site.py decides the lab's nodes and addresses and renders each host through the same renderers
as the images (only LINUX differs); net.py builds the wire; procs.py starts and stops processes
and remembers them; ca.py is each up's certificate authority; lab.py puts a site up and down, every
node running from the daemon root (mailsite.daemonroot), starting on each MX the daemons
mailsite.daemons gives its host, and state.py is its record of what it made; mail.py and bgp.py
are what a scenario does to it; scenarios.py is the demonstration the tests and `make lab` share,
each scenario reporting a mailsite.results.Result.
"""
