#!/bin/sh
# Runs on the freshly installed OpenBSD during the bake, as root over ssh.
set -eu

# The installer's way with a site set: unpack over / keeping modes, then run /install.site.
tar -xzphf /tmp/site.tgz -C /
/install.site
rm -f /tmp/site.tgz /install.site

# The key files arrive as a 0600 tar in root's home (packer's file transfer): unpacked with their
# owners and 0600 modes, then the archive goes, so no copy of a key stays in the image.
umask 077
tar -xpf /root/mailsite-keys.tar -C /
rm -f /root/mailsite-keys.tar

# The bake's one-time root password is locked: root logs in with the admins' keys only.
usermod -p '*' root

# The real parsers on the real system: a host that would not start its daemons is no image.
pfctl -nf /etc/pf.conf
smtpd -n
bgpd -n
echo "mailsite: $(cat /etc/myname) checked by pfctl -nf, smtpd -n, bgpd -n"
