"""What a change does to each host, for reviewers: rendered files side by side, keys redacted,
and which hosts' images (so which VMs) `pulumi up` would replace.

The base is rendered by the base's own code (a git worktree), so a change to a template shows
as well as a change to the stack file.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .images.bake import BakeRequest, identity_of
from .local import render_stack
from .problems import Problem, SiteConfigError
from .trees import _file, write_tree


def redacted_snapshot(config: Path, out: Path, secrets_base: Path | None = None) -> None:
    """Render `config` with every key replaced by <redacted> into out/<host>/..., plus each host's
    image identity in out/identities.json. Key versions come from the backend when it answers.
    `out` is new or empty, and written as render writes (no file replaced, no link followed): a
    link planted in it would otherwise send the files anywhere."""
    if out.is_symlink() or out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SiteConfigError([Problem("--out", str(out), "exists and is not an empty directory; give a new one")])
    site, trees, secrets = render_stack(config, redacted=True, secrets_base=secrets_base)
    out.mkdir(parents=True, exist_ok=True)
    identities = {}
    for name, tree in trees.items():
        identities[name] = identity_of(BakeRequest(site.host(name), tree, secrets[name], site.images, site.image_format))
        write_tree(out / name, tree)
    _file(out / "identities.json", json.dumps(identities, indent=1, sort_keys=True) + "\n", 0o644)


def _snapshot_at(repo: Path, ref: str, config: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mailsite-base-") as scratch:
        worktree = Path(scratch) / "base"
        # Resolved first, after --end-of-options: a ref that looks like an option stays a ref.
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
                                capture_output=True, text=True).stdout.strip()
        added = subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(worktree), commit], capture_output=True, text=True)
        if not commit or added.returncode != 0:
            raise SiteConfigError([Problem("--base", ref, f"not a git ref of {repo}; give a branch, tag or commit")])
        try:
            try:
                relative = config.resolve().relative_to(repo.resolve())
            except ValueError:
                raise SiteConfigError([Problem("--config", str(config), f"is outside the repository {repo}; give a stack file in it")]) from None
            if not (worktree / relative).exists():
                raise SiteConfigError([Problem("--config", str(relative), f"does not exist at {ref}; nothing to compare with")])
            # Keys live outside git: the base reads the same backend, relative to this checkout.
            result = subprocess.run([sys.executable, "-m", "mailsite", "snapshot", "--config", str(relative), "--out", str(out),
                                     "--secrets-base", str(config.resolve().parent)],
                                    cwd=worktree, capture_output=True, text=True)
            if result.returncode != 0:
                reason = (result.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("error: ")
                if "invalid choice: 'snapshot'" in reason or "unrecognized arguments: --secrets-base" in reason:
                    reason = "it predates `mailsite diff`; compare with a later ref"
                raise SiteConfigError([Problem("--base", ref, f"cannot render the site there: {reason}")])
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)], capture_output=True)


def _files(root: Path, host: str) -> dict[str, str]:
    base = root / host
    return {str(p.relative_to(base)): p.read_text() for p in sorted(base.rglob("*")) if p.is_file()} if base.is_dir() else {}


def site_diff(config: Path, base: str) -> str:
    found = subprocess.run(["git", "-C", str(config.resolve().parent), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if found.returncode != 0 or not found.stdout.strip():
        raise SiteConfigError([Problem("--config", str(config), "is not inside a git repository; diff compares a stack file "
                                       "with its own repository's --base, so give one that is")])
    repo = Path(found.stdout.strip())
    with tempfile.TemporaryDirectory(prefix="mailsite-diff-") as scratch:
        before, after = Path(scratch) / "before", Path(scratch) / "after"
        _snapshot_at(repo, base, config, before)
        redacted_snapshot(config, after)
        old_ids = json.loads((before / "identities.json").read_text())
        new_ids = json.loads((after / "identities.json").read_text())
        lines: list[str] = []
        for host in sorted(set(old_ids) | set(new_ids)):
            old, new = _files(before, host), _files(after, host)
            for path in sorted(set(old) | set(new)):
                if old.get(path) != new.get(path):
                    lines += difflib.unified_diff(
                        old.get(path, "").splitlines(keepends=True), new.get(path, "").splitlines(keepends=True),
                        f"{base}:{host}/{path}", f"working tree:{host}/{path}",
                    )
        replaced = [h for h in sorted(new_ids) if old_ids.get(h) != new_ids[h]]
        removed = [h for h in sorted(old_ids) if h not in new_ids]
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        summary = f"hosts pulumi up will replace (new image): {', '.join(replaced) or 'none'}\n"
        if removed:
            summary += f"hosts pulumi up will destroy: {', '.join(removed)}\n"
        return (text or "no rendered file changes\n") + summary
