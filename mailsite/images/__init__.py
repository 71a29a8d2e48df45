"""The image builder: one baked OpenBSD image per host, content-addressed, through Packer."""
