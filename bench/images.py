"""Image builder figures: the cache-hit path of a bake and the site set build, for the example site."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailsite.images.bake import BakeRequest, bake  # noqa: E402
from mailsite.images.siteset import site_set  # noqa: E402
from tests.sites import example_settings, site_of  # noqa: E402
from tests.test_images import NULL_TEMPLATE  # noqa: E402
from tests.test_render import render_site  # noqa: E402
from tests.sites import fake_secrets  # noqa: E402

ROUNDS = 200


def main() -> None:
    site = site_of(example_settings())
    trees = render_site(site)
    secrets = fake_secrets(site)
    start = time.perf_counter()
    for _ in range(ROUNDS):
        for tree in trees.values():
            site_set(tree)
    per_set = (time.perf_counter() - start) / (ROUNDS * len(trees))
    print(f"site set build: {per_set * 1000:.2f} ms per host ({len(trees)} hosts x {ROUNDS} rounds)")

    with tempfile.TemporaryDirectory() as cache:
        settings = site.images.model_copy(update={"cache_dir": cache, "iso_sha256": "0" * 64})
        requests = [BakeRequest(site.host(h), trees[h], secrets[h], settings, "raw", NULL_TEMPLATE) for h in trees]
        start = time.perf_counter()
        for request in requests:
            bake(request, progress=lambda _: None)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(ROUNDS):
            for request in requests:
                assert bake(request, progress=lambda _: None).cached
        hit = (time.perf_counter() - start) / (ROUNDS * len(requests))
    print(f"bake, first time (packer null builder, no VM): {first:.2f} s for {len(requests)} hosts")
    print(f"bake, cache hit (no packer): {hit * 1000:.2f} ms per host")


if __name__ == "__main__":
    main()
