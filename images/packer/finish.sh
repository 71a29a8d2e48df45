#!/bin/sh
# Runs on the freshly installed OpenBSD during the bake, as root over ssh.
set -eu

# The key files arrive as a 0600 tar in root's home (packer's file transfer). Whatever fails below,
# the archive goes with this script: a failed bake leaves no copy of a key in the VM.
keys=/root/mailsite-keys.tar
trap 'rm -f "$keys"' EXIT
trap 'exit 1' HUP INT TERM

# Packages first, while the installer's network settings stand: the site set brings the host's
# own resolv.conf, whose resolvers the bake's network may not reach. And a package's users
# (_dovecot) must exist before the archives give them their files. /etc/mailsite/packages names
# the mirror, which becomes the host's /etc/installurl, and the exact versions (images.packages).
tar -xzphf /tmp/site.tgz -C / ./etc/mailsite/packages
packages=
while read -r word value; do
	case $word in
	mirror) echo "$value" >/etc/installurl ;;
	package) packages="$packages $value" ;;
	esac
done </etc/mailsite/packages
if [ -n "$packages" ]; then
	# Its own complaints go to the bake's log; the line that fails the bake is the one below.
	pkg_add -I $packages || true
	for package in $packages; do
		stem=${package%%-[0-9]*}
		if ! pkg_info -e "$package" >/dev/null 2>&1; then
			echo "mailsite: pkg_add could not install $package from $(cat /etc/installurl); set" \
				"images.packages.$stem to a version the mirror lists (pkg_info -Q $stem)" >&2
			exit 1
		fi
	done
fi

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
checked="pfctl -nf, smtpd -n, bgpd -n"
if [ -f /etc/dovecot/dovecot.conf ]; then
	# The installed Dovecot's own reading of every setting: a 2.4 package would refuse a 2.3 file.
	doveconf -n >/dev/null
	checked="$checked, doveconf -n"
fi
if [ -d /etc/rspamd/local.d ]; then
	# rspamd's own reading of the package's rspamd.conf with the site's local.d and override.d,
	# strict: a module's schema error fails it as a syntax error does. Without DNS here it also
	# names rspamd's public fuzzy servers it could not resolve: those lines alone fail nothing.
	if ! report=$(rspamadm configtest --strict 2>&1); then
		problems=
		while IFS= read -r line; do
			case $line in
			"address resolution for "*" failed"* | "cannot read servers definition" | "syntax BAD" | *" errors found") ;;
			*) problems="$problems$line; " ;;
			esac
		done <<EOF
$report
EOF
		if [ -n "$problems" ]; then
			echo "mailsite: rspamadm configtest refused the site's rspamd files: $problems" >&2
			exit 1
		fi
	fi
	checked="$checked, rspamadm configtest"
fi
if [ -f /etc/httpd.conf ]; then
	# httpd answers http-01 on every MX (and the MTA-STS policy on the primary, with the
	# self-signed pairs install.site made until acme-client's): its own reading, keys loaded.
	httpd -n
	checked="$checked, httpd -n"
fi
if [ -f /etc/acme-client.conf ]; then
	# acme-client's own reading of the whole file (it takes a domain: this MX's name, which has a block).
	acme-client -n "$(cat /etc/myname)" >/dev/null
	checked="$checked, acme-client -n"
fi
echo "mailsite: $(cat /etc/myname) checked by $checked"
