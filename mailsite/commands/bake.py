"""bake: each host's OpenBSD image, with packer, cached by its content's identity."""

from __future__ import annotations

import argparse

from ..config import load_site_file
from ..images.bake import BakeRequest, bake
from ..local import render_stack
from ..problems import Problem, SiteConfigError, few
from .options import Parents


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser("bake", parents=[parents.config], help="bake hosts' OpenBSD images with packer (cached by content)")
    command.add_argument("--host", action="append", help="a host to bake (repeat; default: every host)")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    site = load_site_file(args.config)
    names = args.host or [host.name for host in site.hosts]
    unknown = [name for name in names if name not in {host.name for host in site.hosts}]
    if unknown:
        raise SiteConfigError([Problem("--host", name, f"no such host; use one of {few([h.name for h in site.hosts])}") for name in unknown])
    if site.images.iso_sha256 is None:
        # Without it packer cannot verify the install media it downloads: a setting to fix, not a failed bake.
        raise SiteConfigError([Problem("mailsite:images.isoSha256", "(absent)",
                                       "required to bake; copy the install media's line from the release's SHA256 file")])
    _, trees, secrets = render_stack(args.config)
    for name in names:
        baked = bake(BakeRequest(site.host(name), trees[name], secrets[name], site.images, site.image_format))
        print(f"{name}: {baked.path} (identity {baked.identity})")
    return 0
