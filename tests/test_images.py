"""The image builder: the real template passes packer, and a real `packer build` (null builder, no
VM) goes through the same wrapper: progress, errors, caching, keys kept out of every output."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import re
import shutil
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from mailsite.config import load_site
from mailsite.images.bake import QEMU_HOST_ADDRESS, BakeRequest, _prepare, bake, identity_of
from mailsite.images.identity import PACKER_DIR
from mailsite.images.packer import BakeError
from mailsite.images.siteset import key_archive, site_set
from mailsite.problems import SiteConfigError
from tests.sites import example_settings, fake_key, fake_secrets, site_of
from tests.test_render import render_site

FIXTURES = Path(__file__).parent / "fixtures"
NULL_TEMPLATE = FIXTURES / "packer/null.pkr.hcl"


def _request(site, tmp_path, host="mx2", template=NULL_TEMPLATE, secrets=None, tree=None) -> BakeRequest:
    settings = site.images.model_copy(update={"cache_dir": str(tmp_path / "cache"), "iso_sha256": "0" * 64})
    secrets = secrets or fake_secrets(site)
    return BakeRequest(site.host(host), tree or render_site(site)[host], secrets[host], settings, "raw", template)


def test_real_template_is_formatted_and_valid(example_site, tmp_path):
    for name in ("openbsd.pkr.hcl", "plugins.pkr.hcl"):
        fmt = subprocess.run(["packer", "fmt", "-check", str(PACKER_DIR / name)], capture_output=True, text=True)
        assert fmt.returncode == 0, f"{name} is not packer-formatted: {fmt.stdout}"
    request = _request(example_site, tmp_path, template=PACKER_DIR / "openbsd.pkr.hcl")
    work = tmp_path / "work"
    work.mkdir()
    var_file = work / "vars.json"
    var_file.write_text(json.dumps(_prepare(request, work)))
    result = subprocess.run(["packer", "validate", f"-var-file={var_file}", str(PACKER_DIR / "openbsd.pkr.hcl")],
                            capture_output=True, text=True, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    install_conf = (work / "http/install.conf").read_text()
    assert "Network interface to configure = vmx0" in install_conf
    assert "Allow root ssh login = prohibit-password" in install_conf


# What autoinstall(8) fills in for the runtime words of its questions during a bake.
_BAKE_WORDS = {"$_cddevs": "cd0", "$_locs": "disk http", "$MODE": "install", "$_d": "com0"}


def _installer_questions() -> list[str]:
    lines = (FIXTURES / "openbsd-installer-questions.txt").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def _response_keys(install_conf: str) -> list[str]:
    """The keys the installer reads from a response file (install.sub, _autorespond): lines of
    the form [!#=]*=?*, the key being what comes before the first '=', blanks trimmed."""
    lines = (line.strip(" \t") for line in install_conf.splitlines())
    return [line.split("=", 1)[0].rstrip(" \t") for line in lines if re.fullmatch(r"[^#=].*=.+", line)]


def _answers(key: str, question: str) -> bool:
    """install.sub: [[ $_q == @(|*[[:blank:]])"$_key"@([[:blank:]?]*|) ]], both lowercased."""
    return re.fullmatch(r"(|.*[ \t])" + re.escape(key.lower()) + r"([ \t?].*|)", question.lower(), re.DOTALL) is not None


@pytest.mark.parametrize("interface", ["vmx0", "vio0"])
def test_every_install_conf_key_answers_a_question_of_the_installer(example_site, tmp_path, interface):
    host = example_site.host("mx2").model_copy(update={"egress_interface": interface})
    request = _request(example_site, tmp_path)
    request = BakeRequest(host, request.tree, request.secrets, request.settings, "raw", request.template)
    _prepare(request, tmp_path)
    keys = _response_keys((tmp_path / "http/install.conf").read_text())
    questions = []
    for question in _installer_questions():
        for word, value in {**_BAKE_WORDS, "$_if": interface}.items():
            question = question.replace(word, value)
        questions.append(question)
    assert len(keys) >= 15 and len(questions) >= 70, "both sides were read"
    unanswered = [key for key in keys if not any(_answers(key, question) for question in questions)]
    assert unanswered == [], f"the installer asks no question these keys answer, so it takes its defaults: {unanswered}"
    # The answers the image depends on, each matched to the question it must answer.
    for key, question in [
        ("Network interface to configure", "Network interface to configure? (name, lladdr, '?', or 'done')"),
        ("Use (W)hole disk MBR, whole disk (G)PT or (E)dit", "Use (W)hole disk MBR, whole disk (G)PT or (E)dit?"),
        ("URL to autopartitioning template for disklabel", "URL to autopartitioning template for disklabel?"),
        ("Allow root ssh login", "Allow root ssh login? (yes, no, prohibit-password)"),
    ]:
        assert key in keys and _answers(key, question)


def test_install_conf_key_matching_is_the_installers():
    # Word boundaries, case, the '?' after a key: as _autorespond reads them.
    assert _answers("IPv4 address for vmx0", "IPv4 address for vmx0? (or 'autoconf' or 'none')")
    assert _answers("ipv4 ADDRESS for vmx0", "IPv4 address for vmx0? (or 'autoconf' or 'none')")
    assert not _answers("IPv4 address for vmx", "IPv4 address for vmx0? (or 'autoconf' or 'none')")
    assert not _answers("Which network interface do you wish to configure", "Network interface to configure? (name, lladdr, '?', or 'done')")
    assert not _answers("Use (W)hole disk MBR, whole disk (G)PT, (O)penBSD area or (E)dit", "Use (W)hole disk MBR, whole disk (G)PT or (E)dit?")
    assert _response_keys("# a = comment\n = no key\nSet name(s) = -x*\nempty =\n") == ["Set name(s)"]


def test_boot_command_and_install_conf_agree_on_packers_http_server(example_site, tmp_path):
    template = (PACKER_DIR / "openbsd.pkr.hcl").read_text()
    boot = re.search(r"boot_command = \[\n(.*?)\n  \]", template, re.S)[1]
    keys = [line.strip().rstrip(",").strip('"') for line in boot.splitlines()]
    # (A)utoinstall at "(I)nstall, (U)pgrade, (A)utoinstall or (S)hell?", then the answer to
    # "Response file location?": a URL ending in install.conf, so it asks no "(I)nstall or (U)pgrade?".
    assert keys[0].startswith("a<enter>")
    assert keys[1] == "http://{{ .HTTPIP }}:{{ .HTTPPort }}/install.conf<enter>"
    # install.conf, a file Packer serves as it is, names the host as qemu's user network shows it
    # to the guest: Packer's {{ .HTTPIP }} is that address unless net_bridge puts the VM elsewhere.
    assert "net_bridge" not in template and "netdev" not in template and QEMU_HOST_ADDRESS == "10.0.2.2"
    # Packer's one port is the one install.conf names for the disklabel template.
    assert "http_port_min    = var.http_port" in template and "http_port_max    = var.http_port" in template
    variables = _prepare(_request(example_site, tmp_path), tmp_path)
    assert (Path(variables["http_directory"]) / "install.conf").is_file()
    assert f":{variables['http_port']}/disklabel\n" in (tmp_path / "http/install.conf").read_text()


EXAMPLE_DISKLABEL = """\
/ 1G-2G 5%
SWAP 256M-1G 5%
/tmp 256M-1G 5%
/usr 2G-4G 10%
/usr/local 512M-4G 10%
/var 3024M-* 65%
"""


def test_installer_gets_the_example_disk_layout_from_packers_http_server(example_site, tmp_path):
    variables = _prepare(_request(example_site, tmp_path), tmp_path)
    # /var: 1G for logs and spamd's database, and the queue for 40 messages of maxMessageSize 50M.
    assert (tmp_path / "http/disklabel").read_text() == EXAMPLE_DISKLABEL
    install_conf = (tmp_path / "http/install.conf").read_text()
    url = f"http://{QEMU_HOST_ADDRESS}:{variables['http_port']}/disklabel"
    assert f"URL to autopartitioning template for disklabel = {url}\n" in install_conf
    assert variables["http_directory"] == str(tmp_path / "http")


def _disklabel_grammar() -> tuple[re.Pattern, set[str], list[str]]:
    """disklabel(8)'s AUTOMATIC DISK ALLOCATION, read from the man page: a line pattern, the
    special tokens and the man page's own examples of sizes and shares."""
    text = (FIXTURES / "disklabel.8-automatic-disk-allocation").read_text()
    assert "Each line of input uses three fields to describe a partition." in text
    assert "There must not be whitespace before the first field," in text
    assert "fields are separated by whitespace and fields cannot contain whitespace." in text
    tokens = set(re.findall(r"^\.Sq ([A-Z]+)", text.split("special tokens", 1)[1].split(".Pp", 1)[0], re.M))
    examples = re.findall(r"\(e\.g\. ([^)]*)\)", text.replace("\n", " "))
    size = r"[0-9]+(\.[0-9]+)?[bckmgtBCKMGT]"
    line = re.compile(
        rf"(?P<mount>/\S*|{'|'.join(sorted(tokens))}) "  # a mount point or a special token
        rf"(?P<size>\*|{size}|{size}-({size}|\*))"  # '*', an exact size or a range
        r"( (?P<share>[0-9]{1,3})%?)?"  # a percentage from 0 (the default) to 100
    )
    return line, tokens, examples


def test_disk_layout_template_follows_disklabel_grammar(example_site, tmp_path):
    line, tokens, examples = _disklabel_grammar()
    assert tokens == {"RAID", "SWAP"}
    # The man page's examples: "1G", "1M-10G or 1G-*", "37%".
    sizes = [word for example in examples[:2] for word in example.split(" or ")]
    assert sizes == ["1G", "1M-10G", "1G-*"] and examples[2] == "37%"
    for example in sizes:
        assert line.fullmatch(f"/home {example} {examples[2]}"), example

    _prepare(_request(example_site, tmp_path), tmp_path)
    template = (tmp_path / "http/disklabel").read_text()
    assert template.endswith("\n") and "\n\n" not in template
    parsed = [line.fullmatch(text) for text in template.splitlines()]
    assert all(parsed), template
    assert [match["mount"] for match in parsed[:2]] == ["/", "SWAP"], "the installer takes a for / and b for swap"
    assert sum(int(match["share"]) for match in parsed) <= 100, "disklabel refuses shares above 100% in all"
    units = {"M": 1 << 20, "G": 1 << 30}
    for match in parsed:
        low, _, high = match["size"].partition("-")
        if high != "*":
            assert int(low[:-1]) * units[low[-1]] <= int(high[:-1]) * units[high[-1]], match[0]


def test_disk_too_small_for_the_queue_is_one_line_naming_the_setting():
    settings = example_settings()
    settings["images"] = {**settings["images"], "diskSize": "8G", "queueMessages": 100}
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    assert [str(problem) for problem in raised.value.problems] == [
        "mailsite:images.diskSize = 8G: too small for the partitions, which need 10184M with the boot area "
        "(/ 1G, swap 256M, /tmp 256M, /usr 2G, /usr/local 512M, /var 6024M, the queue's 5000M for queueMessages 100 "
        "at maxMessageSize 50M included); raise diskSize to 10G or lower images.queueMessages (or images.queueSpace)"
    ]
    settings["images"]["diskSize"] = "10G"
    assert load_site(settings).images.queue_space == "5000M"
    settings["images"]["queueSpace"] = "1G"
    explicit = load_site(settings).images
    assert explicit.queue_space == "1G" and explicit.disk_layout()[-1].min_bytes == 2 << 30


def test_cli_refuses_a_disk_too_small_for_the_queue(tmp_path):
    import sys

    from tests.sites import ROOT

    stack = tmp_path / "Pulumi.small.yaml"
    stack.write_text((ROOT / "Pulumi.example.yaml").read_text().replace("diskSize: 8G", "diskSize: 6G"))
    result = subprocess.run([sys.executable, "-m", "mailsite", "render", "--config", str(stack), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: mailsite:images.diskSize = 6G: too small for the partitions"), result.stderr
    assert "raise diskSize to 8G" in result.stderr


def test_identity_follows_the_disk_layout(example_site, tmp_path):
    base = identity_of(_request(example_site, tmp_path), "1.6.6")
    settings = example_settings()
    settings["images"] = {**settings["images"], "queueMessages": 41}
    bigger = site_of(settings)
    assert identity_of(_request(bigger, tmp_path), "1.6.6") != base, "another /var is another image"


def _fake_root(site, tmp_path) -> Path:
    """The host's tree unpacked as finish.sh unpacks the site set, under tmp_path/root."""
    root = tmp_path / "root"
    root.mkdir()
    archive = tmp_path / "site.tgz"
    archive.write_bytes(site_set(render_site(site)["mx2"]))
    subprocess.run(["tar", "-xzpf", str(archive), "-C", str(root)], check=True)
    # What a fresh OpenBSD has besides: the certificate directories.
    (root / "etc/ssl/private").mkdir(parents=True, mode=0o700)
    return root


# OpenBSD commands install.site calls, as stand-ins that log their arguments; rcctl also does what
# the real one does to rc.conf.local (rewrites it with its own lines).
_STUBS = {
    "rcctl": 'echo "rcctl $*" >> "$LOG"; for d in "$@"; do echo "${d}_flags=" >> /etc/rc.conf.local; done',
    "chown": 'echo "chown $*" >> "$LOG"',
    "crontab": 'echo "crontab $*" >> "$LOG"; [ "$1" = - ] && cat >> "$LOG.crontab"; exit 0',
    # Like the real one, it creates no directory: a missing one fails the command.
    "openssl": 'echo "openssl $*" >> "$LOG"; while [ $# -gt 0 ]; do case $1 in -keyout|-out) echo fake > "$2" || exit 1;; esac; shift; done',
}


def _run_install_site(root: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in _STUBS.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    script = ("mount --make-rprivate / && for d in etc root usr/local/sbin; do mkdir -p /$d; mount --bind \"$FAKE/$d\" /$d; done"
              " && sh \"$FAKE/install.site\"")
    return subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "FAKE": str(root), "LOG": str(tmp_path / "calls.log"), "PATH": f"{stubs}:{os.environ['PATH']}"})


def test_first_certificate_is_made_in_a_directory_the_system_lacks(tmp_path):
    settings = example_settings()
    settings["tls"] = {"certificate": "/etc/ssl/acme/{fqdn}.fullchain.pem", "key": "/etc/ssl/acme/private/{fqdn}.key"}
    root = _fake_root(site_of(settings), tmp_path)
    result = _run_install_site(root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (root / "etc/ssl/acme/mx2.example.org.fullchain.pem").is_file()
    key = root / "etc/ssl/acme/private/mx2.example.org.key"
    assert key.is_file() and key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o777 == 0o700, "the key's directory is private, as /etc/ssl/private is"


def test_first_certificate_never_overwrites_a_file_named_as_the_key(tmp_path):
    # A key path naming an existing file (a hostile or mistaken tls.key) must not be replaced
    # by a fresh private key: that file could be pf.conf. The model refuses such a tls.key (not
    # below a private directory); install.site is the second line of defence, so the value is
    # put past the model here.
    site = site_of(example_settings())
    site = site.model_copy(update={"tls": site.tls.model_copy(update={"certificate": "/etc/ssl/new.crt", "key": "/etc/pf.conf"})})
    root = _fake_root(site, tmp_path)
    pf_conf = (root / "etc/pf.conf").read_bytes()
    result = _run_install_site(root, tmp_path)
    assert result.returncode != 0 and "not writing a key over it" in result.stderr
    assert (root / "etc/pf.conf").read_bytes() == pf_conf


def test_install_site_leaves_the_rendered_rc_conf_local_as_it_is(example_site, tmp_path):
    root = _fake_root(example_site, tmp_path)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in _STUBS.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"
    rendered = (root / "etc/rc.conf.local").read_bytes()
    # A private mount namespace puts the fake root's /etc, /root and /usr/local/sbin where
    # install.site looks; nothing of this machine's own is touched.
    script = ("mount --make-rprivate / && for d in etc root usr/local/sbin; do mkdir -p /$d; mount --bind \"$FAKE/$d\" /$d; done"
              " && sh \"$FAKE/install.site\"")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                            env={**os.environ, "FAKE": str(root), "LOG": str(log), "PATH": f"{stubs}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    calls = log.read_text()
    assert "rcctl" not in calls, "rcctl rewrites rc.conf.local; its _flags lines already enable the daemons"
    assert (root / "etc/rc.conf.local").read_bytes() == rendered
    # It still does its other jobs.
    assert (tmp_path / "calls.log.crontab").read_text() == (root / "etc/mailsite/crontab").read_text()
    assert (root / "etc/mail/bgp-spamd.black").exists() and (root / "etc/ssl/mx2.example.org.crt").exists()
    assert "chown -R root:wheel /etc/mail /etc/mailsite /usr/local/sbin/bgp-spamd-update" in calls


def test_site_set_is_byte_identical_and_holds_tree_without_keys(example_site):
    tree = render_site(example_site)["mx2"]
    first, second = site_set(tree), site_set(dict(reversed(list(tree.items()))))
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as archive:
        members = {m.name.removeprefix("./"): m for m in archive.getmembers()}
        modes = {name: m.mode for name, m in members.items() if m.isfile()}
        owners = {(m.uid, m.gid, m.uname, m.gname) for m in members.values()}
        smtpd = archive.extractfile(members["etc/mail/smtpd.conf"]).read().decode()
    assert modes["etc/pf.conf"] == 0o600
    assert modes["etc/bgpd.conf"] == 0o600
    assert modes["install.site"] == 0o755
    assert modes["usr/local/sbin/bgp-spamd-update"] == 0o755
    assert modes["root/.ssh/authorized_keys"] == 0o600 and members["root"].mode == 0o700
    assert owners == {(0, 0, "root", "wheel")}
    assert smtpd == tree["etc/mail/smtpd.conf"].text
    assert "etc/mail/queue-key.conf" not in members and "etc/mail/spamd.key" not in members
    assert fake_key("mx2").encode() not in first


def test_bake_runs_packer_then_reuses_the_cached_image(example_site, tmp_path):
    request = _request(example_site, tmp_path)
    shown: list[str] = []
    # This process's work directories only: other tests may bake beside this one (pytest -n).
    ours = f"mailsite-bake-{os.getpid()}-*"
    before = set(Path("/tmp").glob(ours))
    baked = bake(request, progress=shown.append)
    assert not baked.cached and baked.path.is_file()
    assert any("Running local shell script" in line for line in shown), shown
    with tarfile.open(baked.path) as image:
        files = {m.name.removeprefix("./"): m for m in image.getmembers() if m.isfile()}
        queue_key_conf = image.extractfile(files["etc/mail/queue-key.conf"]).read().decode()
    assert files["etc/mail/queue-key.conf"].mode & 0o777 == 0o600
    assert files["etc/mail/spamd.key"].mode & 0o777 == 0o600
    assert f"queue encryption {fake_key('mx2')}" in queue_key_conf
    assert "etc/mail/smtpd.conf" in files and "install.site" in files

    again: list[str] = []
    cached = bake(request, progress=again.append)
    assert cached.cached and cached.path == baked.path and cached.identity == baked.identity
    assert again == [f"mx2: image {baked.identity[:12]} already baked, reused"], "packer must not run again"
    assert set(Path("/tmp").glob(ours)) <= before, "the private work directory must be gone"


def _key_forms(request: BakeRequest) -> list[str]:
    """Every form in which a key could leak: the keys, the key files, their base64."""
    texts = [rendered.text for rendered in request.tree.values() if rendered.secret]
    encoded = [base64.b64encode(text.encode()).decode() for text in texts]
    return [fake_key("mx2"), fake_key("spamd-sync"), *texts, *encoded]


def test_key_never_reaches_packer_output_or_our_log(example_site, tmp_path):
    request = _request(example_site, tmp_path)
    shown: list[str] = []
    bake(request, progress=shown.append)
    logs = list((tmp_path / "cache/logs").iterdir())
    text = "\n".join(shown) + "".join(log.read_text() for log in logs)
    assert text, "the bake must have said something"
    for secret in _key_forms(request):
        assert secret not in text


def test_keys_travel_as_a_0600_file_never_on_a_command_line_or_in_an_environment(example_site, tmp_path, monkeypatch):
    request = _request(example_site, tmp_path)
    variables = json.dumps(_prepare(request, tmp_path))
    assert not any(form in variables for form in _key_forms(request)), "no variable holds a key"
    report = tmp_path / "report"
    report.mkdir(mode=0o700)
    monkeypatch.setenv("MAILSITE_BAKE_REPORT", str(report))
    try:
        baked = bake(request, progress=lambda _: None)
        arrived_mode = (report / "key-archive-mode").read_text().strip()
        processes = (report / "processes").read_text()
    finally:
        shutil.rmtree(report)  # it holds this machine's environment
    with tarfile.open(baked.path) as image:
        names = set(image.getnames())
        spamd_key = image.getmember("./etc/mail/spamd.key")
    # packer's session, seen from inside the bake: packer itself and the provisioner's shell.
    assert re.search(r"^argv \S*packer build -machine-readable", processes, re.M), processes[:2000]
    assert re.search(r"^environ .*PACKER_BUILD_NAME=", processes, re.M)
    for form in _key_forms(request):
        assert form not in processes, "a key is in a process's argv or environment"
    assert arrived_mode == "600", "the key archive keeps 0600 on its way in"
    assert spamd_key.mode & 0o777 == 0o600 and spamd_key.uid == 0
    assert "./root/mailsite-keys.tar" not in names, "the archive is removed once unpacked"
    work = re.search(r"-var-file=(/tmp/mailsite-bake-[^/ ]+)/", processes)[1]
    assert not Path(work).exists(), "nor does the host keep it"


def test_key_archive_holds_only_the_key_files_at_0600(example_site):
    tree = render_site(example_site)["mx2"]
    with tarfile.open(fileobj=io.BytesIO(key_archive(tree))) as archive:
        members = {m.name.removeprefix("./"): m for m in archive.getmembers()}
    # A backup's DKIM key too (it signs its own mail): filter-dkimsign's alone, as the package's user.
    dkim_key = "etc/mail/dkim/example.org.mailsite20261126.key"
    assert sorted(members) == [dkim_key, "etc/mail/queue-key.conf", "etc/mail/spamd.key"]
    assert {(m.mode, m.uid, m.gid) for name, m in members.items() if name != dkim_key} == {(0o600, 0, 0)}
    assert (members[dkim_key].mode, members[dkim_key].uname) == (0o400, "_dkimsign")


def test_identity_follows_the_key_version_not_the_key(example_site, tmp_path):
    secrets = fake_secrets(example_site)
    request = _request(example_site, tmp_path, secrets=secrets)
    same_version_new_key = {**secrets, "mx2": replace(secrets["mx2"], queue_key=secrets["mx1"].queue_key)}
    new_version = {**secrets, "mx2": replace(secrets["mx2"], queue_key_version="v2")}
    base = identity_of(request, "1.6.6")
    assert identity_of(_request(example_site, tmp_path, secrets=same_version_new_key), "1.6.6") == base
    assert identity_of(_request(example_site, tmp_path, secrets=new_version), "1.6.6") != base
    assert identity_of(request, "1.11.2") != base, "another packer is another image"


def test_broken_template_is_a_clear_one_line_error_and_leaves_nothing(example_site, tmp_path):
    broken = tmp_path / "broken.pkr.hcl"
    broken.write_text(NULL_TEMPLATE.read_text().replace('communicator = "none"', 'communicator = "none"\n  nonsense = 1'))
    with pytest.raises(BakeError) as raised:
        bake(_request(example_site, tmp_path, template=broken), progress=lambda _: None)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("bake failed at the start (template or variables):"), message
    assert "nonsense" in message and "log: " in message
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["logs"]


def test_failing_step_is_named(example_site, tmp_path):
    failing = tmp_path / "failing.pkr.hcl"
    failing.write_text(NULL_TEMPLATE.read_text().replace('"umask 077",', '"echo unpacking failed >&2; exit 7",'))
    with pytest.raises(BakeError) as raised:
        bake(_request(example_site, tmp_path, template=failing), progress=lambda _: None)
    message = str(raised.value)
    assert message.startswith("bake failed at 'null.image: Running local shell script"), message
    assert ": null.image: unpacking failed; log: " in message, message


def test_missing_media_checksum_is_refused_before_packer(example_site, tmp_path):
    request = _request(example_site, tmp_path, template=PACKER_DIR / "openbsd.pkr.hcl")
    request = BakeRequest(request.host, request.tree, request.secrets, request.settings.model_copy(update={"iso_sha256": None}), "raw", request.template)
    with pytest.raises(BakeError, match="isoSha256 is not set"):
        bake(request, progress=lambda _: None)


def test_cli_bake_refuses_unknown_host_and_missing_checksum():
    import sys

    from tests.sites import ROOT

    run = lambda *a: subprocess.run([sys.executable, "-m", "mailsite", "bake", "--config", "Pulumi.example.yaml", *a],
                                    capture_output=True, text=True, cwd=ROOT)
    unknown = run("--host", "mx9")
    assert unknown.returncode == 2
    assert unknown.stderr == "error: --host = mx9: no such host; use one of mx1, mx2, mx3\n"
    subprocess.run([sys.executable, "-m", "mailsite", "secrets", "init", "--config", "Pulumi.example.yaml"], cwd=ROOT, check=True, capture_output=True)
    unset = run("--host", "mx2")
    assert unset.returncode == 2 and "isoSha256" in unset.stderr and len(unset.stderr.splitlines()) == 1


def test_packer_past_its_timeout_is_stopped_with_a_clear_error(tmp_path):
    from mailsite.images.packer import run_packer

    slow = tmp_path / "slow.pkr.hcl"
    slow.write_text('source "null" "slow" {\n  communicator = "none"\n}\n\nbuild {\n  sources = ["source.null.slow"]\n\n'
                    '  provisioner "shell-local" {\n    inline = ["sleep 60"]\n  }\n}\n')
    with pytest.raises(BakeError) as raised:
        run_packer([str(slow)], cwd=tmp_path, log_path=tmp_path / "log", timeout=3, secrets=[], progress=lambda _: None)
    assert str(raised.value).startswith("packer did not finish within 3 s (step: 'null.slow: Running local shell script")
    leftover = subprocess.run(["pgrep", "-f", "packer build -machine-readable -color=false " + str(slow)], capture_output=True)
    assert leftover.returncode == 1, "packer and its children are stopped"


# finish.sh on a stand-in for the freshly installed system: a chroot holding a pdksh shell (mksh,
# the nearest to OpenBSD's /bin/sh here) as /bin/sh, tar and gzip, and for the OpenBSD commands
# stand-ins that log their arguments (and fail when /fail-<name> exists).
_FINISH_STUBS = ("usermod", "pfctl", "smtpd", "bgpd", "httpd", "acme-client", "pkg_add", "pkg_info")


def _chroot_with(root: Path, programs: dict[str, str]) -> None:
    """Copies each program (chroot path: host path) with the shared libraries it loads."""
    for inside, outside in programs.items():
        libraries = re.findall(r"(/\S+) \(0x", subprocess.run(["ldd", outside], capture_output=True, text=True).stdout)
        for path in [outside, *libraries]:
            target = root / (inside if path == outside else path).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def _run_finish(tmp_path, site_tgz: bytes, keys_tar: bytes, fail: str | None = None):
    root = tmp_path / "guest"
    mksh = shutil.which("mksh")
    assert mksh, "mksh (Makefile DEBS) runs finish.sh as OpenBSD's ksh would"
    _chroot_with(root, {"/bin/sh": mksh, "/bin/tar": shutil.which("tar"), "/bin/gzip": shutil.which("gzip"),
                        "/bin/rm": shutil.which("rm"), "/bin/cat": shutil.which("cat")})
    for name in _FINISH_STUBS:
        stub = root / "bin" / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> /calls.log\n[ ! -e /fail-{name} ] || exit 3\n')
        stub.chmod(0o755)
    (root / "etc").mkdir()
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (root / "etc/myname").write_text("mx2.example.org\n")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "root").mkdir(mode=0o700)
    (root / "tmp/site.tgz").write_bytes(site_tgz)
    (root / "root/mailsite-keys.tar").write_bytes(keys_tar)
    (root / "root/mailsite-keys.tar").chmod(0o600)
    if fail:
        (root / f"fail-{fail}").touch()
    shutil.copy(PACKER_DIR / "finish.sh", root / "finish.sh")
    result = subprocess.run([shutil.which("chroot"), str(root), "/bin/sh", "/finish.sh"], capture_output=True, text=True,
                            env={"PATH": "/bin", "HOME": "/root"}, timeout=60)
    return root, result


def _install_site_set(install_site: str, tree) -> bytes:
    return site_set(tree, install_site=install_site.encode())


@pytest.mark.parametrize("failure", ["install.site", "key archive", "smtpd -n", "httpd -n", "acme-client -n"])
def test_key_archive_is_gone_from_the_guest_when_finish_fails(example_site, tmp_path, failure):
    tree = render_site(example_site)["mx2"]
    install_site = "#!/bin/sh\nexit 1\n" if failure == "install.site" else "#!/bin/sh\nexit 0\n"
    keys = b"not a tar archive" if failure == "key archive" else key_archive(tree)
    root, result = _run_finish(tmp_path, _install_site_set(install_site, tree), keys,
                               fail=failure.removesuffix(" -n") if failure.endswith(" -n") else None)
    assert result.returncode != 0, "a failed step fails the bake"
    assert not (root / "root/mailsite-keys.tar").exists(), f"after a failed {failure}, the key archive stays in the VM"


def test_finish_unpacks_the_site_set_and_keys_then_checks_with_the_real_parsers(example_site, tmp_path):
    tree = render_site(example_site)["mx2"]
    root, result = _run_finish(tmp_path, _install_site_set("#!/bin/sh\ntouch /install-site-ran 2>/dev/null || echo > /install-site-ran\n", tree),
                               key_archive(tree))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "etc/mail/smtpd.conf").read_text() == tree["etc/mail/smtpd.conf"].text
    assert (root / "etc/mail/spamd.key").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/mail/queue-key.conf").read_text() == tree["etc/mail/queue-key.conf"].text
    assert (root / "install-site-ran").exists() and not (root / "install.site").exists()
    assert not (root / "root/mailsite-keys.tar").exists() and not (root / "tmp/site.tgz").exists()
    # mx2's one package first (filter-dkimsign: it signs the backup's own mail).
    assert (root / "calls.log").read_text().splitlines() == ["pkg_add -I opensmtpd-filter-dkimsign-0.6",
                                                             "pkg_info -e opensmtpd-filter-dkimsign-0.6", "usermod -p * root", "pfctl -nf /etc/pf.conf", "smtpd -n", "bgpd -n",
                                                             "httpd -n", "acme-client -n mx2.example.org"]
    assert result.stdout.strip() == "mailsite: mx2.example.org checked by pfctl -nf, smtpd -n, bgpd -n, httpd -n, acme-client -n"


def _disklabel_allocate(template: str, disk_bytes: int) -> dict[str, int] | None:
    """What `disklabel -T template -A` gives an amd64 disk with a whole-disk MBR (OpenBSD area from
    sector 64 to the end), in bytes per mount point; None where disklabel fails. A line-for-line
    port of sbin/disklabel/editor.c rev 1.422 (2025/09/19): parse_autotable, parse_sizerange,
    apply_unit, allocate_space, allocate_partition, allocate_diskchunk, set_fragblock and
    alignpartition, for 512-byte sectors (DEV_BSIZE blocks are sectors)."""
    units = {"k": 2, "m": 2 << 10, "g": 2 << 20, "t": 2 << 30}  # sectors per unit

    def size(text: str) -> int:
        match = re.fullmatch(r"([0-9.]+)([kmgtKMGT])", text)
        assert match, f"disklabel refuses the size {text}"
        return int(float(match[1]) * units[match[2].lower()])

    table = []
    for line in template.splitlines():
        mount, sizes, *rest = line.split()
        assert mount.startswith("/") or mount.lower() in ("swap", "raid"), line
        low, _, high = sizes.partition("-")
        minimum, maximum = (0, 2**64 - 1) if sizes == "*" else (size(low), 2**64 - 1 if high == "*" else size(high) if high else size(low))
        rate = int(rest[0].removesuffix("%")) if rest else 0
        assert minimum <= maximum and 0 <= rate <= 100, line
        table.append([mount, minimum, maximum, rate])
    assert sum(row[3] for row in table) <= 100, "sum of extra space allocation > 100%"

    start, end = 64, disk_bytes // 512
    extra = end - start
    for row in table:
        if extra < row[1]:
            return None  # too few free blocks
        extra -= row[1]
    table[-1][3] = 100  # the last allocation is greedy
    layout, offset = {}, start
    for mount, minimum, maximum, rate in table:
        maximum = min(maximum, minimum + extra if rate == 100 else minimum + (extra // 100) * rate)
        stop = min(offset + maximum, end)
        if stop - offset < minimum:
            return None
        if mount.startswith("/"):  # set_fragblock: 16K blocks (32K above 128G), offset and size aligned
            align = (16384 if (stop - offset) * 512 <= 128 << 30 else 32768) // 512
            first = offset if offset == start else -(-offset // align) * align
            stop = min(stop // align * align, end // align * align)
            offset = first
        layout[mount.lower() if mount.lower() == "swap" else mount] = (stop - offset) * 512
        offset = stop
    return layout


@pytest.mark.parametrize("disk", ["8G", "20G", "50G"])
def test_var_gets_the_queue_space_from_the_real_allocation(example_site, tmp_path, disk):
    settings = example_settings()
    settings["images"] = {**settings["images"], "diskSize": disk}
    images = site_of(settings).images
    _prepare(_request(site_of(settings), tmp_path), tmp_path)
    layout = _disklabel_allocate((tmp_path / "http/disklabel").read_text(), int(disk[:-1]) << 30)
    assert layout is not None, f"disklabel -A refuses the template on a {disk} disk"
    for partition in images.disk_layout():
        name = partition.mount_point
        assert layout[name] >= partition.min_bytes, f"{name} is {layout[name] >> 20}M, below its {partition.min_bytes >> 20}M"
    queue = (1 << 30) + (2000 << 20)
    assert layout["/var"] >= queue
    # /var takes what the others leave once they reach their maximum: on 50G, all but 12G.
    others = sum(size for name, size in layout.items() if name != "/var")
    assert layout["/var"] >= (int(disk[:-1]) << 30) - others - (1 << 20)
    if disk == "50G":
        assert others == 12 << 30 and layout["/var"] > 37 << 30


def test_smallest_disk_the_model_accepts_is_one_disklabel_can_lay_out():
    from mailsite.images.disklabel import render_disklabel_template

    for messages in (1, 40, 100, 333):
        settings = example_settings()
        settings["images"] = {**settings["images"], "queueMessages": messages, "diskSize": "200G"}
        images = site_of(settings).images
        template = render_disklabel_template(images.disk_layout())
        smallest = next(mb for mb in range(1024, 200 << 10) if not images.model_copy(update={"disk_size": f"{mb}M"}).disk_shortfall())
        # Accepted by the model, laid out by disklabel; refused by both well below that.
        assert _disklabel_allocate(template, smallest << 20) is not None, (messages, smallest)
        assert _disklabel_allocate(template, (smallest - 65) << 20) is None, (messages, smallest)


_SLOW_BAKE = '''
import sys
from pathlib import Path
from mailsite.images.bake import bake
from tests.test_images import _request
from tests.sites import site_of, example_settings
tmp, template = Path(sys.argv[1]), Path(sys.argv[2])
bake(_request(site_of(example_settings()), tmp, template=template), progress=lambda line: print(line, flush=True))
'''


def _slow_template(tmp_path) -> Path:
    slow = tmp_path / "slow.pkr.hcl"
    slow.write_text(NULL_TEMPLATE.read_text().replace('"umask 077",', '"echo bake-is-running; sleep 120",'))
    return slow


def _start_slow_bake(tmp_path):
    import sys
    import time

    from tests.sites import ROOT

    slow = _slow_template(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", _SLOW_BAKE, str(tmp_path), str(slow)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:  # the third shell script is the one that sleeps
        line = process.stdout.readline()
        seen.append(line)
        if sum("Running local shell script" in line for line in seen) == 3:
            time.sleep(1)
            break
    else:
        process.kill()
        raise AssertionError("the slow bake never started: " + "".join(seen))
    work = next(Path("/tmp").glob(f"mailsite-bake-{process.pid}-*"))
    return process, slow, work


def _packer_running(template: Path) -> bool:
    return subprocess.run(["pgrep", "-f", f"packer build -machine-readable -color=false .*{template}"],
                          capture_output=True).returncode == 0


def _wait_until(condition, seconds: float = 30) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_packer_and_its_vm_stop_when_the_process_running_the_bake_is_killed(example_site, tmp_path):
    # What the Pulumi engine does to a provider at the end of a cancelled `up`: SIGKILL. packer runs
    # in a session of its own (so that it can be stopped whole); it must not outlive the bake.
    process, slow, _ = _start_slow_bake(tmp_path)
    try:
        assert _packer_running(slow)
        os.kill(process.pid, 9)
        process.wait(timeout=10)
        assert _wait_until(lambda: not _packer_running(slow)), "packer (and its VM) outlived the killed bake"
    finally:
        subprocess.run(["pkill", "-f", f"packer build -machine-readable -color=false .*{slow}"])


def test_sigterm_during_a_bake_stops_packer_and_removes_the_key_archive(example_site, tmp_path):
    process, slow, work = _start_slow_bake(tmp_path)
    try:
        assert (work / "keys.tar").exists()
        process.terminate()
        process.wait(timeout=60)
        assert not work.exists(), "the work directory with the key archive outlived a SIGTERM"
        assert _wait_until(lambda: not _packer_running(slow))
    finally:
        subprocess.run(["pkill", "-f", f"packer build -machine-readable -color=false .*{slow}"])
        shutil.rmtree(work, ignore_errors=True)


def test_next_bake_removes_the_key_archive_a_killed_bake_left(example_site, tmp_path):
    import tempfile

    dead = subprocess.Popen(["true"])
    dead.wait()
    # Made whole, then named as a dead bake's: a bake of another test worker sweeps such names at
    # any moment, and could take the directory before its archive was written into it.
    made = Path(tempfile.mkdtemp(prefix="mailsite-test-"))
    (made / "keys.tar").write_bytes(key_archive(render_site(example_site)["mx2"]))
    left = Path(tempfile.mkdtemp(prefix=f"mailsite-bake-{dead.pid}-"))
    os.rename(made, left)  # over the empty directory: one step
    alive = Path(tempfile.mkdtemp(prefix=f"mailsite-bake-{os.getpid()}-"))  # a bake under way here
    try:
        bake(_request(example_site, tmp_path), progress=lambda _: None)
        assert not left.exists(), "a dead bake's key archive stays in /tmp"
        assert alive.exists(), "a running bake's work directory is not touched"
    finally:
        shutil.rmtree(left, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)


def _autorespond(response_file: list[str], question: str, default: str) -> str:
    """install.sub's _autorespond: the first line whose key is in the question (lowercased, at
    word boundaries) answers it and is taken out of the file; else the default."""
    for index, line in enumerate(response_file):
        line = line.strip(" \t")
        if not re.fullmatch(r"[^#=].*=.+", line):
            continue
        key, value = line.split("=", 1)
        if _answers(key.rstrip(" \t"), question):
            del response_file[index]
            return value.lstrip(" \t")
    assert default, f"Question has no answer in response file: {question}"
    return default


@pytest.mark.parametrize("interface", ["vmx0", "vio0"])
def test_cd_autoinstall_walks_through_with_the_bakes_answers(example_site, tmp_path, interface):
    host = example_site.host("mx2").model_copy(update={"egress_interface": interface})
    request = _request(example_site, tmp_path)
    request = BakeRequest(host, request.tree, request.secrets, request.settings, "raw", request.template)
    variables = _prepare(request, tmp_path)
    response_file = (tmp_path / "http/install.conf").read_text().splitlines()
    transcript = (FIXTURES / "openbsd-cd-autoinstall-transcript.txt").read_text().replace("$_if", interface)
    answers = []
    for line in transcript.splitlines():
        if line and not line.startswith("#"):
            question, default = re.fullmatch(r"(.*) \[(.*)\]", line).groups()
            answers.append((question.split("?")[0], _autorespond(response_file, question, default)))
    given = dict(answers)
    assert [answer for question, answer in answers if question == "Network interface to configure"] == [interface, "done"]
    assert [answer for question, answer in answers if question == "Location of sets"] == ["cd0", "done"]
    assert [answer for question, answer in answers if question == "Set name(s)"] == ["-game* -x*", "done"]
    assert given["System hostname"] == "mx2" and given[f"IPv4 address for {interface}"] == "autoconf"
    assert given["Public ssh key for root account"].startswith("ssh-ed25519 ")
    assert given["Allow root ssh login"] == "prohibit-password" and given["Do you expect to run the X Window System"] == "no"
    assert given["Use (W)hole disk MBR, whole disk (G)PT or (E)dit"] == "whole"
    assert given["URL to autopartitioning template for disklabel"] == f"http://{QEMU_HOST_ADDRESS}:{variables['http_port']}/disklabel"
    # The CD's sets carry no SHA256.sig; packer has checked the CD's SHA256 before booting it.
    assert given["Directory does not contain SHA256.sig. Continue without verification"] == "yes", \
        "the installer stops before installing a single set"
    leftover = [line for line in response_file if re.fullmatch(r"[^#=].*=.+", line.strip())]
    assert leftover == [], f"lines the installer never asks for: {leftover}"


@pytest.mark.parametrize("interface,nic", [("vio0", "virtio-net"), ("vmx0", "vmxnet3"), ("em0", "e1000"), ("re1", "rtl8139")])
def test_bake_vm_gets_the_nic_openbsd_names_as_the_host_interface(example_site, tmp_path, interface, nic):
    host = example_site.host("mx2").model_copy(update={"egress_interface": interface})
    request = _request(example_site, tmp_path)
    request = BakeRequest(host, request.tree, request.secrets, request.settings, "raw", request.template)
    assert _prepare(request, tmp_path)["nic_model"] == nic


def test_interface_no_qemu_nic_provides_is_refused_before_packer(example_site, tmp_path):
    host = example_site.host("mx2").model_copy(update={"egress_interface": "xl0"})
    request = _request(example_site, tmp_path)
    request = BakeRequest(host, request.tree, request.secrets, request.settings, "raw", request.template)
    with pytest.raises(BakeError) as raised:
        bake(request, progress=lambda _: None)
    message = str(raised.value)
    assert message.startswith("mailsite:hosts[mx2].egressInterface = xl0: the bake's qemu has no NIC"), message
    assert "vio0 (virtio-net)" in message and "\n" not in message
    assert not (tmp_path / "cache").exists(), "nothing baked, nothing cached"
