"""Baking one host's image: content-addressed, secrets through a private var-file, nothing
half-made left behind."""

from __future__ import annotations

import json
import os
import secrets as random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import jinja2

from ..model import NIC_DRIVERS, Host, HostSecrets, Images
from ..templates import HostTree
from .disklabel import render_disklabel_template
from .identity import PACKER_DIR, TEMPLATE_FILES, image_identity, template_digest
from .packer import BakeError, packer_version, redact, run_packer
from .siteset import key_archive, site_set

TEMPLATE = PACKER_DIR / "openbsd.pkr.hcl"
# The host as the guest sees it on qemu's user-mode network; Packer's {{ .HTTPIP }} for qemu.
QEMU_HOST_ADDRESS = "10.0.2.2"


@dataclass(frozen=True)
class BakeRequest:
    host: Host
    tree: HostTree
    secrets: HostSecrets
    settings: Images
    image_format: str  # raw (Vultr) or qcow2 (libvirt)
    template: Path = TEMPLATE


@dataclass(frozen=True)
class BakedImage:
    identity: str
    path: Path
    cached: bool  # True when no packer ran


# OpenBSD's driver name (the interface without its number) -> the qemu NIC it drives: the
# model's, whose egressInterface takes only these.
QEMU_NICS = NIC_DRIVERS


def nic_model(host: Host) -> str | None:
    """The NIC qemu gives the bake: the one the host runs with, so that the installer, pf and the
    hostname.if file see the interface the configs name. None: no qemu NIC gets that name."""
    return QEMU_NICS.get(host.egress_interface.rstrip("0123456789"))


def _nic_or_refuse(host: Host) -> str:
    model = nic_model(host)
    if model is None:
        # Without it the installer is asked for an interface the VM lacks, and the bake waits
        # out ssh_timeout (an hour) for a VM that never comes up.
        known = ", ".join(f"{driver}0 ({nic})" for driver, nic in QEMU_NICS.items())
        raise BakeError(f"mailsite:hosts[{host.name}].egressInterface = {host.egress_interface}: the bake's qemu has "
                        f"no NIC that OpenBSD names so; use the interface the host runs with, one of {known}")
    return model


def accelerator() -> str:
    return "kvm" if os.access("/dev/kvm", os.W_OK) else "tcg"


def key_versions(secrets: HostSecrets) -> dict[str, str]:
    """The secrets an image carries, by version. The password hashes count only where there are
    some (the primary, once a password is set): a new password replaces the primary alone, and
    images made before passwords existed keep their identity."""
    versions = {"queue-key": secrets.queue_key_version, "spamd-sync-key": secrets.spamd_sync_key_version}
    if secrets.password_hashes_version != HostSecrets.password_hashes_version:
        versions["password-hashes"] = secrets.password_hashes_version
    # Likewise the DKIM signing keys: on the primary, counted by which key signs (a key only
    # published or withdrawn during a rotation changes DNS, not the image).
    if secrets.dkim_keys:
        versions["dkim-keys"] = secrets.dkim_keys_version
    return versions


def identity_of(request: BakeRequest, version: str | None = None) -> str:
    settings = request.settings
    return image_identity(
        request.tree,
        key_versions=key_versions(request.secrets),
        template=template_digest(request.template.parent, tuple(_template_files(request.template))),
        packer_version=version or packer_version(),
        openbsd_version=settings.openbsd_version,
        media_sha256=settings.iso_sha256 or "",
        image_format=request.image_format,
        nic_model=nic_model(request.host) or request.host.egress_interface,
        disk_size=settings.disk_size,
        disklabel_template=render_disklabel_template(settings.disk_layout()),
    )


def _template_files(template: Path) -> list[str]:
    return [template.name] + [n for n in TEMPLATE_FILES[1:] if (template.parent / n).exists()]


def cache_root(settings: Images) -> Path:
    return Path(os.path.expanduser(settings.cache_dir))


def cached_image(request: BakeRequest, identity: str) -> Path | None:
    path = cache_root(request.settings) / identity / f"image.{request.image_format}"
    return path if path.is_file() else None


def bake(request: BakeRequest, progress: Callable[[str], None] = print) -> BakedImage:
    """The host's image: from the cache when its identity is there, else baked by packer."""
    settings = request.settings
    if settings.iso_sha256 is None and request.template == TEMPLATE:
        raise BakeError("mailsite:images.isoSha256 is not set; copy the install media's SHA256 from its SHA256 file")
    _nic_or_refuse(request.host)
    _remove_dead_bakes()
    identity = identity_of(request)
    hit = cached_image(request, identity)
    if hit:
        progress(f"{request.host.name}: image {identity[:12]} already baked, reused")
        return BakedImage(identity, hit, cached=True)
    with _terminated_as_exit():
        return _bake(request, identity, progress)


def _bake(request: BakeRequest, identity: str, progress: Callable[[str], None]) -> BakedImage:
    settings = request.settings
    root = cache_root(settings)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)  # images hold keys
    log_path = root / "logs" / f"{request.host.name}-{identity[:12]}.log"
    keys = [request.secrets.queue_key.get_secret_value(), request.secrets.spamd_sync_key.get_secret_value(),
            *(hashed.get_secret_value() for hashed in request.secrets.password_hashes.values()),
            *(key.private_key.get_secret_value() for key in request.secrets.dkim_keys)]
    hidden = keys + [rendered.text for rendered in request.tree.values() if rendered.secret]
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))  # mode 0700 by mkdtemp
    try:
        variables = _prepare(request, work)
        var_file = work / "bake.pkrvars.json"
        descriptor = os.open(var_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(variables, handle)
        progress(f"{request.host.name}: baking image {identity[:12]} (log: {log_path})")
        run_packer(
            [f"-var-file={var_file}", str(request.template)],
            cwd=work,
            log_path=log_path,
            timeout=settings.timeout_minutes * 60,
            secrets=hidden,
            progress=lambda step: progress(f"{request.host.name}: {redact(step, hidden)}"),
        )
        artifact = work / "output" / request.host.name
        if not artifact.is_file():
            raise BakeError(f"packer finished but left no image at {artifact.name}; log: {log_path}")
        final = root / identity
        staging = root / f".partial-{identity}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        shutil.move(str(artifact), staging / f"image.{request.image_format}")
        os.chmod(staging / f"image.{request.image_format}", 0o600)
        (staging / "bake.json").write_text(json.dumps({"host": request.host.name, "identity": identity}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        return BakedImage(identity, final / f"image.{request.image_format}", cached=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root / f".partial-{identity}", ignore_errors=True)


# A bake's private work directory (site set, key archive): /tmp/mailsite-bake-<pid>-<random>.
WORK_PREFIX = "mailsite-bake-"


def _remove_dead_bakes() -> None:
    """A bake killed outright (SIGKILL: the Pulumi engine ending a provider) cannot remove its work
    directory, and the key archive in it would stay. The next bake removes those whose process is
    gone; a directory of a live process (or of another user) is left alone."""
    for work in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*-*"):
        pid = work.name.removeprefix(WORK_PREFIX).split("-", 1)[0]
        try:
            if not pid.isdigit() or work.is_symlink() or work.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(work, ignore_errors=True)
        except OSError:
            continue


@contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM (a CI job cancelled, `kill`) ends Python without running `finally`: the work directory
    and its key archive would stay. In the main thread, it raises SystemExit instead, so packer is
    stopped and the directory removed as after Ctrl-C. (A provider's worker thread relies on
    _remove_dead_bakes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _private_file(path: Path, data: bytes) -> Path:
    """Written mode 0600 from its first byte, whatever the umask."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
    return path


def _free_port() -> int:
    # Packer picks the HTTP port at random, but install.conf, written before packer starts, must
    # name the disklabel template's URL: a port free now, given to packer as its only choice.
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _prepare(request: BakeRequest, work: Path) -> dict[str, str]:
    """The bake's private inputs in `work`: site set, key archive, install.conf and disklabel
    template, throwaway ssh key, variables. Nothing secret goes into a variable: packer passes
    variables on to command lines and environments; the keys travel as a file, by packer's own
    file transfer, and keep their 0600 from here to the image."""
    settings = request.settings
    site_set_path = _private_file(work / f"site{settings.set_suffix}.tgz", site_set(request.tree))
    keys_path = _private_file(work / "keys.tar", key_archive(request.tree))
    http = work / "http"
    http.mkdir()
    key = work / "bake_ed25519"
    result = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailsite-bake", "-f", str(key)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise BakeError(f"ssh-keygen failed: {result.stderr.strip()}")
    port = _free_port()
    install_conf = jinja2.Template((PACKER_DIR / "install.conf.j2").read_text(), keep_trailing_newline=True).render(
        hostname=request.host.name,
        interface=request.host.egress_interface,
        # Only for the bake's console; finish.sh locks it and root logs in with keys only.
        root_password_hash=random.token_urlsafe(24),
        bake_ssh_public_key=(work / "bake_ed25519.pub").read_text().strip(),
        disklabel_url=f"http://{QEMU_HOST_ADDRESS}:{port}/disklabel",
    )
    (http / "install.conf").write_text(install_conf)
    (http / "disklabel").write_text(render_disklabel_template(settings.disk_layout()))
    return {
        "iso_url": settings.iso_url,
        "iso_checksum": f"sha256:{settings.iso_sha256}",
        "output_directory": str(work / "output"),
        "vm_name": request.host.name,
        "format": request.image_format,
        "accelerator": accelerator(),
        "nic_model": _nic_or_refuse(request.host),
        "disk_size": settings.disk_size,
        "http_directory": str(http),
        "http_port": str(port),
        "ssh_private_key_file": str(key),
        "site_set": str(site_set_path),
        "key_archive": str(keys_path),
    }
