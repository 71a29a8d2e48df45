"""doveconf -n of the dovecot daemon root (Dovecot 2.3, as OpenBSD 7.8's packages ship it) on a
host's dovecot.conf: in the same sandbox as smtpd -n, with the accounts an OpenBSD primary has.

Written against small configs of its own, so that what it proves of the check does not hang on
the dovecot module's template (whose own render is checked with the site's in test_check)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailsite import daemonroot
from mailsite.configtest import DOVECOT_HOST_ACCOUNTS, check_doveconf, doveconf_problems, parser_versions
from mailsite.daemonroot import ROOTS, daemon_root

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for network namespaces (CI runs it as root)"
)

CONFIG = "etc/dovecot/dovecot.conf"
# A small Dovecot 2.3 config as an OpenBSD primary runs it: the package's users, IMAPS only, LMTP.
VALID = """\
protocols = imap lmtp
base_dir = /var/dovecot
default_internal_user = _dovecot
default_login_user = _dovenull
ssl = required
ssl_cert = </etc/ssl/mx1.example.org.crt
ssl_key = </etc/ssl/private/mx1.example.org.key
disable_plaintext_auth = yes
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = scheme=BLF-CRYPT /etc/dovecot/passwd
}
userdb {
  driver = passwd-file
  args = /etc/dovecot/users
}
service imap-login {
  inet_listener imap {
    port = 0
  }
}
"""


def _tree(tmp_path: Path, config: str, **others: str) -> Path:
    """A primary's tree holding just what the check reads: its name, its link, its etc/dovecot."""
    tree = tmp_path / "mx1"
    (tree / "etc/dovecot").mkdir(parents=True)
    (tree / "etc/myname").write_text("mx1.example.org\n")
    (tree / "etc/hostname.vmx0").write_text("inet 192.0.2.25 255.255.255.0\n")
    (tree / CONFIG).write_text(config)
    for path, text in others.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
    return tree


def _problems(tree: Path) -> list[tuple[str, int | None, str]]:
    return [(problem.file, problem.line, problem.message) for problem in check_doveconf("mx1", tree, CONFIG)]


def test_a_dovecot_2_3_config_passes_the_dovecot_roots_doveconf(tmp_path):
    # Its certificate files are not there: doveconf -n reads a `<` path only when dovecot runs.
    assert _problems(_tree(tmp_path, VALID)) == []


@pytest.mark.parametrize("line, setting", [
    ("dovecot_config_version = 2.4.0", "dovecot_config_version"),  # 2.4's required first line
    ("ssl_server_cert_file = /etc/ssl/mx1.example.org.crt", "ssl_server_cert_file"),  # 2.4's name of ssl_cert
])
def test_a_dovecot_2_4_setting_is_refused_on_its_line_by_2_3(tmp_path, line, setting):
    """Trixie's Dovecot 2.4 requires the first line and knows the renamed setting; OpenBSD 7.8's
    2.3 refuses both, so the image's dovecot would not start on the file."""
    assert _problems(_tree(tmp_path, f"{line}\n{VALID}")) == [("dovecot.conf", 1, f"Unknown setting: {setting}")]


@pytest.mark.parametrize("setting, user", [
    ("default_internal_user = _dovecot", "dovecot"),  # left unset: Debian's compiled-in user
    ("default_login_user = _dovenull", "dovenull"),
])
def test_a_config_leaning_on_debians_dovecot_users_is_refused_as_on_openbsd(tmp_path, setting, user):
    """OpenBSD's package makes _dovecot and _dovenull; Debian's root holds dovecot and dovenull,
    2.3's compiled-in defaults. The check looks the users up among the OpenBSD primary's accounts."""
    name = setting.split(" =")[0]
    problems = _problems(_tree(tmp_path, VALID.replace(f"{setting}\n", "")))
    assert problems == [("dovecot.conf", None, f"{name} doesn't exist: {user}")]


def test_a_problem_in_an_included_file_names_that_file_and_line(tmp_path):
    tree = _tree(tmp_path, VALID + "!include conf.d/*.conf\n",
                 **{"etc/dovecot/conf.d/10-mail.conf": "# mail\nmail_locaton = maildir:~/Maildir\n"})
    assert _problems(tree) == [("etc/dovecot/conf.d/10-mail.conf", 2, "Unknown setting: mail_locaton")]


def test_an_unclosed_section_is_named_in_the_hosts_words(tmp_path):
    assert _problems(_tree(tmp_path, VALID + "protocol imap {\n")) == [
        ("dovecot.conf", None, f"Missing '}}' (section started at dovecot.conf:{VALID.count(chr(10)) + 1})")]


def test_the_config_directory_as_a_link_to_this_machines_files_is_refused_not_read(tmp_path):
    tree = _tree(tmp_path, VALID)
    (tree / "etc/dovecot/dovecot.conf").unlink()
    (tree / "etc/dovecot").rmdir()
    (tree / "etc/dovecot").symlink_to("/etc")
    [problem] = check_doveconf("mx1", tree, CONFIG)
    assert problem.file == "etc/dovecot" and "a symbolic link" in problem.message


def test_doveconf_leaves_the_dovecot_root_and_the_tree_as_they_were(tmp_path):
    tree = _tree(tmp_path, VALID)
    before = sorted((path.relative_to(tree), path.stat().st_mtime_ns) for path in tree.rglob("*"))
    assert _problems(tree) == []
    assert sorted((path.relative_to(tree), path.stat().st_mtime_ns) for path in tree.rglob("*")) == before
    home = daemon_root("dovecot").path.parent
    assert daemonroot._verified(home, ROOTS["dovecot"]) is not None  # its manifest: every file as built


def test_the_report_names_the_dovecot_root_and_its_version():
    version = daemon_root("dovecot").version("dovecot-core")
    assert version.startswith("1:2.3.")
    assert parser_versions(["doveconf", "smtpd -n"]) == [
        f"smtpd -n: opensmtpd {daemon_root().version('opensmtpd')} (Debian trixie daemon root)",
        f"doveconf: dovecot-core {version} (Debian bookworm-backports daemon root)",
    ]


def test_the_accounts_are_openbsds_and_the_mail_users():
    from mailsite.model import MAIL_UID, MAIL_USER
    assert dict(DOVECOT_HOST_ACCOUNTS) == {"root": 0, "_dovecot": 518, "_dovenull": 666, MAIL_USER: MAIL_UID}


# --- how doveconf's complaints become problems (no namespace) ---------------------------------------

def test_an_error_said_again_by_its_fatal_line_is_one_problem():
    stderr = ("doveconf: Error: default_login_user doesn't exist: dovenull\n"
              "doveconf: Fatal: Error in configuration file /etc/dovecot/dovecot.conf: "
              "default_login_user doesn't exist: dovenull\n")
    assert [str(p) for p in doveconf_problems("mx1", CONFIG, stderr)] == [
        "mx1: dovecot.conf: default_login_user doesn't exist: dovenull"]


def test_a_warning_is_a_problem_with_its_file_and_line():
    """An obsolete setting: 2.3 still starts, but warns on every start; the rendered file should not."""
    stderr = ("doveconf: Warning: NOTE: You can get a new clean config file with: doveconf -Pn > dovecot-new.conf\n"
              "doveconf: Warning: Obsolete setting in /etc/dovecot/dovecot.conf:45: "
              "ssl_protocols has been replaced by ssl_min_protocol\n")
    assert [str(p) for p in doveconf_problems("mx1", CONFIG, stderr)] == [
        "mx1: dovecot.conf: NOTE: You can get a new clean config file with: doveconf -Pn > dovecot-new.conf",
        "mx1: dovecot.conf:45: Obsolete setting: ssl_protocols has been replaced by ssl_min_protocol"]
