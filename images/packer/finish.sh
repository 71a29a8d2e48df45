#!/bin/sh
# Runs on the freshly installed OpenBSD during the bake, as root over ssh.
set -eu

# The key files arrive as a 0600 tar in root's home (packer's file transfer). Whatever fails below,
# the archive goes with this script: a failed bake leaves no copy of a key in the VM.
keys=/root/mailsite-keys.tar
trap 'rm -f "$keys"' EXIT
trap 'exit 1' HUP INT TERM

# The installer's way with a site set: unpack over / keeping modes, then run /install.site.
tar -xzphf /tmp/site.tgz -C /
/install.site
rm -f /tmp/site.tgz /install.site

# The keys, with their owners and 0600 modes; then the archive goes, so no copy stays in the image.
umask 077
tar -xpf "$keys" -C /
rm -f "$keys"

# The bake's one-time root password is locked: root logs in with the admins' keys only.
usermod -p '*' root

# The real parsers on the real system: a host that would not start its daemons is no image.
pfctl -nf /etc/pf.conf
smtpd -n
bgpd -n
echo "mailsite: $(cat /etc/myname) checked by pfctl -nf, smtpd -n, bgpd -n"
