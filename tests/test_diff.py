"""`mailsite diff`: two refs of a test repository, the changed lines of the changed hosts only,
no secret, and the hosts whose images (so VMs) `pulumi up` would replace."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import yaml

from tests.sites import ROOT, example_settings


def file_secrets(settings: dict) -> dict:
    """The stack's keys in a file backend inside the repository's checkout (never committed)."""
    settings["secrets"] = {"backend": "file", "path": ".mailsite/secrets"}
    return settings


def _keys(repo) -> list[str]:
    return [path.read_text().strip() for path in (repo / ".mailsite/secrets").rglob("versions/*")]

# .gitignore too: it keeps the file backend's keys (.mailsite/) out of git, as in a real checkout.
PROJECT = ["mailsite", "configs", "images", "Pulumi.yaml", ".gitignore"]


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@example.org", "PATH": "/usr/bin:/bin"})


def _stack(repo, settings):
    (repo / "Pulumi.review.yaml").write_text(yaml.safe_dump({"config": {f"mailsite:{k}": v for k, v in settings.items()}}))


def _diff(repo, base="HEAD"):
    return subprocess.run([sys.executable, "-m", "mailsite", "diff", "--config", "Pulumi.review.yaml", f"--base={base}"],
                          cwd=repo, capture_output=True, text=True)


def _repository(tmp_path, settings):
    """A git repository holding this project's code and a stack file, committed once."""
    repo = tmp_path / "site"
    repo.mkdir()
    for name in PROJECT:
        source = ROOT / name
        (shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__")) if source.is_dir()
         else shutil.copy(source, repo / name))
    _stack(repo, settings)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "site")
    subprocess.run([sys.executable, "-m", "mailsite", "secrets", "init", "--config", "Pulumi.review.yaml"], cwd=repo, check=True,
                   capture_output=True)
    return repo


def test_diff_shows_changed_lines_of_changed_hosts_and_replacements(tmp_path):
    settings = file_secrets(example_settings())
    repo = _repository(tmp_path, settings)

    settings["hosts"][2]["preference"] = 40
    _stack(repo, settings)
    result = _diff(repo)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    changed_files = sorted(line.split(":", 1)[1] for line in out.splitlines() if line.startswith("+++ "))
    assert changed_files == ["mx3/etc/mail/smtpd.conf", "mx3/etc/pf.conf"]
    removed = [line for line in out.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in out.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert removed == ["-# smtpd.conf for mx3.example.org (backup MX, preference 30).",
                       "-# its own (30), so mail moves up toward the primary and never loops between backups.",
                       "-# pf.conf for mx3.example.org (backup MX, preference 30)."]
    assert added == [line.replace("30", "40").replace("-", "+", 1) for line in removed]
    assert out.endswith("hosts pulumi up will replace (new image): mx3\n")
    keys = _keys(repo)
    assert len(keys) == 6 and not any(key in out for key in keys)
    # The two domains' DKIM secrets are JSON: no line of a private key shows either.
    pems = [selector["privateKey"] for key in keys if key.startswith("{") for selector in json.loads(key)["selectors"]]
    assert len(pems) == 2 and not any(line in out for pem in pems for line in pem.splitlines()[1:-1])

    _git(repo, "commit", "-q", "-am", "mx3 to 40")
    unchanged = _diff(repo)
    assert unchanged.stdout == "no rendered file changes\nhosts pulumi up will replace (new image): none\n"


def test_template_change_at_head_shows_on_every_host(tmp_path):
    repo = _repository(tmp_path, file_secrets(example_settings()))
    bgpd = repo / "configs/bgpd/bgpd.conf.j2"
    bgpd.write_text(bgpd.read_text().replace("fib-update no\n", "fib-update no\nlog updates\n"))
    out = _diff(repo).stdout
    assert sorted(line.split(":", 1)[1] for line in out.splitlines() if line.startswith("+++ ")) == [f"mx{n}/etc/bgpd.conf" for n in (1, 2, 3)]
    assert out.count("\n+log updates\n") == 3
    assert out.endswith("hosts pulumi up will replace (new image): mx1, mx2, mx3\n")


def test_unknown_ref_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mailsite", "diff", "--config", "Pulumi.example.yaml", "--base", "no-such-ref"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --base = no-such-ref: not a git ref of") and len(result.stderr.splitlines()) == 1


def test_alias_bomb_in_a_pull_request_is_one_line_at_once(tmp_path):
    """The PR job runs `diff` on whatever stack file a pull request brings."""
    import resource

    repo = _repository(tmp_path, file_secrets(example_settings()))
    lines = ["config:", "  mailsite:recipients:", '    a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"    a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
    (repo / "Pulumi.review.yaml").write_text("\n".join(lines) + "\n")
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # noqa: E731 (it took 3.6 GB before)
    result = subprocess.run([sys.executable, "-m", "mailsite", "diff", "--config", "Pulumi.review.yaml", "--base", "HEAD"],
                            cwd=repo, capture_output=True, text=True, timeout=60, preexec_fn=limit)
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.splitlines() == ["error: --config = Pulumi.review.yaml: expands to more than 200000 values "
                                          "(aliases repeat what they name); write the settings out plainly"]


def test_a_base_that_looks_like_an_option_is_a_ref_not_an_option(tmp_path):
    repo = _repository(tmp_path, file_secrets(example_settings()))
    result = _diff(repo, base="--lock")  # to git worktree add, an option: a locked worktree left behind
    assert result.returncode == 2
    assert result.stderr.startswith("error: --base = --lock: not a git ref of") and len(result.stderr.splitlines()) == 1
    worktrees = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert len(worktrees.splitlines()) == 1, worktrees
