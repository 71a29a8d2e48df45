"""The site set: siteXX.tgz with a host's rendered tree and install.site, byte for byte the same
for the same inputs (sorted entries, fixed times and owners), so that it can be compared and cached."""

from __future__ import annotations

import gzip
import io
import tarfile

from ..templates import HostTree
from .identity import PACKER_DIR

# The OpenBSD installer's own sets carry a time; 2000-01-01 says "not a real date" and keeps
# the archive the same from bake to bake.
FIXED_MTIME = 946684800


def _directories(paths: list[str]) -> list[str]:
    found = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            found.add("/".join(parts[:depth]))
    return sorted(found)


def _info(name: str, mode: int, size: int = 0, directory: bool = False, owner: str = "root") -> tarfile.TarInfo:
    info = tarfile.TarInfo("./" + name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = mode
    info.size = size
    info.mtime = FIXED_MTIME
    # OpenBSD's tar gives a file to the user and group its archive names when they exist
    # (pax's tar.c: uid_from_user before the number): a package's user (_dovecot) by name, as its
    # uid is the package's to choose. finish.sh installs the packages before it unpacks either
    # archive, so their users exist by then.
    info.uid = info.gid = 0
    info.uname, info.gname = owner, "wheel" if owner == "root" else owner
    return info


def site_set(tree: HostTree, install_site: bytes | None = None) -> bytes:
    """The archive of every file a host carries but its keys (they travel apart, see bake)."""
    files = {path: (rendered.text.encode(), rendered.mode, rendered.owner) for path, rendered in tree.items() if not rendered.secret}
    files["install.site"] = (install_site if install_site is not None else (PACKER_DIR / "install.site").read_bytes(), 0o755, "root")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        # The key files' directories too: the key archive, unpacked under umask 077, would make a
        # missing one root's 0700, and a daemon that owns its key (rspamd's DKIM keys) never reaches it.
        for directory in _directories([*files, *tree]):
            # root/ stays private, as OpenBSD ships it.
            archive.addfile(_info(directory, 0o700 if directory.startswith("root") else 0o755, directory=True))
        for path in sorted(files):
            data, mode, owner = files[path]
            archive.addfile(_info(path, mode, len(data), owner=owner), io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def key_archive(tree: HostTree) -> bytes:
    """The key files alone, as an uncompressed tar with their paths, owners and 0600 modes:
    packer copies it into the VM as a file and finish.sh unpacks it over /, so no key is ever an
    argument or an environment variable of a process."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for path, rendered in sorted(tree.items()):
            if rendered.secret:
                data = rendered.text.encode()
                archive.addfile(_info(path, rendered.mode, len(data), owner=rendered.owner), io.BytesIO(data))
    return raw.getvalue()
