"""An image's identity: what it is made of, hashed. Same identity, same image: no rebake."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..templates import HostTree

PACKER_DIR = Path(__file__).resolve().parents[2] / "images" / "packer"
# Every file of the template that shapes an image; plugins.pkr.hcl only tells Packer where the
# qemu plugin comes from.
TEMPLATE_FILES = ("openbsd.pkr.hcl", "finish.sh", "install.site", "install.conf.j2")


def template_digest(directory: Path = PACKER_DIR, files: tuple[str, ...] = TEMPLATE_FILES) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (directory / name).read_bytes() + b"\0")
    return digest.hexdigest()


def image_identity(
    tree: HostTree,
    *,
    key_versions: dict[str, str],
    template: str,
    packer_version: str,
    openbsd_version: str,
    media_sha256: str,
    image_format: str,
    nic_model: str,
    disk_size: str,
    disklabel_template: str,
) -> str:
    """A hash of everything an image is made of. Key files count by their version, never their
    contents, so the identity can be shown, stored and compared in the clear."""
    files = {path: [rendered.mode, hashlib.sha256(rendered.text.encode()).hexdigest()] for path, rendered in tree.items() if not rendered.secret}
    document = {
        "files": files,
        "keys": dict(sorted(key_versions.items())),
        "template": template,
        "packer": packer_version,
        "openbsd": openbsd_version,
        "media": media_sha256,
        "format": image_format,
        "nic": nic_model,
        "disk": disk_size,
        "partitions": disklabel_template,
    }
    # A file handed to a daemon's user is another image; trees with root's files alone keep the
    # identity they had before files had owners.
    if owners := {path: rendered.owner for path, rendered in tree.items() if rendered.owner != "root"}:
        document["owners"] = owners
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
