"""Certificates (issue 16.4): acme-client gets each MX a certificate for its MX name (the primary
also for the MTA-STS names), httpd answers the CA's http-01 challenges and serves the MTA-STS
policy, pf and the cloud firewall open 80 everywhere and 443 on the primary alone, the job renews
and hands each new certificate to the daemons, and the primary keeps its ACME state on the mail
volume.

acme-client and httpd are OpenBSD's alone (no Linux build): their files are read here against
their manual pages, statement by statement, as OpenBSD 7.8 ships them: acme-client.conf(5)
(v1.32, 2025/09/16), acme-client(1) and httpd.conf(5). The bake runs `acme-client -n` and
`httpd -n` on the real ones. The renewal job and the restore at boot run here under mksh with
stand-ins for the OpenBSD commands they call, as the rc.securelevel tests do.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mailsite.daemons.acme import ACME_STATE, JOB, NAMES_PER_CERTIFICATE, account_key, render_job
from mailsite.firewall import cloud_rules, inbound_services
from mailsite.mta_sts import WELL_KNOWN_PATH, policy_hosts, policy_text
from tests.test_render import render_site
from mailsite.service import ANYWHERE
from tests.sites import addresses, example_settings, refusal_lines, site_of

# -- a reader of the two grammars ---------------------------------------------------------------
#
# Both files share OpenBSD's parse.y lexer: `#` to the end of the line outside quotes, strings in
# double quotes or bare words, `{` `}` as tokens, and a line end ending a statement (in a block
# too). A statement is its words, then maybe a block of statements.

_TOKEN = re.compile(r'\s*(?:"([^"\\\n]*)"|([{}])|([^\s{}"#]+)|(#[^\n]*))')


def _tokens(line: str) -> list[str]:
    tokens, at = [], 0
    while at < len(line.rstrip()):
        match = _TOKEN.match(line, at)
        assert match, f"cannot read {line[at:]!r}"
        quoted, brace, word, comment = match.groups()
        if comment is None:
            tokens.append(quoted if quoted is not None else brace or word)
        at = match.end()
    return tokens


def _statements(text: str) -> list[tuple[list[str], list]]:
    """[(words, block)], block a list of the same (empty for a statement without one)."""
    root: list = []
    stack = [root]
    for line in text.splitlines():
        tokens = _tokens(line)
        while tokens:
            if tokens[0] == "}":
                stack.pop()
                tokens = tokens[1:]
                assert stack, "a } closes nothing"
                continue
            if "{" in tokens:
                at = tokens.index("{")
                words, rest = tokens[:at], tokens[at + 1 :]
                block: list = []
                stack[-1].append((words, block))
                if "}" in rest:  # a one-line block: alternative names { a b }
                    end = rest.index("}")
                    block.extend(([word], []) for word in rest[:end])
                    tokens = rest[end + 1 :]
                else:
                    stack.append(block)
                    tokens = rest
            else:
                stack[-1].append((tokens, []))
                tokens = []
    assert len(stack) == 1, "a block is not closed"
    return root


def _one(block: list, *keywords: str) -> list[str]:
    """The arguments of the one statement that starts with `keywords`."""
    found = [words[len(keywords):] for words, _ in block if words[: len(keywords)] == list(keywords)]
    assert len(found) == 1, f"{' '.join(keywords)}: {len(found)} statements"
    return found[0]


# acme-client.conf(5), OpenBSD 7.8: each statement of an authority and of a domain block, its
# keywords and how many arguments follow (keytype: rsa or ecdsa, optional).
AUTHORITY_OPTIONS = {("api", "url"): (1,), ("account", "key"): (1, 2), ("contact",): (1,)}
DOMAIN_OPTIONS = {
    ("domain", "name"): (1,), ("domain", "key"): (1, 2), ("domain", "certificate"): (1,),
    ("domain", "chain", "certificate"): (1,), ("domain", "full", "chain", "certificate"): (1,),
    ("profile",): (1,), ("sign", "with"): (1,), ("challengedir",): (1,),
}
KEYTYPES = ("rsa", "ecdsa")
# domain_valid() in acme-client's util.c: letters, digits, - and . (ASCII names).
_DOMAIN = re.compile(r"[a-z0-9.-]+")


def _option(words: list[str], grammar: dict) -> tuple[str, ...]:
    for keywords, counts in grammar.items():
        if tuple(words[: len(keywords)]) == keywords and len(words) - len(keywords) in counts:
            return keywords
    raise AssertionError(f"not a statement of acme-client.conf(5) here: {' '.join(words)}")


def read_acme_client_conf(text: str) -> tuple[dict, dict]:
    """(authorities by name, domains by handle) as acme-client reads them, refusing what its
    grammar refuses: unknown statements, a domain block without its key or certificate, a sign
    with naming no authority, a key file used twice, a relative certificate path."""
    authorities: dict[str, dict] = {}
    domains: dict[str, dict] = {}
    used_files: set[str] = set()
    for words, block in _statements(text):
        kind, name = words[0], words[1]
        assert len(words) == 2, f"{' '.join(words)}: one name after {kind}"
        if kind == "authority":
            options = {_option(w, AUTHORITY_OPTIONS): w for w, _ in block}
            assert len(options) == len(block), f"authority {name}: a statement twice"
            assert ("api", "url") in options and ("account", "key") in options, f"authority {name}"
            key = options[("account", "key")]
            assert key[2].startswith("/") and key[3:] in ([], ["rsa"], ["ecdsa"]), key
            authorities[name] = {" ".join(k): w[len(k)] for k, w in options.items()}
        elif kind == "domain":
            assert name not in domains, f"domain {name} already defined"
            options, alternatives = {}, []
            for w, inner in block:
                if w == ["alternative", "names"]:
                    alternatives = [n[0] for n, _ in inner]
                    continue
                keywords = _option(w, DOMAIN_OPTIONS)
                assert keywords not in options, f"domain {name}: {' '.join(keywords)} twice"
                options[keywords] = w[len(keywords):]
            # parse.y's minimum: a key, and a certificate or a full chain.
            assert ("domain", "key") in options, f"no domain key file specified for domain {name}"
            assert ({("domain", "certificate"), ("domain", "full", "chain", "certificate")} & set(options)), name
            files = [options[k][0] for k in options if k[0] == "domain" and k[-1] in ("key", "certificate")]
            for path in files:
                assert path.startswith("/"), f"{name}: {path} is not an absolute path"
                assert path not in used_files, f"{path}: file already used"
                used_files.add(path)
            signer = options.get(("sign", "with"), [next(iter(authorities), None)])[0]
            assert signer in authorities, f"domain {name}: sign with: unknown authority"
            names = [options.get(("domain", "name"), [name])[0], *alternatives]
            assert all(_DOMAIN.fullmatch(n) for n in names), names
            domains[name] = {"names": names, "key": options[("domain", "key")][0],
                             "full chain": options.get(("domain", "full", "chain", "certificate"), [None])[0],
                             "authority": signer, "challengedir": options.get(("challengedir",), ["/var/www/acme"])[0]}
        else:
            raise AssertionError(f"not a section of acme-client.conf(5): {' '.join(words)}")
    return authorities, domains


# httpd.conf(5): what a server and a location may hold, of what these files use.
SERVER_OPTIONS = {"alias", "listen", "location", "tls", "block", "root", "log", "hsts"}
LOCATION_OPTIONS = {"root", "request", "block", "pass", "directory"}
CHROOT = "/var/www"  # httpd's default chroot (no chroot statement)


def read_httpd_conf(text: str) -> list[dict]:
    """Each server: its names, its listens [(address, tls, port)], its tls certificate and key, and
    its locations in order [(path, {option: arguments})]."""
    servers = []
    for words, block in _statements(text):
        assert words[0] == "server" and len(words) == 2 and block, f"not a server block: {words}"
        server = {"names": [words[1]], "listens": [], "tls": {}, "locations": []}
        for option, inner in block:
            assert option[0] in SERVER_OPTIONS, f"server {words[1]}: {option}"
            if option[0] == "alias":
                server["names"].append(option[1])
            elif option[0] == "listen":
                # listen on address [tls] port number
                assert option[1] == "on" and option[-2] == "port" and len(option) in (5, 6), option
                assert len(option) == 5 or option[3] == "tls", option
                server["listens"].append((option[2], len(option) == 6, int(option[-1])))
            elif option[0] == "tls":
                server["tls"] = {w[0]: w[1] for w, _ in inner}
                assert set(server["tls"]) <= {"certificate", "key"}, server["tls"]
            elif option[0] == "location":
                assert len(option) == 2, option
                settings = {}
                for w, _ in inner:
                    assert w[0] in LOCATION_OPTIONS, f"location {option[1]}: {w}"
                    settings[w[0]] = w[1:]
                server["locations"].append((option[1], settings))
        servers.append(server)
    return servers


@pytest.fixture(scope="module")
def site():
    return site_of(example_settings())


@pytest.fixture(scope="module")
def trees(site):
    return render_site(site)


def _acme(trees, host):
    return read_acme_client_conf(trees[host]["etc/acme-client.conf"].text)


def _httpd(trees, host):
    return read_httpd_conf(trees[host]["etc/httpd.conf"].text)


# -- acme-client.conf ----------------------------------------------------------------------------

def test_every_mx_gets_a_certificate_for_its_name_where_smtpd_spamd_and_dovecot_read_it(site, trees):
    for host in site.hosts:
        authorities, domains = _acme(trees, host.name)
        assert list(authorities) == [site.acme.authority]
        authority = authorities[site.acme.authority]
        assert authority["api url"] == "https://acme-v02.api.letsencrypt.org/directory"
        assert authority["account key"] == account_key(site) and authority["account key"].startswith("/etc/acme/")
        mx = domains[host.mx_name]
        assert mx["names"] == [host.mx_name]
        # The full chain at tls.certificate: smtpd's pki cert, spamd -C, Dovecot's ssl_cert.
        assert (mx["full chain"], mx["key"]) == (site.tls.certificate_for(host), site.tls.key_for(host))
        smtpd = trees[host.name]["etc/mail/smtpd.conf"].text
        assert f'pki {host.mx_name} cert "{mx["full chain"]}"' in smtpd and f'pki {host.mx_name} key "{mx["key"]}"' in smtpd
        assert f"-C {mx['full chain']} -K {mx['key']}" in trees[host.name]["etc/rc.conf.local"].text
        if host.is_primary:
            dovecot = trees[host.name]["etc/dovecot/dovecot.conf"].text
            assert f"<{mx['full chain']}" in dovecot and f"<{mx['key']}" in dovecot
        assert all(domain["challengedir"] == "/var/www/acme" for domain in domains.values())


def test_primary_alone_gets_certificates_for_the_mta_sts_names(site, trees):
    for host in site.hosts:
        _, domains = _acme(trees, host.name)
        names = sorted(name for handle, domain in domains.items() if handle != host.mx_name for name in domain["names"])
        assert names == (sorted(policy_hosts(site)) if host.is_primary else []), host.name


def test_mta_sts_names_of_many_domains_come_in_certificates_of_at_most_a_hundred_names():
    settings = example_settings()
    settings["domains"] = [*settings["domains"], *(f"d{n}.example" for n in range(248))]
    many = site_of(settings)
    _, domains = read_acme_client_conf(render_site(many)[many.primary.name]["etc/acme-client.conf"].text)
    mta_sts = [d["names"] for handle, d in domains.items() if handle != many.primary.mx_name]
    assert [len(names) for names in mta_sts] == [NAMES_PER_CERTIFICATE, NAMES_PER_CERTIFICATE, 50]
    assert sorted(n for names in mta_sts for n in names) == sorted(policy_hosts(many))


def test_contact_and_another_ca_reach_the_authority_block():
    settings = example_settings()
    settings["acme"] = {"directory": "https://acme.example.net/directory", "contact": "hostmaster@example.net",
                        "caaIssuer": "ca.example.net"}
    other = site_of(settings)
    authorities, domains = read_acme_client_conf(render_site(other)["mx2"]["etc/acme-client.conf"].text)
    (name, authority), = authorities.items()
    assert authority == {"api url": "https://acme.example.net/directory", "account key": f"/etc/acme/{name}-privkey.pem",
                         "contact": "mailto:hostmaster@example.net"}
    assert {d["authority"] for d in domains.values()} == {name}
    assert other.acme.issuer == "ca.example.net"


@pytest.mark.parametrize("directory, relay", [
    ("https://acme-v02.api.letsencrypt.org/directory", " tls helo "),
    ("https://acme-staging-v02.api.letsencrypt.org/directory", " tls no-verify helo "),
])
def test_backups_verify_the_primary_unless_its_certificates_come_from_a_staging_ca(directory, relay):
    # Staging's roots are in no CA bundle: a verifying backup would hold the site's mail until ttl.
    settings = example_settings()
    settings["acme"] = {"directory": directory}
    trees = render_site(site_of(settings))
    for backup in ("mx2", "mx3"):
        lines = [line for line in trees[backup]["etc/mail/smtpd.conf"].text.splitlines() if line.startswith('action "relay_backup"')]
        assert len(lines) == 1 and relay in lines[0], lines


def test_caa_issuer_is_the_lets_encrypt_name_for_its_directories(site):
    assert site.acme.issuer == "letsencrypt.org"
    settings = example_settings()
    settings["acme"] = {"directory": "https://acme-staging-v02.api.letsencrypt.org/directory"}
    assert site_of(settings).acme.issuer == "letsencrypt.org"


@pytest.mark.parametrize("acme, line", [
    ({"directory": "https://acme.example.net/directory"},
     "mailsite:acme.caaIssuer = null: no CAA issuer is known for acme.directory's CA; set the domain name "
     "the CA's documentation gives for CAA records, like letsencrypt.org"),
    ({"directory": "http://acme-v02.api.letsencrypt.org/directory"},
     "mailsite:acme.directory = http://acme-v02.api.letsencrypt.org/directory: not an ACME directory URL; "
     "write one over https, like https://acme-v02.api.letsencrypt.org/directory"),
    ({"contact": "hostmaster"},
     "mailsite:acme.contact = hostmaster: not a mail address; write one address like postmaster@example.org"),
], ids=["unknown-ca", "plain-http", "not-an-address"])
def test_bad_acme_setting_is_one_line_naming_it(acme, line):
    settings = example_settings()
    settings["acme"] = acme
    assert refusal_lines(settings) == [line]


# -- httpd.conf ------------------------------------------------------------------------------------

def test_every_name_of_every_certificate_is_answered_on_port_80_from_the_challengedir(site, trees):
    for host in site.hosts:
        _, domains = _acme(trees, host.name)
        http = [s for s in _httpd(trees, host.name) if any(port == 80 and not tls for _, tls, port in s["listens"])]
        assert len(http) == 1, host.name
        server = http[0]
        # IPv4 and IPv6 alike: the CA tries a name's AAAA first.
        assert {(a, p) for a, _, p in server["listens"]} == {("*", 80), ("::", 80)}
        assert sorted(server["names"]) == sorted(n for d in domains.values() for n in d["names"]), host.name
        # acme-client(1): location "/.well-known/acme-challenge/*" { root "/acme"; request strip 2 },
        # first; then everything else refused (httpd.conf(5): the first matching location wins).
        (path, challenge), (rest, refused) = server["locations"]
        assert (path, challenge) == ("/.well-known/acme-challenge/*", {"root": ["/acme"], "request": ["strip", "2"]})
        assert {CHROOT + challenge["root"][0]} == {d["challengedir"] for d in domains.values()}
        assert (rest, refused) == ("*", {"block": []})


def test_primary_serves_the_mta_sts_policy_over_https_with_its_own_certificates_and_nothing_else(site, trees):
    for host in site.hosts:
        _, domains = _acme(trees, host.name)
        https = [s for s in _httpd(trees, host.name) if any(tls for _, tls, _ in s["listens"])]
        if not host.is_primary:
            assert https == [] and not any(p.startswith("var/www/") for p in trees[host.name]), host.name
            continue
        assert sorted(n for s in https for n in s["names"]) == sorted(policy_hosts(site))
        for server in https:
            assert {(a, t, p) for a, t, p in server["listens"]} == {("*", True, 443), ("::", True, 443)}
            domain = domains[server["names"][0]]
            assert domain["names"] == server["names"], "the certificate covers exactly the server's names"
            assert server["tls"] == {"certificate": domain["full chain"], "key": domain["key"]}
            (path, policy), (rest, refused) = server["locations"]
            assert path == WELL_KNOWN_PATH == "/.well-known/mta-sts.txt" and set(policy) == {"root"}
            assert (rest, refused) == ("*", {"block": []})
            served = f"{CHROOT}{policy['root'][0]}{path}".lstrip("/")
            assert trees[host.name][served].text.splitlines() == policy_text(site).splitlines()
            assert served.endswith(".txt"), "httpd's built-in types send .txt as text/plain (RFC 8461, 3.3)"


def test_httpd_is_enabled_on_every_mx(site, trees):
    for host in site.hosts:
        assert 'httpd_flags=""' in trees[host.name]["etc/rc.conf.local"].text.splitlines()


# -- pf and the cloud firewall -------------------------------------------------------------------

def test_http_is_open_on_every_mx_and_https_only_on_the_primary(site, trees):
    for host in site.hosts:
        services = inbound_services(site, host, addresses(site))
        web = {s.port: s for s in services if s.port in (80, 443)}
        assert set(web) == ({80, 443} if host.is_primary else {80}), host.name
        assert all(s.protocol == "tcp" and s.sources == ANYWHERE and not s.rate_limited for s in web.values())
        pf = trees[host.name]["etc/pf.conf"].text
        assert "pass in on $ext_if proto tcp from any to ($ext_if) port www\n" in pf
        assert ("pass in on $ext_if proto tcp from any to ($ext_if) port https\n" in pf) == host.is_primary
        ports = {(r.protocol, r.port, r.subnet, r.subnet_size) for r in cloud_rules(services)}
        for port in ("80", "443"):
            opened = {(p, sub, size) for p, q, sub, size in ports if q == port}
            assert opened == ({("tcp", "0.0.0.0", 0), ("tcp", "::", 0)} if port == "80" or host.is_primary else set())


# -- renewal, and the primary's state on the mail volume ------------------------------------------

# Stand-ins for what the job calls: acme-client exits as $FAKE/acme-<handle> says (0 new, 2 up
# to date, 1 failed) and, on 0, writes a new certificate where acme-client.conf says; rcctl,
# logger and route record their calls; mount lists $FAKE/mounted.
_STAND_INS = {
    "acme-client": 'echo "acme-client $*" >> "$FAKE/calls"\n'
                   'code=$(cat "$FAKE/acme-$1" 2>/dev/null || echo 2)\n'
                   # A certificate for the block's key, when there is one, as the CA's is.
                   'key="$MAILSITE_ROOT/etc/ssl/private/$1.key" cert="$MAILSITE_ROOT/etc/ssl/$1.crt"\n'
                   'if [ "$code" = 0 ] && [ -f "$key" ]; then\n'
                   '  openssl req -x509 -key "$key" -subj "/CN=$1" -addext "subjectAltName=DNS:$1" -days 90 -out "$cert" 2>/dev/null\n'
                   'elif [ "$code" = 0 ]; then echo "issued for $1" > "$cert"; fi\n'
                   'exit "$code"\n',
    "rcctl": 'echo "rcctl $*" >> "$FAKE/calls"\n',
    "logger": 'eval "message=\\${$#}"\necho "$message" >> "$FAKE/log"\n',
    "route": 'exit 0\n',
    "mount": 'cat "$FAKE/mounted" 2>/dev/null\n',
}


class Host:
    def __init__(self, tmp_path: Path, site, host):
        self.fake, self.root, bin_ = tmp_path / "fake", tmp_path / "root", tmp_path / "bin"
        for directory in (self.fake, self.root / "etc/ssl/private", self.root / "etc/acme", self.root / "var/run", bin_):
            directory.mkdir(parents=True, exist_ok=True)
        for name, body in _STAND_INS.items():
            (bin_ / name).write_text("#!/bin/sh\n" + body)
            (bin_ / name).chmod(0o755)
        self.job = tmp_path / "mailsite-certificates"
        self.job.write_text(render_job(site, host))
        self.env = {"PATH": f"{bin_}:/usr/bin:/bin", "FAKE": str(self.fake), "MAILSITE_ROOT": str(self.root)}
        if host.is_primary:  # its mail volume mounted, as on every boot but a new VM's first on Vultr
            (self.fake / "mounted").write_text(f"/dev/sd1a on {self.root}/var/mailsite type ffs (local)\n")

    def run(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["mksh", str(self.job), action], env=self.env, capture_output=True, text=True, timeout=30)

    def calls(self, command: str) -> list[str]:
        calls = self.fake / "calls"
        return [line for line in (calls.read_text().splitlines() if calls.exists() else []) if line.split()[0] == command]


def test_renewal_restarts_smtpd_and_spamd_and_reloads_dovecot_for_a_new_mx_certificate(site, tmp_path):
    primary = Host(tmp_path, site, site.primary)
    (primary.fake / f"acme-{site.primary.mx_name}").write_text("0\n")
    assert primary.run("renew").returncode == 0
    handles = [site.primary.mx_name, *(policy_hosts(site)[:1])]
    assert primary.calls("acme-client") == [f"acme-client {handle}" for handle in handles]
    assert primary.calls("rcctl") == ["rcctl restart smtpd", "rcctl restart spamd", "rcctl reload dovecot"]


def test_renewal_reloads_httpd_for_a_new_mta_sts_certificate_and_nothing_when_none_changed(site, tmp_path):
    primary = Host(tmp_path, site, site.primary)
    assert primary.run("renew").returncode == 0 and primary.calls("rcctl") == [], "nothing changed, nothing restarted"
    (primary.fake / f"acme-{policy_hosts(site)[0]}").write_text("0\n")
    assert primary.run("renew").returncode == 0
    assert primary.calls("rcctl") == ["rcctl reload httpd"]


def test_backup_renewal_restarts_its_mta_daemons_and_a_failure_restarts_nothing(site, tmp_path):
    backup = site.backups[0]
    host = Host(tmp_path, site, backup)
    (host.fake / f"acme-{backup.mx_name}").write_text("1\n")
    failed = host.run("renew")
    assert failed.returncode == 1 and host.calls("rcctl") == []
    assert f"acme-client {backup.mx_name} failed; keeping the certificate it has" in (host.fake / "log").read_text()
    (host.fake / f"acme-{backup.mx_name}").write_text("0\n")
    assert host.run("boot").returncode == 0
    assert host.calls("rcctl") == ["rcctl restart smtpd", "rcctl restart spamd"]
    assert "restore" not in render_job(site, backup), "a backup has no volume to keep anything on"


def test_crontab_renews_hourly_at_a_random_minute_and_at_boot(site, trees):
    for host in site.hosts:
        lines = trees[host.name]["etc/mailsite/crontab"].text.splitlines()
        # `~`: a minute cron draws for itself on each host (acme-client(1)'s own example).
        assert f"~\t*\t*\t*\t*\t-n -s /{JOB} renew" in lines
        assert f"@reboot\t-n /{JOB} boot" in lines
        assert trees[host.name][JOB].mode == 0o755


def test_new_certificate_is_kept_on_the_volume_and_a_replaced_primary_starts_with_it(site, tmp_path):
    from tests.test_data_volume import DUID, Boot

    certificate = site.tls.certificate_for(site.primary)
    # The primary that got the certificate, its volume mounted.
    old = Host(tmp_path / "old", site, site.primary)
    (old.fake / "mounted").write_text(f"/dev/sd1a on {old.root}/var/mailsite type ffs (local)\n")
    (old.root / account_key(site).lstrip("/")).write_text("account key\n")
    # What acme-client leaves: a key and the CA's certificate for it (a subjectAltName).
    issued, key = old.root / certificate.lstrip("/"), old.root / site.tls.key_for(site.primary).lstrip("/")
    _self_signed(issued, key, site.primary.mx_name, san=True)
    (old.fake / f"acme-{site.primary.mx_name}").write_text("0\n")
    assert old.run("renew").returncode == 0
    kept = old.root / ACME_STATE.lstrip("/")
    assert (kept / certificate.lstrip("/")).read_text() == issued.read_text()
    assert (kept / account_key(site).lstrip("/")).read_text() == "account key\n"
    assert (kept / site.tls.key_for(site.primary).lstrip("/")).stat().st_mode & 0o777 == key.stat().st_mode & 0o777

    # Its replacement boots from an image with a self-signed certificate; rc.securelevel mounts
    # the volume (holding what the old primary kept) and puts the kept files back first.
    boot = Boot(tmp_path / "new")
    boot.disk("sd1", DUID, data=True)
    (boot.mount_point).mkdir(parents=True)
    subprocess.run(["cp", "-a", f"{old.root}/var/mailsite/acme", str(boot.mount_point)], check=True)
    (boot.root / "etc/ssl/private").mkdir(parents=True)
    (boot.root / "etc/acme").mkdir(parents=True)
    (boot.root / certificate.lstrip("/")).write_text("self-signed\n")
    job = boot.root / JOB
    job.parent.mkdir(parents=True)
    job.write_text(render_job(site, site.primary))
    boot.run()
    assert (boot.root / certificate.lstrip("/")).read_text() == issued.read_text()
    assert (boot.root / site.tls.key_for(site.primary).lstrip("/")).read_text() == key.read_text()
    assert (boot.root / account_key(site).lstrip("/")).read_text() == "account key\n"
    assert "certificates restored from the mail volume" in boot.log


def test_without_the_volume_the_primary_keeps_nothing_and_restores_nothing(site, tmp_path):
    primary = Host(tmp_path, site, site.primary)
    (primary.fake / "mounted").unlink()
    (primary.fake / f"acme-{site.primary.mx_name}").write_text("0\n")
    assert primary.run("renew").returncode == 0
    assert not (primary.root / ACME_STATE.lstrip("/")).exists()
    assert primary.run("restore").returncode == 0
    assert "the mail volume is not mounted" in (primary.fake / "log").read_text()


def test_a_primary_without_its_volume_asks_the_ca_nothing_until_the_volume_is_back(site, tmp_path):
    """A replaced primary's first boot on Vultr runs without its volume (attached with a
    restart), which holds the certificates the old primary got: asking the CA then would spend
    one of the 5 certificates a week for the same names at every rotation, for certificates the
    next boot restores anyway (and mail cannot be delivered without the volume meanwhile)."""
    primary = Host(tmp_path, site, site.primary)
    (primary.fake / "mounted").unlink()
    assert primary.run("boot").returncode == 0
    assert primary.calls("acme-client") == []
    assert "the mail volume is not mounted" in (primary.fake / "log").read_text()
    (primary.fake / "mounted").write_text(f"/dev/sd1a on {primary.root}/var/mailsite type ffs (local)\n")
    assert primary.run("renew").returncode == 0
    assert len(primary.calls("acme-client")) == len(policy_hosts(site)[:1]) + 1


def test_caa_records_name_the_ca_acme_client_uses():
    from mailsite.dns import dns_records

    settings = example_settings()
    settings["acme"] = {"directory": "https://acme.example.net/directory", "caaIssuer": "ca.example.net"}
    other = site_of(settings)
    caa = {record.value for record in dns_records(other, addresses(other)) if record.type == "CAA"}
    assert caa == {'0 issue "ca.example.net"'}


def test_job_passes_sh_n_and_shellcheck(site, tmp_path):
    for host in (site.primary, site.backups[0]):
        job = tmp_path / f"job-{host.name}"
        job.write_text(render_job(site, host))
        for check in (["mksh", "-n"], ["shellcheck", "-s", "sh"]):
            result = subprocess.run([*check, str(job)], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (host.name, check[0], result.stdout + result.stderr)


def _self_signed(cert: Path, key: Path, name: str, san: bool = False) -> None:
    """A pair as install.site makes one (no subjectAltName), or with one, as a CA's has."""
    extra = ["-addext", f"subjectAltName=DNS:{name}"] if san else []
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    *extra, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)


def _public_key(path: Path, kind: str) -> str:
    command = ["openssl", "x509", "-pubkey", "-noout"] if kind == "cert" else ["openssl", "pkey", "-pubout"]
    return subprocess.run([*command, "-in", str(path)], check=True, capture_output=True, text=True, timeout=60).stdout


def test_a_new_vm_gets_its_certificate_for_a_key_of_its_own_not_the_images(site, tmp_path):
    """Every copy of the image holds install.site's self-signed key: at boot, before acme-client
    asks the CA, the job makes the VM a pair of its own; a CA's certificate (one with a
    subjectAltName, restored from the volume say) and its key stay as they are."""
    primary = Host(tmp_path, site, site.primary)
    mx, mta_sts = site.primary, policy_hosts(site)[0]
    cert, key = primary.root / site.tls.certificate_for(mx).lstrip("/"), primary.root / site.tls.key_for(mx).lstrip("/")
    _self_signed(cert, key, mx.mx_name)
    image_key = key.read_text()
    issued = primary.root / site.tls.certificate_named(mta_sts).lstrip("/")
    issued_key = primary.root / site.tls.key_named(mta_sts).lstrip("/")
    _self_signed(issued, issued_key, mta_sts, san=True)
    kept = (issued.read_text(), issued_key.read_text())
    assert primary.run("boot").returncode == 0
    assert key.read_text() != image_key and key.stat().st_mode & 0o777 == 0o600
    assert _public_key(cert, "cert") == _public_key(key, "key"), "the new certificate is the new key's"
    assert (issued.read_text(), issued_key.read_text()) == kept
    assert primary.calls("acme-client") == [f"acme-client {mx.mx_name}", f"acme-client {mta_sts}"]


# -- the volume's state, as a careful admin distrusts it (issue 16.4, found in review) -----------

def _volume_host(tmp_path: Path, site) -> Host:
    primary = Host(tmp_path, site, site.primary)
    (primary.fake / "mounted").write_text(f"/dev/sd1a on {primary.root}/var/mailsite type ffs (local)\n")
    return primary


def _on_volume(host: Host, path: str) -> Path:
    kept = host.root / ACME_STATE.lstrip("/") / path.lstrip("/")
    kept.parent.mkdir(parents=True, exist_ok=True)
    return kept


def test_restore_installs_keys_as_roots_own_whatever_mode_and_owner_the_volume_gave_them(site, tmp_path):
    """A key restored with the volume's mode and owner (cp -p) is world-readable when the volume
    says 0644, and writable by whoever the volume names as its owner: restored, every key is
    root's, 0600, and every certificate root's, 0644."""
    primary = _volume_host(tmp_path, site)
    mx = site.primary
    key, cert = _on_volume(primary, site.tls.key_for(mx)), _on_volume(primary, site.tls.certificate_for(mx))
    _self_signed(cert, key, mx.mx_name, san=True)
    account = _on_volume(primary, account_key(site))
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(account)],
                   check=True, capture_output=True, timeout=60)
    for path in (key, cert, account):
        path.chmod(0o666)
        import os
        os.chown(path, 2000, 2000)
    assert primary.run("restore").returncode == 0
    for path, mode in ((site.tls.key_for(mx), 0o600), (account_key(site), 0o600), (site.tls.certificate_for(mx), 0o644)):
        restored = (primary.root / path.lstrip("/")).stat()
        assert (restored.st_mode & 0o777, restored.st_uid, restored.st_gid) == (mode, 0, 0), path
    assert (primary.root / site.tls.key_for(mx).lstrip("/")).read_text() == key.read_text()


def test_restore_keeps_the_images_pair_when_the_volumes_certificate_is_not_for_its_key(site, tmp_path):
    """A certificate whose key is not beside it (a save cut short, a volume of another site) would
    keep smtpd from starting (its pki's key does not match): the image's pair stays."""
    primary = _volume_host(tmp_path, site)
    mx = site.primary
    image_cert, image_key = primary.root / site.tls.certificate_for(mx).lstrip("/"), primary.root / site.tls.key_for(mx).lstrip("/")
    _self_signed(image_cert, image_key, mx.mx_name)
    image = (image_cert.read_text(), image_key.read_text())
    key, cert = _on_volume(primary, site.tls.key_for(mx)), _on_volume(primary, site.tls.certificate_for(mx))
    _self_signed(cert, key, mx.mx_name, san=True)
    _self_signed(tmp_path / "other.crt", key, mx.mx_name, san=True)  # a new key: the kept cert is the old one's
    assert primary.run("restore").returncode == 0
    assert (image_cert.read_text(), image_key.read_text()) == image
    assert f"not restoring {site.tls.certificate_for(mx)}" in (primary.fake / "log").read_text()


def test_restore_follows_no_symbolic_link_on_the_volume(site, tmp_path):
    """The volume is data: a link in its ACME state pointing at a file of the root disk would have
    rc.securelevel copy that file (as root) into a certificate path. Nothing is restored."""
    primary = _volume_host(tmp_path, site)
    mx = site.primary
    secret = primary.root / "etc/master.passwd"
    secret.write_text("root:$2b$secret\n")
    _on_volume(primary, site.tls.certificate_for(mx)).symlink_to(secret)
    _on_volume(primary, site.tls.key_for(mx)).symlink_to(secret)
    assert primary.run("restore").returncode == 0
    for path in (site.tls.certificate_for(mx), site.tls.key_for(mx)):
        assert not (primary.root / path.lstrip("/")).exists(), path
    assert "symbolic link" in (primary.fake / "log").read_text()


def test_an_hourly_run_before_the_boot_run_still_has_the_ca_certify_a_key_of_the_vms_own(site, tmp_path):
    """cron runs the hourly job at its random minute whether or not the boot run has made the
    VM's own keys yet (the boot run waits up to a minute for a route first): the hourly run
    must not have the CA certify the image's key, which every copy of the image holds. And the
    VM's own self-signed pair is its own: a later run, the CA still failing, keeps it."""
    backup = site.backups[0]
    host = Host(tmp_path, site, backup)
    cert, key = host.root / site.tls.certificate_for(backup).lstrip("/"), host.root / site.tls.key_for(backup).lstrip("/")
    _self_signed(cert, key, backup.mx_name)
    image_key = key.read_text()
    (host.fake / f"acme-{backup.mx_name}").write_text("1\n")
    host.run("renew")
    own = key.read_text()
    assert own != image_key and host.calls("acme-client") == [f"acme-client {backup.mx_name}"]
    host.run("renew")
    assert key.read_text() == own, "the VM's own key is kept from one run to the next"


def test_a_run_while_another_is_at_work_asks_the_ca_nothing_and_a_dead_runs_lock_is_taken_over(site, tmp_path):
    """The boot run and an hourly run at the same time: one replacing the image's key while the
    other's acme-client has the CA certify it leaves a certificate beside a key that is not its
    own, and smtpd, restarted on that pair, does not start. One run at a time."""
    import os

    backup = site.backups[0]
    host = Host(tmp_path, site, backup)
    lock = host.root / "var/run/mailsite-certificates.lock"
    lock.mkdir()
    (lock / "pid").write_text(f"{os.getpid()}\n")  # a run at work: this test's own process
    assert host.run("renew").returncode == 0
    assert host.calls("acme-client") == []
    dead = subprocess.Popen(["true"])
    dead.wait()
    (lock / "pid").write_text(f"{dead.pid}\n")  # a run that died holding it
    assert host.run("renew").returncode == 0
    assert host.calls("acme-client") == [f"acme-client {backup.mx_name}"]
    assert not lock.exists(), "the lock goes with the run"


def test_certificates_issued_while_the_volume_was_away_are_kept_once_it_is_back(site, tmp_path):
    """A new primary's first boot on Vultr runs without its volume (attached with a restart):
    the certificates the boot run got could not be kept, and acme-client then exits 2 for two
    months, so the volume would stay empty and a primary replaced meanwhile would ask the CA
    again. The next run with the volume mounted keeps what the volume lacks."""
    primary = Host(tmp_path, site, site.primary)
    mx = site.primary
    cert, key = primary.root / site.tls.certificate_for(mx).lstrip("/"), primary.root / site.tls.key_for(mx).lstrip("/")
    _self_signed(cert, key, mx.mx_name, san=True)  # the CA's, got while the volume was away
    (primary.root / account_key(site).lstrip("/")).write_text("account key\n")
    (primary.fake / "mounted").write_text(f"/dev/sd1a on {primary.root}/var/mailsite type ffs (local)\n")
    assert primary.run("renew").returncode == 0  # nothing due: acme-client exits 2
    kept = primary.root / ACME_STATE.lstrip("/")
    assert (kept / site.tls.certificate_for(mx).lstrip("/")).read_text() == cert.read_text()
    assert (kept / site.tls.key_for(mx).lstrip("/")).read_text() == key.read_text()
    assert (kept / account_key(site).lstrip("/")).read_text() == "account key\n"
    assert primary.calls("rcctl") == [], "keeping them restarts nothing"


@pytest.mark.parametrize("tls, line", [
    ({"certificate": "/etc/ssl/mail.crt"},
     "mailsite:tls.certificate = /etc/ssl/mail.crt: names no {fqdn}, so the primary's certificates for its MX name "
     "and for the MTA-STS names would share one file, and acme-client refuses a file used twice; write it like "
     "/etc/ssl/{fqdn}.crt"),
    ({"key": "/etc/ssl/private/mail.key"},
     "mailsite:tls.key = /etc/ssl/private/mail.key: names no {fqdn}, so the primary's certificates for its MX name "
     "and for the MTA-STS names would share one file, and acme-client refuses a file used twice; write it like "
     "/etc/ssl/private/{fqdn}.key"),
], ids=["certificate", "key"])
def test_a_certificate_path_without_fqdn_is_refused_in_one_line(tls, line):
    """acme-client.conf(5) (parse.y: "domain key file already used"): a key or certificate file
    named by two domain blocks makes acme-client refuse its whole configuration, so no MX would
    ever get a certificate from the CA. The primary has two at least (its MX name's and the
    MTA-STS names'), each at tls.certificate and tls.key with {fqdn} their first name."""
    settings = example_settings()
    settings["tls"] = tls
    assert refusal_lines(settings) == [line]
