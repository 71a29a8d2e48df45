"""Can this runner read the stack's keys? A stack on the `file` secrets backend (the default) keeps
them in a directory that is not in the repository, so its preview or `up` in CI would fail on
the first key with a message about a missing secret rather than about CI.

    keys-reachable.py [--required] Pulumi.<stack>.yaml

Writes `reachable=true|false` to $GITHUB_OUTPUT (the preview runs only when true): false for a
`file` backend whose directory is not here, or an AWS profile this runner lacks. When false, one
warning annotation saying what to do; with --required (deploy) an error annotation and exit 2.
A stack file with problems: one error line each, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The project root, as the Pulumi program anchors a relative `secrets.path` (see __main__.py).
PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from mailsite.config import load_site_file, stack_name
from mailsite.problems import SiteConfigError
from mailsite.secrets import FileStore, host_store


def annotation(level: str, title: str, message: str) -> str:
    """A GitHub workflow command; the escapes keep a value from the stack file on one line."""
    escaped = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{level} title={title}::{escaped}"


def unreachable_reason(config: Path) -> str | None:
    """Why CI cannot read this stack's keys, or None when it can."""
    site = load_site_file(config)
    if site.secrets.backend == "aws-secretsmanager":
        return _missing_aws_profile(config, site.secrets.profile)
    if site.secrets.backend != "file":
        return None  # inline keys are in the file
    store = host_store(site, PROJECT)
    assert isinstance(store, FileStore)
    if not store.root.is_dir():
        stack = stack_name(config)
        return (f"{config.name}: mailsite:secrets.backend = file (secrets.path {site.secrets.path}) is not on this runner, "
                f"so CI cannot read its keys. Preview it where that directory is: pulumi preview --stack {stack} "
                f"--policy-pack policy; or move its keys to aws-secretsmanager (secrets.backend) to have CI preview it.")
    return None


def _missing_aws_profile(config: Path, profile: str | None) -> str | None:
    """Secrets Manager answers any runner with the workflow's role, whose credentials arrive as
    AWS_* variables; but boto3 refuses a named profile that is not in the runner's ~/.aws
    (ProfileNotFound) before it looks at those variables."""
    if not profile:
        return None
    import botocore.session  # only stacks on Secrets Manager need it

    if profile in botocore.session.Session().available_profiles:
        return None
    return (f"{config.name}: mailsite:secrets.profile = {profile} is an AWS profile this runner does not have, so "
            f"CI cannot read its keys (boto3 refuses an unknown profile before it looks at the AWS_* variables the workflow's role sets). "
            f"Leave secrets.profile unset in the stack and pick the profile with AWS_PROFILE where you run pulumi by hand.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keys-reachable.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--required", action="store_true", help="fail (deploy) instead of skipping (preview)")
    parser.add_argument("config", type=Path, help="Pulumi.<stack>.yaml")
    args = parser.parse_args(argv)
    try:
        reason = unreachable_reason(args.config)
    except SiteConfigError as error:
        for problem in error.problems:
            print(annotation("error", "stack file", f"error: {problem}"))
        return 2
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with open(output, "a") as out:
            print(f"reachable={'false' if reason else 'true'}", file=out)
    if reason is None:
        print(f"{args.config.name}: the keys' backend is reachable from this runner")
        return 0
    if args.required:
        print(annotation("error", "keys not reachable", reason))
        return 2
    print(annotation("warning", "preview skipped", reason))
    return 0


if __name__ == "__main__":
    sys.exit(main())
