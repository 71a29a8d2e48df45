"""Dovecot on the primary (issue 15.2): IMAPS only, with the site's certificate; one mailbox per
user for every site domain, under the mail volume, owned by the virtual mail user; LMTP for smtpd
alone; quotas that refuse for a while and lose nothing; the hashes in files only their readers
read; the package the image installs, pinned, and a bake that fails without it."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from mailsite.configtest import check_doveconf, host_configtests
from mailsite.daemons.dovecot import INTERNAL_USER, dovecot
from mailsite.images.identity import PACKER_DIR, image_identity
from mailsite.images.siteset import key_archive, site_set
from mailsite.model import LMTP_SOCKET, MAIL_UID, MAIL_USER, MAILBOXES
from mailsite.render import render_host
from mailsite.templates import RenderedFile, UnsafeValue
from mailsite.trees import write_trees
from tests.sites import addresses, example_settings, fake_secrets, refusal_lines, site_of
from tests.test_images import _chroot_with

GOLDEN = Path(__file__).parent / "golden"
DOVECOT_FILES = ("etc/dovecot/dovecot.conf", "etc/dovecot/users", "etc/dovecot/passwd", "etc/mail/credentials",
                 "etc/mailsite/mail-user")


def _hash(user: str) -> str:
    """A bcrypt-shaped stand-in, no password's hash: 53 characters of bcrypt's alphabet after $2b$12$."""
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    digest = hashlib.sha512(user.encode()).digest()
    return "$2b$12$" + "".join(alphabet[byte % 64] for byte in digest[:53])


def _primary_tree(settings: dict | None = None, hashed: tuple[str, ...] = ("alice",)) -> dict[str, RenderedFile]:
    site = site_of(settings or example_settings())
    secrets = replace(fake_secrets(site)[site.primary.name],
                      password_hashes={user: SecretStr(_hash(user)) for user in hashed}, password_hashes_version="v1")
    return render_host(site, site.primary, addresses(site), secrets)


def _conf(settings: dict | None = None) -> str:
    return _primary_tree(settings)["etc/dovecot/dovecot.conf"].text


def _block(conf: str, header: str) -> str:
    """The body of a `header {` block, nested blocks included, comments dropped."""
    lines = [line.split("#", 1)[0].rstrip() for line in conf.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.strip() == header + " {")
    depth, body = 0, []
    for line in lines[start:]:
        depth += line.count("{") - line.count("}")
        body.append(line.strip())
        if depth == 0:
            return "\n".join(body)
    raise AssertionError(f"{header} is not closed")


def _settings(conf: str) -> dict[str, str]:
    """The top-level `name = value` lines (outside every block)."""
    found, depth = {}, 0
    for line in conf.splitlines():
        line = line.split("#", 1)[0].strip()
        if depth == 0 and "=" in line and not line.endswith("{"):
            name, _, value = line.partition("=")
            found[name.strip()] = value.strip()
        depth += line.count("{") - line.count("}")
    return found


def test_imaps_on_993_and_no_plaintext_imap_listener():
    conf = _conf()
    assert _settings(conf)["protocols"] == "imap lmtp"
    login = _block(conf, "service imap-login")
    assert re.search(r"inet_listener imap \{\nport = 0\n\}", login), login
    assert re.search(r"inet_listener imaps \{\nport = 993\nssl = yes\n\}", login), login


def test_tls_is_required_with_the_primarys_own_certificate_and_key():
    settings = example_settings()
    settings["tls"] = {"certificate": "/etc/ssl/acme/{fqdn}.fullchain.pem", "key": "/etc/ssl/acme/private/{fqdn}.key"}
    top = _settings(_conf(settings))
    assert top["ssl"] == "required" and top["disable_plaintext_auth"] == "yes"
    assert top["ssl_cert"] == "</etc/ssl/acme/mx1.example.org.fullchain.pem"
    assert top["ssl_key"] == "</etc/ssl/acme/private/mx1.example.org.key"


def test_a_user_logs_in_as_alice_or_alice_at_a_site_domain_and_has_one_mailbox():
    conf = _conf()
    top = _settings(conf)
    # %Lu: lower-cased with its domain, which passwd's lines check; the user database (LMTP's
    # lookups too) finds the user by the name without it.
    assert top["auth_username_format"] == "%Lu"
    assert "args = username_format=%Ln /etc/dovecot/users" in _block(conf, "userdb")
    assert top["mail_location"] == "maildir:~/Maildir"
    assert top["recipient_delimiter"] == "+"


def _passwd_file(text: str) -> dict[str, list[str]]:
    """A passwd-file as Dovecot reads it (db-passwd-file.c): fields split at ':', comments skipped."""
    return {fields[0]: fields[1:] for fields in (line.split(":") for line in text.splitlines()) if fields[0] and not fields[0].startswith("#")}


def test_users_file_lists_every_user_with_uid_home_and_quota():
    settings = example_settings()
    settings["recipients"]["users"] = ["alice", {"name": "bob", "quota": "5G"}, {"name": "carol", "quota": "104857600"}]
    tree = _primary_tree(settings)
    users = _passwd_file(tree["etc/dovecot/users"].text)
    assert list(users) == ["alice", "bob", "carol"]
    for name, fields in users.items():
        password, uid, gid, _gecos, home = fields[:5]
        assert password == "" and uid == gid == str(MAIL_UID) and home == f"{MAILBOXES}/{name}", fields
    assert users["alice"][5:] == []
    # The extra field holds a ':' of its own; Dovecot joins the fields after the shell back together.
    assert ":".join(users["bob"][6:]) == "userdb_quota_rule=*:storage=5G"
    # storage= without a unit is kilobytes to Dovecot 2.3: the model's bytes keep their B.
    assert ":".join(users["carol"][6:]) == "userdb_quota_rule=*:storage=104857600B"
    assert not tree["etc/dovecot/users"].secret


def test_quota_plugin_only_when_a_user_has_a_quota_and_a_full_mailbox_is_a_temporary_failure():
    plain = example_settings()
    plain["recipients"]["users"] = ["alice", "bob"]
    assert "quota" not in _settings(_conf(plain)).get("mail_plugins", "")
    settings = example_settings()
    settings["recipients"]["users"] = ["alice", {"name": "bob", "quota": "5G"}]
    conf = _conf(settings)
    top = _settings(conf)
    assert top["mail_plugins"] == "$mail_plugins quota"
    assert top["quota_full_tempfail"] == "yes" and top["lmtp_rcpt_check_quota"] == "yes"
    plugin = _block(conf, "plugin")
    assert "quota = count:User quota" in plugin and "quota_vsizes = yes" in plugin
    assert "mail_plugins = $mail_plugins imap_quota" in _block(conf, "protocol imap")


def test_lmtp_runs_the_sieve_script_the_primary_carries_with_or_without_quotas():
    from mailsite.model import JUNK_MAILBOX, SPAM_HEADER

    for users in (["alice", "bob"], ["alice", {"name": "bob", "quota": "5G"}]):
        settings = example_settings()
        settings["recipients"]["users"] = users
        tree = _primary_tree(settings)
        conf = tree["etc/dovecot/dovecot.conf"].text
        assert "mail_plugins = $mail_plugins sieve" in _block(conf, "protocol lmtp")
        sieve_before = re.search(r"^sieve_before = file:([^;]+);bindir=~/\S+$", _block(conf, "plugin"), re.M)
        assert sieve_before and sieve_before[1].lstrip("/") in tree, conf
        # The folder it files into is the one clients see as \Junk.
        assert f'fileinto "{JUNK_MAILBOX}";' in tree[sieve_before[1].lstrip("/")].text
        assert f"mailbox {JUNK_MAILBOX} {{\nspecial_use = \\Junk\nauto = subscribe\n}}" in _block(conf, "namespace inbox")
        assert f'header :is "{SPAM_HEADER[0]}" "{SPAM_HEADER[1]}"' in tree[sieve_before[1].lstrip("/")].text


def test_only_the_mail_user_reaches_lmtp_at_the_socket_smtpd_delivers_to():
    conf = _conf()
    base_dir, name = LMTP_SOCKET.rsplit("/", 1)
    assert _settings(conf)["base_dir"] == base_dir
    listener = _block(conf, "service lmtp")
    assert f"unix_listener {name} {{\nmode = 0600\nuser = {MAIL_USER}\ngroup = {MAIL_USER}\n}}" in listener
    assert _settings(conf)["first_valid_uid"] == _settings(conf)["last_valid_uid"] == str(MAIL_UID)


def test_passwd_holds_only_users_with_a_hash_0600_secret_and_owned_by_the_auth_user():
    tree = _primary_tree(hashed=("bob", "mallory"))  # mallory is no user of the site
    passwd = tree["etc/dovecot/passwd"]
    assert passwd.mode == 0o600 and passwd.secret and passwd.owner == INTERNAL_USER
    # alice has no password: she cannot log in, and still receives (the users file lists her).
    # Under each login name smtpd's credentials take, each the one user bob (user=).
    bob = ["{BLF-CRYPT}" + _hash("bob"), "", "", "", "", "", "user=bob"]
    assert _passwd_file(passwd.text) == {"bob": bob, "bob@example.org": bob, "bob@example.net": bob}
    assert "alice" in _passwd_file(tree["etc/dovecot/users"].text)
    assert "passdb {\ndriver = passwd-file\nargs = scheme=BLF-CRYPT /etc/dovecot/passwd\n}" in _block(_conf(), "passdb")
    assert "userdb {\ndriver = passwd-file\nargs = username_format=%Ln /etc/dovecot/users\n}" in _block(_conf(), "userdb")
    # Named, not left to 2.3's compiled-in dovecot/dovecot, which the master refuses without.
    assert _settings(_conf())["default_internal_user"] == _settings(_conf())["default_internal_group"] == INTERNAL_USER


def test_credentials_hold_each_login_form_with_the_users_hash():
    tree = _primary_tree(hashed=("alice", "bob"))
    credentials = tree["etc/mail/credentials"]
    assert credentials.mode == 0o600 and credentials.secret and credentials.owner == "root"
    table = [line.split() for line in credentials.text.splitlines() if line and not line.startswith("#")]
    names = [f"{user}{domain}" for user in ("alice", "bob") for domain in ("", "@example.org", "@example.net")]
    assert [key for key, _ in table] == names
    assert all(value == _hash(key.split("@")[0]) for key, value in table)


@pytest.mark.parametrize("hashed", ["$2b$12$abc:0:0", "$2b$12$ab c", "$2b$12$ab\tc"])
def test_a_hash_that_would_write_a_field_of_its_own_is_refused_unseen(hashed):
    site = site_of(example_settings())
    secrets = replace(fake_secrets(site)[site.primary.name], password_hashes={"alice": SecretStr(hashed)})
    with pytest.raises(UnsafeValue) as refused:
        render_host(site, site.primary, addresses(site), secrets)
    assert "alice" in str(refused.value) and hashed not in str(refused.value)


def test_backups_get_no_dovecot_files_and_open_no_imaps(example_site):
    secrets = fake_secrets(example_site)
    for host in example_site.backups:
        tree = render_host(example_site, host, addresses(example_site), secrets[host.name])
        assert not [path for path in tree if path in DOVECOT_FILES or path.startswith("etc/dovecot/")], host.name
        # filter-dkimsign alone, which signs the backup's own mail: no Dovecot, no rspamd.
        assert _packages(tree)["package"] == ["opensmtpd-filter-dkimsign-0.6"], host.name
        assert "imaps" not in tree["etc/pf.conf"].text


def _packages(tree: dict[str, RenderedFile]) -> dict[str, list[str]]:
    """etc/mailsite/packages as finish.sh reads it: the values of its mirror and package lines."""
    lines = [line.split() for line in tree["etc/mailsite/packages"].text.splitlines() if line and not line.startswith("#")]
    return {word: [value for first, value in lines if first == word] for word in ("mirror", "package")}


def test_the_primary_installs_the_pinned_dovecot_from_the_mirror():
    settings = example_settings()
    settings.setdefault("images", {})["packages"] = {"mirror": "https://mirror.example.net/pub/OpenBSD",
                                                      "dovecot": "dovecot-2.3.21.1p3v0"}
    tree = _primary_tree(settings)
    assert _packages(tree)["mirror"] == ["https://mirror.example.net/pub/OpenBSD"]
    assert "dovecot-2.3.21.1p3v0" in _packages(tree)["package"]
    assert re.search(r'^pkg_scripts="(.* )?dovecot"$', tree["etc/rc.conf.local"].text, re.M)
    assert dovecot.package == "dovecot"


@pytest.mark.parametrize("package, words", [
    ("dovecot-2.4.1", "Dovecot 2.4, while the site's dovecot.conf is written for Dovecot 2.3"),
    ("dovecot", "not a dovecot package's name"),
    ("dovecot-2.3.21.1p1v0 rspamd", "not a dovecot package's name"),
    ("postfix-3.9.1", "not a dovecot package's name"),
])
def test_a_dovecot_package_of_another_major_or_no_version_is_one_line(package, words):
    settings = example_settings()
    settings.setdefault("images", {})["packages"] = {"dovecot": package}
    lines = refusal_lines(settings)
    assert len(lines) == 1 and lines[0].startswith(f"mailsite:images.packages.dovecot = {package}: "), lines
    assert words in lines[0]


def test_goldens_hold_no_hash():
    for path in GOLDEN.rglob("*"):
        if path.is_file():
            assert not re.search(r"\$2[aby]\$", path.read_text()), path


# The bake's finish.sh on a stand-in for the freshly installed primary (as tests/test_images.py
# runs it): pkg_add installs a package by creating its user, as @newuser does; pkg_info -e finds it.
_STUBS = {
    "pkg_add": 'echo "pkg_add $*" >> /calls.log\nfor p in "$@"; do case $p in -*) ;; *)\n'
               '  [ -e "/missing-$p" ] && { echo "Can\'t find $p"; continue; }\n'
               '  mkdir -p /var/db/pkg/$p && echo "_dovecot:x:518:518::/var/empty:/sbin/nologin" >> /etc/passwd\n'
               '  echo "_dovecot:x:518:" >> /etc/group;; esac; done',
    "pkg_info": '[ "$1" = -e ] && [ -d "/var/db/pkg/$2" ]',
    "usermod": 'echo "usermod $*" >> /calls.log',
    "pfctl": 'echo "pfctl $*" >> /calls.log',
    "smtpd": 'echo "smtpd $*" >> /calls.log',
    "bgpd": 'echo "bgpd $*" >> /calls.log',
    "doveconf": 'echo "doveconf $*" >> /calls.log',
    "httpd": 'echo "httpd $*" >> /calls.log',
    "acme-client": 'echo "acme-client $*" >> /calls.log',
    # What /rspamadm-says holds is its complaint (and it fails); else it passes.
    "rspamadm": 'echo "rspamadm $*" >> /calls.log\n[ -e /rspamadm-says ] && { cat /rspamadm-says; exit 1; }\nexit 0',
}


def _finish_primary(tmp_path: Path, tree: dict[str, RenderedFile], missing: str | None = None,
                    rspamadm_says: str | None = None) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path / "guest"
    _chroot_with(root, {"/bin/sh": shutil.which("mksh"), "/bin/tar": shutil.which("tar"), "/bin/gzip": shutil.which("gzip"),
                        "/bin/rm": shutil.which("rm"), "/bin/cat": shutil.which("cat"), "/bin/mkdir": shutil.which("mkdir")})
    for name, body in _STUBS.items():
        (root / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
        (root / "bin" / name).chmod(0o755)
    for directory in ("etc", "tmp", "root", "var/db/pkg", "dev"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/group").write_text("wheel:x:0:root\n")
    (root / "tmp/site.tgz").write_bytes(site_set(tree, install_site=b"#!/bin/sh\nexit 0\n"))
    (root / "root/mailsite-keys.tar").write_bytes(key_archive(tree))
    if missing:
        (root / f"missing-{missing}").touch()
    if rspamadm_says is not None:
        (root / "rspamadm-says").write_text(rspamadm_says)
    shutil.copy(PACKER_DIR / "finish.sh", root / "finish.sh")
    result = subprocess.run([shutil.which("chroot"), str(root), "/bin/sh", "/finish.sh"], capture_output=True, text=True,
                            env={"PATH": "/bin", "HOME": "/root"}, timeout=60)
    return root, result


def test_the_bake_installs_the_package_first_then_gives_passwd_to_dovecots_user_and_checks_with_doveconf(tmp_path):
    tree = _primary_tree()
    root, result = _finish_primary(tmp_path, tree)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (root / "calls.log").read_text().splitlines()
    assert calls[0] == "pkg_add -I " + " ".join(_packages(tree)["package"]) and "dovecot-2.3.21.1p1v0" in calls[0]
    assert "doveconf -n" in calls
    assert "checked by pfctl -nf, smtpd -n, bgpd -n, doveconf -n" in result.stdout
    # The mirror pkg_add fetched from stays the host's, for syspatch and later pkg_add runs.
    assert (root / "etc/installurl").read_text() == "https://cdn.openbsd.org/pub/OpenBSD\n"
    # The archive names the owner and tar gives the file to that user (who exists by then).
    passwd = (root / "etc/dovecot/passwd").stat()
    assert (passwd.st_uid, passwd.st_gid, passwd.st_mode & 0o777) == (518, 518, 0o600)
    assert (root / "etc/mail/credentials").stat().st_uid == 0


def test_a_package_the_mirror_lacks_fails_the_bake_in_one_line_naming_the_setting(tmp_path):
    root, result = _finish_primary(tmp_path, _primary_tree(), missing="dovecot-2.3.21.1p1v0")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "mailsite: pkg_add could not install dovecot-2.3.21.1p1v0 from https://cdn.openbsd.org/pub/OpenBSD; set "
        "images.packages.dovecot to a version the mirror lists (pkg_info -Q dovecot)"]
    assert not (root / "root/mailsite-keys.tar").exists() and not (root / "etc/dovecot").exists()


def test_the_key_archive_names_each_files_owner_and_an_owner_is_another_image():
    tree = _primary_tree()
    with tarfile.open(fileobj=io.BytesIO(key_archive(tree))) as archive:
        owners = {m.name.removeprefix("./"): (m.uname, m.gname, m.mode) for m in archive.getmembers()}
    assert owners["etc/dovecot/passwd"] == (INTERNAL_USER, INTERNAL_USER, 0o600)
    assert owners["etc/mail/credentials"] == ("root", "wheel", 0o600)

    def identity(files: dict[str, RenderedFile]) -> str:
        return image_identity(files, key_versions={}, template="", packer_version="", openbsd_version="7.8", media_sha256="",
                              image_format="raw", nic_model="vmxnet3", disk_size="8G", disklabel_template="")

    config = {"etc/x.conf": RenderedFile("x\n")}
    assert identity(config) != identity({"etc/x.conf": RenderedFile("x\n", owner="_dovecot")})


def test_install_site_creates_the_mail_user_with_its_uid_and_home(tmp_path):
    tree = _primary_tree()
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "site.tgz").write_bytes(site_set(tree))
    subprocess.run(["tar", "-xzpf", str(tmp_path / "site.tgz"), "-C", str(root)], check=True)
    (root / "etc/ssl/private").mkdir(parents=True, mode=0o700)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("useradd", "chown", "crontab", "openssl"):
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$LOG"\n'
                                  + ('while [ $# -gt 0 ]; do case $1 in -keyout|-out) echo fake > "$2";; esac; shift; done\n'
                                     if name == "openssl" else ""))
        (stubs / name).chmod(0o755)
    script = ("mount --make-rprivate / && for d in etc root usr/local/sbin; do mkdir -p /$d; mount --bind \"$FAKE/$d\" /$d; done"
              " && sh \"$FAKE/install.site\"")
    log = tmp_path / "calls.log"
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                            env={"FAKE": str(root), "LOG": str(log), "PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert result.returncode == 0, result.stderr
    assert f"useradd -u {MAIL_UID} -g =uid -c mailsite mailboxes -d {MAILBOXES} -s /sbin/nologin {MAIL_USER}" in log.read_text().splitlines()


_AS_ROOT = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                              reason="needs root for network namespaces (CI runs it as root)")


def _written_primary(tmp_path: Path, settings: dict | None = None) -> Path:
    site = site_of(settings or example_settings())
    write_trees(tmp_path, {site.primary.name: _primary_tree(settings, hashed=("alice", "bob"))})
    return tmp_path / site.primary.name


@_AS_ROOT
def test_configtest_runs_doveconf_on_the_primary_and_the_example_passes(tmp_path):
    settings = example_settings()
    settings["recipients"]["users"] = ["alice", {"name": "bob", "quota": "5G"}]  # the quota plugin too
    tree = _written_primary(tmp_path, settings)
    assert ("doveconf", "etc/dovecot/dovecot.conf") in [(test.parser, test.path) for test in host_configtests(tree)]
    assert check_doveconf("mx1", tree, "etc/dovecot/dovecot.conf") == []


@_AS_ROOT
@pytest.mark.parametrize("line, words", [
    # What the image's Dovecot would refuse: 2.4's grammar, and a setting misspelt.
    ("dovecot_config_version = 2.4.0", "dovecot_config_version"),
    ("ssl_requried = yes", "ssl_requried"),
])
def test_configtest_refuses_a_dovecot_conf_the_image_would_refuse(tmp_path, line, words):
    tree = _written_primary(tmp_path)
    config = tree / "etc/dovecot/dovecot.conf"
    config.write_text(config.read_text() + line + "\n")
    problems = [str(problem) for problem in check_doveconf("mx1", tree, "etc/dovecot/dovecot.conf")]
    assert len(problems) == 1 and problems[0].startswith("mx1: dovecot.conf") and words in problems[0], problems


# The rendered dovecot.conf, users and passwd run by Dovecot 2.3 (the dovecot daemon root: Debian
# 12 backports' 2.3.21.1, OpenBSD 7.8's version) in mount and network namespaces of its own, the
# root under an overlay so it stays unaltered, with OpenBSD's package users and the mail user, a
# throwaway certificate at the rendered paths, and the log on stderr instead of syslog.
DOVECOT_BOOT = r"""
set -e
mount -t overlay overlay -o "lowerdir=$DAEMON_ROOT,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/merged"
M=$WORK/merged
mount -t proc proc "$M/proc"
ip link set lo up
cat >> "$M/etc/passwd" <<ACCOUNTS
_dovecot:x:518:518::/nonexistent:/usr/sbin/nologin
_dovenull:x:666:666::/nonexistent:/usr/sbin/nologin
$MAIL_USER:x:$MAIL_UID:$MAIL_UID::$MAILBOXES:/usr/sbin/nologin
ACCOUNTS
printf '_dovecot:x:518:\n_dovenull:x:666:\n%s:x:%s:\n' "$MAIL_USER" "$MAIL_UID" >> "$M/etc/group"
mkdir -p "$M/etc/dovecot" "$M$(dirname "$CERT")" "$M$(dirname "$KEY")" "$M$STATE_MOUNT"
install -d -o "$MAIL_UID" -g "$MAIL_UID" -m 0700 "$M$MAILBOXES"
cp "$TREE"/etc/dovecot/* "$M/etc/dovecot/"
chown 518:518 "$M/etc/dovecot/passwd"
chmod 0600 "$M/etc/dovecot/passwd"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=mx1.example.org -keyout "$M$KEY" -out "$M$CERT" 2>/dev/null
chroot "$M" /usr/sbin/dovecot -F -c /etc/dovecot/dovecot.conf -o log_path=/dev/stderr </dev/null >"$WORK/dovecot.log" 2>&1 &
dovecot=$!
trap 'kill $dovecot; wait $dovecot' EXIT
"""
IMAPS_BOOT = DOVECOT_BOOT + r"""
"$PYTHON" - <<PY
import imaplib, os, smtplib, socket, ssl, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", 993)).close()
        break
    except OSError:
        time.sleep(0.1)
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE


class FromAddress(imaplib.IMAP4_SSL):
    # Each login from an address of its own: Dovecot's auth penalty grows per failing client
    # address (2, 6, 10 s...), and the logins here are independent of each other.
    source = "127.0.0.1"

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


for number, name in enumerate("$LOGINS".split(), start=2):
    FromAddress.source = f"127.0.0.{number}"
    imap = FromAddress("127.0.0.1", 993, ssl_context=context)
    try:
        imap.login(name, "$PASSWORD")
        print("LOGIN", name, "OK")
    except imaplib.IMAP4.error:
        print("LOGIN", name, "NO")
    imap.logout()
for port in (143, 993):
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        print("PORT", port, "open")
    except ConnectionRefusedError:
        print("PORT", port, "refused")
for uid in ($MAIL_UID, 65534, 518):
    pid = os.fork()
    if pid == 0:
        # In the root as on the host: pytest's directories above it are root's alone.
        os.chroot("$M"); os.setgroups([]); os.setgid(uid); os.setuid(uid)
        try:
            smtplib.LMTP("$LMTP_SOCKET").quit()
            os._exit(0)
        except PermissionError:
            os._exit(13)
    print("LMTP-AS", uid, os.waitpid(pid, 0)[1] >> 8)
lmtp = smtplib.LMTP("$M$LMTP_SOCKET")
lmtp.ehlo("mx1")
lmtp.mail("someone@example.com")
for rcpt in "$RECIPIENTS".split():
    print("RCPT", rcpt, lmtp.rcpt(rcpt)[0])
lmtp.quit()
PY
"""


def _tree_with_password(tmp_path: Path, password: str) -> Path:
    """The example primary's rendered tree, written, alice with a real bcrypt hash of `password`."""
    import bcrypt

    site = site_of(example_settings())
    secrets = replace(fake_secrets(site)[site.primary.name], password_hashes_version="v1",
                      password_hashes={"alice": SecretStr(bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode())})
    write_trees(tmp_path / "tree", {site.primary.name: render_host(site, site.primary, addresses(site), secrets)})
    return tmp_path / "tree" / site.primary.name


def _run_dovecot(tmp_path: Path, tree_dir: Path, script: str, **env: str) -> tuple[subprocess.CompletedProcess, str, Path]:
    """`script` (DOVECOT_BOOT and a client) in new mount and network namespaces: its result,
    Dovecot's log, and the merged root (the mail volume's directory is below it)."""
    from mailsite.daemonroot import daemon_root
    from mailsite.model import STATE_MOUNT

    site = site_of(example_settings())
    work = tmp_path / "run"
    for directory in ("upper", "work", "merged"):
        (work / directory).mkdir(parents=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DAEMON_ROOT": str(daemon_root("dovecot").path), "WORK": str(work),
           "PYTHON": shutil.which("python3") or "python3", "TREE": str(tree_dir), "MAIL_USER": MAIL_USER,
           "MAIL_UID": str(MAIL_UID), "MAILBOXES": MAILBOXES, "STATE_MOUNT": STATE_MOUNT, "LMTP_SOCKET": LMTP_SOCKET,
           "CERT": site.tls.certificate_for(site.primary), "KEY": site.tls.key_for(site.primary), **env}
    result = subprocess.run(["unshare", "-m", "-n", "--fork", "bash", "-c", script], env=env,
                            capture_output=True, text=True, timeout=120)
    log = (work / "dovecot.log").read_text() if (work / "dovecot.log").exists() else ""
    assert result.returncode == 0, result.stderr + log
    return result, log, work / "upper"


@_AS_ROOT
def test_imap_takes_the_login_names_smtpd_takes_and_no_other_domain(tmp_path):
    """A user logs in as alice or alice@<a site domain>, as on submission (smtpd's credentials
    table); alice@<another domain> is refused, however right the password. LMTP still finds
    alice at every site domain, with a +tag, in any case, and answers the mail user alone; 143
    is closed."""
    password = "correct horse battery staple"
    tree_dir = _tree_with_password(tmp_path, password)
    credentials = (tree_dir / "etc/mail/credentials").read_text()
    smtpd_logins = [line.split()[0] for line in credentials.splitlines() if line and not line.startswith("#")]
    logins = smtpd_logins + ["ALICE@Example.ORG", "alice@evil.example", "alice@example.org.evil.example", "bob"]
    recipients = ["alice@example.org", "alice+lists@example.net", "ALICE@EXAMPLE.ORG", "nobody@example.org"]
    result, log, _ = _run_dovecot(tmp_path, tree_dir, IMAPS_BOOT, PASSWORD=password, LOGINS=" ".join(logins),
                                  RECIPIENTS=" ".join(recipients))
    answers = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())
    assert smtpd_logins == ["alice", "alice@example.org", "alice@example.net"]
    assert {name: answers[f"LOGIN {name}"] for name in logins} == {
        "alice": "OK", "alice@example.org": "OK", "alice@example.net": "OK", "ALICE@Example.ORG": "OK",
        "alice@evil.example": "NO", "alice@example.org.evil.example": "NO", "bob": "NO"}, log
    # No plaintext IMAP; the LMTP socket for the mail user (smtpd's mail.lmtp) alone, not nobody, not Dovecot's own user.
    assert (answers["PORT 143"], answers["PORT 993"]) == ("refused", "open")
    assert [answers[f"LMTP-AS {uid}"] for uid in (MAIL_UID, 65534, 518)] == ["0", "13", "13"]
    assert {rcpt: answers[f"RCPT {rcpt}"] for rcpt in recipients} == {
        "alice@example.org": "250", "alice+lists@example.net": "250", "ALICE@EXAMPLE.ORG": "250",
        "nobody@example.org": "550"}, log
    # Every form is the one user alice (passwd's user=): one mailbox, one count of her connections.
    assert log.count("Login: user=<alice>") == 4 and "Login: user=<alice@" not in log, log
    assert password not in log


# Deliveries over LMTP as smtpd makes them, each in a session of its own, then what alice's mail
# client sees over IMAPS: the special-use folders, and which subjects each folder holds.
JUNK_BOOT = DOVECOT_BOOT + r"""
"$PYTHON" - <<'PY'
import imaplib, os, smtplib, socket, ssl, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", 993)).close()
        break
    except OSError:
        time.sleep(0.1)
merged = os.environ["WORK"] + "/merged"
for name in sorted(os.listdir(os.environ["MESSAGES"])):
    with open(os.path.join(os.environ["MESSAGES"], name), "rb") as message:
        lmtp = smtplib.LMTP(merged + os.environ["LMTP_SOCKET"])
        lmtp.sendmail("sender@outside.test", ["alice@example.org"], message.read())
        lmtp.quit()
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
imap = imaplib.IMAP4_SSL("127.0.0.1", 993, ssl_context=context)
imap.login("alice", os.environ["PASSWORD"])
for line in imap.list('""', "*")[1]:
    print("LIST", line.decode())
for folder in ("INBOX", os.environ["JUNK"]):
    imap.select(folder, readonly=True)
    numbers = imap.search(None, "ALL")[1][0].split()
    for number in numbers:
        subject = imap.fetch(number, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][1].decode().strip()
        print("IN", folder, subject.removeprefix("Subject: "))
imap.logout()
PY
"""


def _message(subject: str, headers: str = "", body: str = "Hello.") -> bytes:
    return (f"{headers}From: sender@outside.test\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@outside.test>\r\n\r\n{body}\r\n").encode()


@_AS_ROOT
def test_mail_rspamd_marked_lands_in_junk_and_the_rest_in_the_inbox(tmp_path):
    """Dovecot's LMTP, with the site's Sieve script (Pigeonhole, as OpenBSD's dovecot-pigeonhole),
    files a message carrying filter-rspamd's mark (X-Spam: yes; any case, as rspamd's own
    milter_headers writes it too) into Junk, and every other message into the INBOX, a message
    merely mentioning the mark in its body included. The user's client sees Junk as \\Junk (with
    Sent, Drafts and Trash). The script compiles into the user's home on the mail volume (the
    mail user cannot write below /etc), with no error logged."""
    from mailsite.daemons.dovecot import SIEVE_BINDIR
    from mailsite.model import JUNK_MAILBOX, SPAM_HEADER

    name, mark = SPAM_HEADER
    messages = tmp_path / "messages"
    messages.mkdir()
    for number, message in enumerate([
        _message("marked", f"{name}: {mark}\r\n{name}-Score: 7.2 / 15\r\n"),
        _message("plain"),
        _message("marked-by-milter-headers", f"{name.upper()}: {mark.capitalize()}\r\n"),
        _message("mentions-the-mark", body=f"{name}: {mark}"),
        _message("marked-no", f"{name}: no\r\n"),
    ]):
        (messages / f"{number}.eml").write_bytes(message)
    password = "correct horse battery staple"
    result, log, upper = _run_dovecot(tmp_path, _tree_with_password(tmp_path, password), JUNK_BOOT,
                                      MESSAGES=str(messages), PASSWORD=password, JUNK=JUNK_MAILBOX)
    lines = result.stdout.splitlines()
    folders = sorted(line for line in lines if line.startswith("LIST"))
    assert folders == ['LIST (\\HasNoChildren \\Drafts) "." Drafts', 'LIST (\\HasNoChildren \\Junk) "." Junk',
                       'LIST (\\HasNoChildren \\Sent) "." Sent', 'LIST (\\HasNoChildren \\Trash) "." Trash',
                       'LIST (\\HasNoChildren) "." INBOX'], result.stdout
    assert sorted(line for line in lines if line.startswith("IN ")) == [
        "IN INBOX marked-no", "IN INBOX mentions-the-mark", "IN INBOX plain",
        f"IN {JUNK_MAILBOX} marked", f"IN {JUNK_MAILBOX} marked-by-milter-headers"], result.stdout + log
    home = upper / MAILBOXES.lstrip("/") / "alice"
    compiled = home / SIEVE_BINDIR / "junk.svbin"
    assert compiled.is_file() and compiled.stat().st_uid == MAIL_UID, sorted(p.name for p in home.iterdir())
    # No "binary save: failed" or other complaint on delivery (the master's own warning as the test stops it aside).
    assert not [line for line in log.splitlines() if " lmtp(" in line and ("Error:" in line or "Warning:" in line)], log
    assert f"fileinto action: stored mail into mailbox '{JUNK_MAILBOX}'" in log, log
