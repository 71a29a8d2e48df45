"""The GitHub workflows, checked by actionlint (with shellcheck on their scripts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.sites import ROOT

ACTIONLINT = Path(sys.executable).parent / "actionlint"
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))


def _lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ACTIONLINT), "-shellcheck", "shellcheck", *map(str, paths)], capture_output=True, text=True)


def test_workflows_pass_actionlint():
    assert [p.name for p in WORKFLOWS] == ["deploy.yml", "pull-request.yml"]
    result = _lint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github/workflows/broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text((ROOT / ".github/workflows/pull-request.yml").read_text().replace("runs-on: ubuntu-24.04", "runs-on: ${{ matrix.nowhere }}", 1))
    assert _lint(broken).returncode == 1


def test_preview_comments_without_outputs_and_with_the_policy_pack():
    jobs = yaml.safe_load((ROOT / ".github/workflows/pull-request.yml").read_text())["jobs"]
    (preview,) = [s for s in jobs["preview"]["steps"] if s.get("uses", "").startswith("pulumi/actions@")]
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["comment-on-pr"] is True and preview["with"]["edit-pr-comment"] is True
    assert preview["with"]["suppress-outputs"] is True and preview["with"]["always-include-summary"] is True
    assert preview["with"]["policyPacks"] == "policy"
    (tests_step,) = [s for s in jobs["tests"]["steps"] if "run" in s]
    assert ".ci/run" in tests_step["run"]
    deploy = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())
    assert deploy["jobs"]["up"]["environment"] == "${{ matrix.stack }}", "every up waits for its environment's approval"
