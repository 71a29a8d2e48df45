"""mailsite: a three-host OpenBSD mail site as code. See README.md."""
