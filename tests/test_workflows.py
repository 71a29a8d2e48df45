"""The GitHub workflows, checked by actionlint (with shellcheck on their scripts)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.sites import EXAMPLE, ROOT

ACTIONLINT = Path(sys.executable).parent / "actionlint"
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))


def _lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ACTIONLINT), "-shellcheck", "shellcheck", *map(str, paths)], capture_output=True, text=True)


def test_workflows_pass_actionlint():
    assert [p.name for p in WORKFLOWS] == ["deploy.yml", "pull-request.yml"]
    result = _lint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_scripts_pass_shellcheck():
    scripts = sorted((ROOT / ".github/scripts").glob("*.sh"))
    assert scripts
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
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


def test_no_workflow_splices_a_value_into_a_script():
    # A stack name comes from a file name in the pull request: spliced into `run:` with ${{ }}, a
    # file named Pulumi.$(...).yaml would run its name as a command. Values go through env.
    for workflow in WORKFLOWS:
        for name, job in yaml.safe_load(workflow.read_text())["jobs"].items():
            for step in job["steps"]:
                assert "${{" not in step.get("run", ""), f"{workflow.name}: {name}: {step.get('name', step['run'][:40])}"


def test_stack_list_refuses_a_file_name_that_is_not_a_stack_name(tmp_path):
    jobs = yaml.safe_load((ROOT / ".github/workflows/pull-request.yml").read_text())["jobs"]
    (step,) = [s for s in jobs["stacks"]["steps"] if s.get("id") == "list"]
    for name in ("Pulumi.example.yaml", "Pulumi.prod.yaml", "Pulumi.$(touch pwned).yaml"):
        (tmp_path / name).write_text("config: {}\n")
    output = tmp_path / "github-output"
    result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env={**os.environ, "GITHUB_OUTPUT": str(output)},
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "Pulumi.$(touch pwned).yaml" in result.stdout + result.stderr and "stack name" in result.stdout + result.stderr
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "Pulumi.$(touch pwned).yaml").unlink()
    result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env={**os.environ, "GITHUB_OUTPUT": str(output)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert output.read_text().splitlines()[-1] == 'stacks=["prod"]'


# --- The config diff's comment: one per stack, found by its marker (issue 11.7) ---

UPSERT = ROOT / ".github/scripts/upsert-comment.sh"
PR = 42
BOT = {"login": "github-actions[bot]", "type": "Bot"}
PULUMI_PREVIEW = {"id": 101, "user": BOT, "body": "#### :tropical_drink: `preview` on prod\n<details>resource changes</details>"}
OTHER_STACK_DIFF = {"id": 102, "user": BOT, "body": "<!-- mailsite-diff:prod-eu -->\n### mailsite diff: prod-eu\n"}
PERSON_QUOTING = {"id": 103, "user": {"login": "alice", "type": "User"}, "body": "<!-- mailsite-diff:prod -->\nlooks fine to me"}
PULUMI_UPDATE = {"id": 105, "user": BOT, "body": "#### :tropical_drink: `preview` on prod-eu\nno changes"}

# A stand-in for the GitHub CLI (no GitHub here): it keeps the pull request's comments in a JSON
# file, answers `gh api` as GitHub does (two comments a page, one JSON array per page with
# --paginate, `{owner}/{repo}` placeholders), and records every call.
FAKE_GH = r'''
import argparse, json, os, re, sys, time
state_path, log_path = os.environ["FAKE_GH_STATE"], os.environ["FAKE_GH_LOG"]
with open(log_path, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
parser = argparse.ArgumentParser()
parser.add_argument("command", choices=["api"])
parser.add_argument("endpoint")
parser.add_argument("--method", default="GET")
parser.add_argument("--paginate", action="store_true")
parser.add_argument("--input")
args = parser.parse_args()
state = json.load(open(state_path))
listing = re.fullmatch(r"repos/\{owner\}/\{repo\}/issues/(\d+)/comments", args.endpoint)
one = re.fullmatch(r"repos/\{owner\}/\{repo\}/issues/comments/(\d+)", args.endpoint)
if listing and args.method == "GET":
    comments = state["comments"] if int(listing[1]) == state["pr"] else []
    pages = [comments[i:i + 2] for i in range(0, len(comments), 2)] or [[]]
    for number, page in enumerate(pages if args.paginate else pages[:1]):
        # Each page arrives after its own HTTP round trip: a reader that stops early is gone by then.
        if number:
            time.sleep(0.02)
        print(json.dumps(page), flush=True)
    sys.exit(0)
body = json.load(open(args.input))["body"]
if len(body) > 65536:
    print("gh: Validation Failed (HTTP 422): body is too long (maximum is 65536 characters)", file=sys.stderr)
    sys.exit(1)
if listing and args.method == "POST" and int(listing[1]) == state["pr"]:
    comment = {"id": max([c["id"] for c in state["comments"]] + [900]) + 1, "user": state["me"], "body": body}
    state["comments"].append(comment)
elif one and args.method == "PATCH" and any(c["id"] == int(one[1]) for c in state["comments"]):
    comment = next(c for c in state["comments"] if c["id"] == int(one[1]))
    comment["body"] = body
else:
    print(f"gh: Not Found (HTTP 404): {args.method} {args.endpoint}", file=sys.stderr)
    sys.exit(1)
json.dump(state, open(state_path, "w"))
print(json.dumps(comment))
'''


class FakeGitHub:
    def __init__(self, root: Path, comments: list[dict]):
        self.bin = root / "bin"
        self.bin.mkdir()
        gh = self.bin / "gh"
        gh.write_text(f"#!{sys.executable}\n{FAKE_GH}")
        gh.chmod(0o755)
        self.state, self.log = root / "gh-state.json", root / "gh-calls.jsonl"
        self.state.write_text(json.dumps({"pr": PR, "me": BOT, "comments": comments}))
        self.log.write_text("")

    @property
    def comments(self) -> list[dict]:
        return json.loads(self.state.read_text())["comments"]

    @property
    def writes(self) -> list[tuple[str, str]]:
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [(c[c.index("--method") + 1], c[c.index("--method") + 2]) for c in calls if "--method" in c]

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_GH_STATE": str(self.state),
                "FAKE_GH_LOG": str(self.log), **extra}


def _upsert(github: FakeGitHub, tmp_path: Path, marker: str, body: str, pr: str = str(PR)) -> subprocess.CompletedProcess:
    body_file = tmp_path / "body.md"
    body_file.write_text(body)
    return subprocess.run(["bash", str(UPSERT), pr, marker, str(body_file)], env=github.env(), capture_output=True, text=True)


def test_diff_comment_edits_only_its_own_stack_comment(tmp_path):
    ours = {"id": 104, "user": BOT, "body": "<!-- mailsite-diff:prod -->\n### mailsite diff: prod\nold diff\n"}
    others = [PULUMI_PREVIEW, OTHER_STACK_DIFF, PERSON_QUOTING, ours, PULUMI_UPDATE]
    github = FakeGitHub(tmp_path, others)
    result = _upsert(github, tmp_path, "mailsite-diff:prod", "### mailsite diff: prod\nnew diff\n")
    assert result.returncode == 0, result.stderr
    # The bot's last comment is another stack's preview (105): --edit-last would have edited that.
    assert github.writes == [("PATCH", "repos/{owner}/{repo}/issues/comments/104")]
    after = {c["id"]: c["body"] for c in github.comments}
    assert after[104] == "<!-- mailsite-diff:prod -->\n### mailsite diff: prod\nnew diff\n", "marker kept, body replaced"
    assert {i: b for i, b in after.items() if i != 104} == {c["id"]: c["body"] for c in others if c is not ours}


def test_diff_comment_created_once_then_edited_in_place(tmp_path):
    github = FakeGitHub(tmp_path, [PULUMI_PREVIEW, OTHER_STACK_DIFF, PERSON_QUOTING, PULUMI_UPDATE])
    first = _upsert(github, tmp_path, "mailsite-diff:prod", "### mailsite diff: prod\nfirst push\n")
    assert first.returncode == 0, first.stderr
    assert github.writes == [("POST", f"repos/{{owner}}/{{repo}}/issues/{PR}/comments")], "prod-eu's or a person's comment is not prod's"
    (created,) = [c for c in github.comments if c["id"] > 900]
    second = _upsert(github, tmp_path, "mailsite-diff:prod", "### mailsite diff: prod\nsecond push\n")
    assert second.returncode == 0, second.stderr
    assert github.writes[1:] == [("PATCH", f"repos/{{owner}}/{{repo}}/issues/comments/{created['id']}")]
    mine = [c for c in github.comments if c["body"].startswith("<!-- mailsite-diff:prod -->") and c["user"]["type"] == "Bot"]
    assert [c["body"] for c in mine] == ["<!-- mailsite-diff:prod -->\n### mailsite diff: prod\nsecond push\n"]


def test_diff_comment_found_among_many_pages_of_comments(tmp_path):
    # A busy pull request: its own comment on the first page, a hundred more after it. Whoever
    # reads the listing must read it to the end, or gh dies writing the next page (SIGPIPE).
    ours = {"id": 104, "user": BOT, "body": "<!-- mailsite-diff:prod -->\nold diff\n"}
    chatter = [{"id": 2000 + i, "user": {"login": "alice", "type": "User"}, "body": f"comment {i}"} for i in range(120)]
    github = FakeGitHub(tmp_path, [PULUMI_PREVIEW, ours, *chatter])
    result = _upsert(github, tmp_path, "mailsite-diff:prod", "new diff\n")
    assert result.returncode == 0, result.stderr
    assert github.writes == [("PATCH", "repos/{owner}/{repo}/issues/comments/104")]


def test_diff_comment_skips_comments_without_a_body_or_author(tmp_path):
    # GitHub's REST schema has `user` nullable and `body` optional on an issue comment.
    ghost = {"id": 106, "user": None, "body": "<!-- mailsite-diff:prod -->\nold"}
    empty = {"id": 107, "user": BOT, "body": None}
    github = FakeGitHub(tmp_path, [ghost, empty, PULUMI_PREVIEW])
    result = _upsert(github, tmp_path, "mailsite-diff:prod", "diff\n")
    assert result.returncode == 0, result.stderr
    assert github.writes == [("POST", f"repos/{{owner}}/{{repo}}/issues/{PR}/comments")]


def test_diff_comment_longer_than_github_takes_is_cut_with_a_note(tmp_path):
    github = FakeGitHub(tmp_path, [PULUMI_PREVIEW])
    result = _upsert(github, tmp_path, "mailsite-diff:prod", "### mailsite diff: prod\n" + "+ é line\n" * 20000)
    assert result.returncode == 0, result.stderr
    (created,) = [c for c in github.comments if c["id"] > 900]
    assert len(created["body"]) <= 65536, "GitHub refuses a longer body (HTTP 422)"
    assert created["body"].startswith("<!-- mailsite-diff:prod -->\n### mailsite diff: prod\n+ é line\n")
    assert "truncated" in created["body"].splitlines()[-1] and "job's log" in created["body"].splitlines()[-1]


@pytest.mark.parametrize("pr, marker", [("", "mailsite-diff:prod"), ("42; true", "mailsite-diff:prod"), ("42", "x --> <b>y</b>")])
def test_diff_comment_refuses_a_bad_pull_request_or_marker(tmp_path, pr, marker):
    github = FakeGitHub(tmp_path, [PULUMI_PREVIEW])
    result = _upsert(github, tmp_path, marker, "body\n", pr=pr)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and ("pull request number" in result.stderr or "marker" in result.stderr)
    assert github.log.read_text() == "", "nothing asked of GitHub"


def _preview_step(name: str) -> dict:
    jobs = yaml.safe_load((ROOT / ".github/workflows/pull-request.yml").read_text())["jobs"]
    (step,) = [s for s in jobs["preview"]["steps"] if s.get("name", "").startswith(name)]
    return step


def test_each_stack_diff_step_keeps_its_own_comment(tmp_path):
    """The workflow's own diff step, run as the runner runs it, for two stacks over two pushes."""
    step = _preview_step("Per-host config diff")
    assert step["env"] == {"STACK": "${{ matrix.stack }}", "BASE_REF": "${{ github.base_ref }}",
                           "PR": "${{ github.event.pull_request.number }}", "KEYS_REACHABLE": "${{ steps.keys.outputs.reachable }}",
                           "GH_REPO": "${{ github.repository }}", "GH_TOKEN": "${{ github.token }}"}
    assert "${{" not in step["run"], "values reach the script through env, not spliced into it"
    checkout = tmp_path / "checkout"
    (checkout / ".github/scripts").mkdir(parents=True)
    shutil.copy2(UPSERT, checkout / ".github/scripts/upsert-comment.sh")
    # `mailsite diff` itself is tested in test_diff.py; here it only has to print something per stack.
    (checkout / ".venv/bin").mkdir(parents=True)
    (checkout / ".venv/bin/python").write_text('#!/bin/sh\necho "-push $PUSH of $5"\n')
    (checkout / ".venv/bin/python").chmod(0o755)
    github = FakeGitHub(tmp_path, [PULUMI_PREVIEW])
    for push in (1, 2):
        for stack, reachable in (("prod", "true"), ("staging", "false")):
            env = github.env(STACK=stack, BASE_REF="main", PR=str(PR), KEYS_REACHABLE=reachable, GH_REPO="o/r", GH_TOKEN="t", PUSH=str(push))
            result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=checkout, env=env, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
    bodies = {c["id"]: c["body"] for c in github.comments}
    assert bodies.pop(101) == PULUMI_PREVIEW["body"]
    assert sorted(bodies.values()) == [
        "<!-- mailsite-diff:prod -->\n### mailsite diff: prod\n```diff\n-push 2 of Pulumi.prod.yaml\n```\n",
        "<!-- mailsite-diff:staging -->\n### mailsite diff: staging\n> pulumi preview skipped: this stack's keys are in the file "
        "secrets backend, not on the runner (see the job's warning).\n```diff\n-push 2 of Pulumi.staging.yaml\n```\n",
    ]


def test_a_failed_diff_fails_the_step_and_never_posts_as_an_empty_diff(tmp_path):
    # GitHub runs a `run:` step with `bash -e`, without pipefail: a diff piped into `head` that
    # fails would post an empty diff, which reads as "this change renders nothing different".
    step = _preview_step("Per-host config diff")
    checkout = tmp_path / "checkout"
    (checkout / ".github/scripts").mkdir(parents=True)
    shutil.copy2(UPSERT, checkout / ".github/scripts/upsert-comment.sh")
    (checkout / ".venv/bin").mkdir(parents=True)
    (checkout / ".venv/bin/python").write_text('#!/bin/sh\necho "error: mailsite:domains = []: list at least one" >&2\nexit 2\n')
    (checkout / ".venv/bin/python").chmod(0o755)
    github = FakeGitHub(tmp_path, [PULUMI_PREVIEW])
    env = github.env(STACK="prod", BASE_REF="main", PR=str(PR), KEYS_REACHABLE="true", GH_REPO="o/r", GH_TOKEN="t")
    result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=checkout, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "mailsite:domains = []" in result.stderr
    (comment,) = [c for c in github.comments if c["id"] > 900]
    assert "```diff\n```" not in comment["body"]
    assert "mailsite diff failed" in comment["body"]


def test_a_diff_longer_than_a_comment_is_cut_in_the_comment_and_whole_in_the_log(tmp_path):
    step = _preview_step("Per-host config diff")
    checkout = tmp_path / "checkout"
    (checkout / ".github/scripts").mkdir(parents=True)
    shutil.copy2(UPSERT, checkout / ".github/scripts/upsert-comment.sh")
    (checkout / ".venv/bin").mkdir(parents=True)
    (checkout / ".venv/bin/python").write_text('#!/bin/sh\nseq 1 40000 | sed "s/^/+line /"\n')
    (checkout / ".venv/bin/python").chmod(0o755)
    github = FakeGitHub(tmp_path, [PULUMI_PREVIEW])
    env = github.env(STACK="prod", BASE_REF="main", PR=str(PR), KEYS_REACHABLE="true", GH_REPO="o/r", GH_TOKEN="t")
    result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=checkout, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "+line 40000" in result.stdout, "the whole diff is in the job's log"
    (comment,) = [c for c in github.comments if c["id"] > 900]
    assert len(comment["body"]) <= 65536
    assert comment["body"].count("```") == 2, "the diff's code block is closed"
    lines = comment["body"].splitlines()
    closing = lines.index("```")
    assert lines[closing - 1] == f"+line {closing - 3}", "whole lines only: the fence closes on its own line"
    assert "truncated" in comment["body"]


# --- Stacks whose keys CI cannot read (issue 11.8) ---

KEYS_REACHABLE = ROOT / ".github/scripts/keys-reachable.py"


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A fresh clone as a runner has it: the code, no secrets directory."""
    tree = tmp_path / "checkout"
    (tree / ".github/scripts").mkdir(parents=True)
    shutil.copy2(KEYS_REACHABLE, tree / ".github/scripts/keys-reachable.py")
    (tree / "mailsite").symlink_to(ROOT / "mailsite")
    return tree


def _stack_file(checkout: Path, stack: str, secrets: dict | None) -> Path:
    document = yaml.safe_load(EXAMPLE.read_text())
    if secrets is None:
        del document["config"]["mailsite:secrets"]
    else:
        document["config"]["mailsite:secrets"] = secrets
    path = checkout / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _keys_reachable(checkout: Path, config: Path, *flags: str) -> tuple[subprocess.CompletedProcess, str]:
    output = checkout / "github-output"
    output.write_text("")
    result = subprocess.run([sys.executable, str(checkout / ".github/scripts/keys-reachable.py"), *flags, config.name],
                            cwd=checkout, env={**os.environ, "GITHUB_OUTPUT": str(output)}, capture_output=True, text=True)
    return result, output.read_text()


@pytest.mark.parametrize("secrets", [None, {"backend": "file"}, {"backend": "file", "path": "/nonexistent/mailsite-keys"}],
                         ids=["defaulted", "file", "file-absolute"])
def test_preview_skipped_with_a_warning_when_keys_are_in_the_file_backend(checkout, secrets):
    result, output = _keys_reachable(checkout, _stack_file(checkout, "prod", secrets))
    assert result.returncode == 0, result.stdout + result.stderr
    assert output == "reachable=false\n"
    (line,) = result.stdout.splitlines()
    assert line.startswith("::warning title=preview skipped::Pulumi.prod.yaml: mailsite:secrets.backend = file")
    assert "pulumi preview --stack prod --policy-pack policy" in line and "aws-secretsmanager" in line


def test_deploy_refuses_a_stack_whose_keys_are_in_the_file_backend(checkout):
    result, output = _keys_reachable(checkout, _stack_file(checkout, "prod", None), "--required")
    assert result.returncode == 2
    assert output == "reachable=false\n"
    assert result.stdout.startswith("::error title=keys not reachable::Pulumi.prod.yaml: mailsite:secrets.backend = file")


@pytest.mark.parametrize("secrets", [{"backend": "aws-secretsmanager", "region": "eu-central-1"}, "present-directory"],
                         ids=["aws-secretsmanager", "file-on-a-self-hosted-runner"])
def test_preview_runs_when_the_runner_can_read_the_keys(checkout, tmp_path, secrets):
    if secrets == "present-directory":
        (tmp_path / "keys").mkdir()
        secrets = {"backend": "file", "path": str(tmp_path / "keys")}
    result, output = _keys_reachable(checkout, _stack_file(checkout, "prod", secrets))
    assert result.returncode == 0, result.stdout + result.stderr
    assert output == "reachable=true\n"
    assert "::" not in result.stdout


def test_preview_skipped_when_the_stack_names_an_aws_profile_the_runner_lacks(checkout, tmp_path):
    # boto3 refuses a named profile that is not in ~/.aws (ProfileNotFound), even with the OIDC
    # role's credentials in AWS_* variables: the preview would die on the first key.
    secrets = {"backend": "aws-secretsmanager", "region": "eu-central-1", "profile": "default"}
    config = _stack_file(checkout, "prod", secrets)
    home = tmp_path / "runner-home"
    home.mkdir()
    output = checkout / "github-output"
    output.write_text("")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "HOME": str(home), "GITHUB_OUTPUT": str(output),
           "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "from-oidc"}
    script = [sys.executable, str(checkout / ".github/scripts/keys-reachable.py"), config.name]
    result = subprocess.run(script, cwd=checkout, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert output.read_text() == "reachable=false\n"
    (line,) = result.stdout.splitlines()
    assert line.startswith("::warning title=preview skipped::Pulumi.prod.yaml: mailsite:secrets.profile = default")
    assert "AWS_PROFILE" in line
    (home / ".aws").mkdir()
    (home / ".aws/config").write_text("[default]\nregion = eu-central-1\n")
    output.write_text("")
    result = subprocess.run(script, cwd=checkout, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and output.read_text() == "reachable=true\n", result.stdout + result.stderr


def test_keys_check_names_each_problem_of_a_broken_stack_file(checkout):
    result, output = _keys_reachable(checkout, _stack_file(checkout, "prod", {"backend": "vault\n::add-mask::x"}))
    assert result.returncode == 2
    assert output == ""
    (line,) = result.stdout.splitlines()
    assert line.startswith("::error title=stack file::error: mailsite:secrets.backend = ")
    assert "Traceback" not in result.stdout + result.stderr


def test_preview_and_deploy_check_the_keys_first():
    steps = yaml.safe_load((ROOT / ".github/workflows/pull-request.yml").read_text())["jobs"]["preview"]["steps"]
    names = [s.get("name", s.get("uses")) for s in steps]
    keys = names.index("Can CI read the stack's keys?")
    (preview,) = [i for i, s in enumerate(steps) if s.get("uses", "").startswith("pulumi/actions@")]
    assert names.index("Tools and Python dependencies") < keys < preview
    assert steps[keys]["id"] == "keys" and "keys-reachable.py" in steps[keys]["run"] and "--required" not in steps[keys]["run"]
    assert steps[preview]["if"] == "steps.keys.outputs.reachable == 'true'"
    assert "if" not in _preview_step("Per-host config diff"), "the diff is posted even when the preview is skipped"
    up_steps = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())["jobs"]["up"]["steps"]
    (check,) = [i for i, s in enumerate(up_steps) if "keys-reachable.py --required" in s.get("run", "")]
    (up,) = [i for i, s in enumerate(up_steps) if s.get("uses", "").startswith("pulumi/actions@")]
    assert check < up


# --- The tools a bake needs, and the Pulumi CLI the workflows run ---

def _make_dry_run(target: str) -> str:
    return subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, check=True).stdout


def test_bake_deps_install_qemu_and_the_test_deps_do_not():
    assert {"qemu-system-x86", "qemu-utils"} <= set(_make_dry_run("bake-deps").split())
    assert "qemu" not in _make_dry_run("deps"), "no test boots a VM: CI does not install qemu"
    up_steps = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())["jobs"]["up"]["steps"]
    (tools,) = [i for i, s in enumerate(up_steps) if "make" in s.get("run", "")]
    (up,) = [i for i, s in enumerate(up_steps) if s.get("uses", "").startswith("pulumi/actions@")]
    assert "bake-deps" in up_steps[tools]["run"].split() and tools < up, "`up` bakes: qemu first"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_workflows_pin_the_pulumi_cli_that_hooks_need():
    (sdk,) = [line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("pulumi==")]
    for workflow in WORKFLOWS:
        jobs = yaml.safe_load(workflow.read_text())["jobs"]
        actions = [s for job in jobs.values() for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions@")]
        assert actions, workflow.name
        for action in actions:
            pinned = str(action["with"].get("pulumi-version", ""))
            assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), f"{workflow.name}: pulumi-version {pinned!r} is not an exact version"
            assert _version(pinned) >= (3, 182, 0), f"{workflow.name}: resource hooks need the CLI 3.182 or later"
            assert pinned == sdk, f"{workflow.name}: CLI {pinned}, SDK {sdk} (requirements.txt): keep them the same"
