#!/bin/sh
# Runs on the freshly installed OpenBSD during the bake, as root over ssh.
set -eu

# The installer's way with a site set: unpack over / keeping modes, then run /install.site.
tar -xzphf /tmp/site.tgz -C /
/install.site
rm -f /tmp/site.tgz /install.site

# Key files arrive in a sensitive variable, one "mode path base64" per line, and are written
# with their final mode from the first byte.
umask 077
printf '%s\n' "$SECRET_FILES" | while read -r mode path data; do
	[ -n "$path" ] || continue
	printf '%s' "$data" | b64decode -r > "$path"
	chown root:wheel "$path"
	chmod "$mode" "$path"
done
unset SECRET_FILES

# The bake's one-time root password is locked: root logs in with the admins' keys only.
usermod -p '*' root

# The real parsers on the real system: a host that would not start its daemons is no image.
pfctl -nf /etc/pf.conf
smtpd -n
bgpd -n
echo "mailsite: $(cat /etc/myname) checked by pfctl -nf, smtpd -n, bgpd -n"
