#!/usr/bin/env bash
# One comment per marker on a pull request, created once and edited in place on every push.
# `gh pr comment --edit-last` would edit whatever this bot wrote last: the Pulumi action's preview
# or another stack's diff. The marker is a hidden HTML comment on the body's first line.
#
#   upsert-comment.sh <pull request number> <marker, e.g. mailsite-diff:prod> <body file>
#
# Needs gh (GH_TOKEN, and GH_REPO or a checkout of the repository) and jq.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: upsert-comment.sh <pull request number> <marker, e.g. mailsite-diff:prod> <body file>" >&2
  exit 2
fi
pr=$1 body_file=$3
marker="<!-- $2 -->"
case $pr in
  '' | *[!0-9]*)
    echo "pull request number = '$pr': not a number; pass github.event.pull_request.number" >&2
    exit 2
    ;;
esac
case $2 in
  '' | *--* | *'>'* | *$'\n'*)
    echo "marker = '$2': must be non-empty and hold no '--', '>' or newline (it lives in an HTML comment)" >&2
    exit 2
    ;;
esac
if [ ! -r "$body_file" ]; then
  echo "body file = '$body_file': cannot read it; write the comment there first" >&2
  exit 2
fi

payload=$(mktemp)
trap 'rm -f "$payload"' EXIT
# GitHub refuses a body over 65536 characters (HTTP 422): cut it, and say so on its last line.
{ printf '%s\n' "$marker"; cat "$body_file"; } | jq -Rs '
  "\n\n… truncated to fit a comment (65536 characters at most); the full text is in the job'"'"'s log." as $note
  | {body: (if length > 65536 then .[0:65536 - ($note | length)] + $note else . end)}' >"$payload"

# Ours: written by a bot (a person quoting the marker is not ours to edit) and starting with the
# marker itself ("mailsite-diff:prod -->" is not a prefix of "mailsite-diff:prod-eu -->").
# --paginate prints one JSON array per page; `inputs` reads them all, to the end: a jq that stopped
# at the first match would leave gh writing the next page into a closed pipe (SIGPIPE, and with
# pipefail the whole script fails on a busy pull request).
id=$(gh api --paginate "repos/{owner}/{repo}/issues/$pr/comments" |
  jq -rn --arg marker "$marker" \
    '[inputs[] | select(.user.type? == "Bot" and ((.body // "") | startswith($marker))) | .id] | first // empty')

if [ -n "$id" ]; then
  gh api --method PATCH "repos/{owner}/{repo}/issues/comments/$id" --input "$payload" >/dev/null
  echo "updated comment $id ($2)"
else
  gh api --method POST "repos/{owner}/{repo}/issues/$pr/comments" --input "$payload" >/dev/null
  echo "created a comment ($2)"
fi
