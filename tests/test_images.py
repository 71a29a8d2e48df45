"""The image builder: the real template passes packer, and a real `packer build` (null builder, no
VM) goes through the same wrapper: progress, errors, caching, keys kept out of every output."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from mailsite.images.bake import BakeRequest, _prepare, bake, identity_of
from mailsite.images.identity import PACKER_DIR
from mailsite.images.packer import BakeError
from mailsite.images.siteset import secret_files, site_set
from tests.sites import fake_key, fake_secrets
from tests.test_render import render_site

NULL_TEMPLATE = Path(__file__).parent / "fixtures/packer/null.pkr.hcl"


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
    var_file.write_text(json.dumps(_prepare(request, work, secret_files(request.tree))))
    result = subprocess.run(["packer", "validate", f"-var-file={var_file}", str(PACKER_DIR / "openbsd.pkr.hcl")],
                            capture_output=True, text=True, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    install_conf = (work / "http/install.conf").read_text()
    assert "Which network interface do you wish to configure = vmx0" in install_conf
    assert "Allow root ssh login = prohibit-password" in install_conf


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
    baked = bake(request, progress=shown.append)
    assert not baked.cached and baked.path.is_file()
    assert any("Running local shell script" in line for line in shown), shown
    with tarfile.open(baked.path) as image:
        files = {m.name.removeprefix("./"): m for m in image.getmembers() if m.isfile()}
        queue_key_conf = image.extractfile(files["etc/mail/queue-key.conf"]).read().decode()
    assert files["etc/mail/queue-key.conf"].mode & 0o777 == 0o600
    assert f"queue encryption {fake_key('mx2')}" in queue_key_conf
    assert "etc/mail/smtpd.conf" in files and "install.site" in files

    again: list[str] = []
    cached = bake(request, progress=again.append)
    assert cached.cached and cached.path == baked.path and cached.identity == baked.identity
    assert again == [f"mx2: image {baked.identity[:12]} already baked, reused"], "packer must not run again"
    assert not list(Path("/tmp").glob("mailsite-bake-*")), "the private work directory must be gone"


def test_key_never_reaches_packer_output_or_our_log(example_site, tmp_path):
    request = _request(example_site, tmp_path)
    shown: list[str] = []
    bake(request, progress=shown.append)
    logs = list((tmp_path / "cache/logs").iterdir())
    text = "\n".join(shown) + "".join(log.read_text() for log in logs)
    assert text, "the bake must have said something"
    for secret in (fake_key("mx2"), fake_key("spamd-sync"), secret_files(request.tree).split()[2]):
        assert secret not in text


def test_identity_follows_the_key_version_not_the_key(example_site, tmp_path):
    secrets = fake_secrets(example_site)
    request = _request(example_site, tmp_path, secrets=secrets)
    same_version_new_key = {**secrets, "mx2": secrets["mx2"].__class__(secrets["mx1"].queue_key, secrets["mx2"].queue_key_version, secrets["mx2"].spamd_sync_key, "test-sync")}
    new_version = {**secrets, "mx2": secrets["mx2"].__class__(secrets["mx2"].queue_key, "v2", secrets["mx2"].spamd_sync_key, "test-sync")}
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
    assert unset.returncode == 1 and "isoSha256 is not set" in unset.stderr and len(unset.stderr.splitlines()) == 1


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
