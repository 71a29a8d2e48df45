"""Waiting for a Vultr snapshot made from a URL to be usable (an I/O edge).

`SnapshotFromUrl` returns as soon as Vultr has accepted the URL, with the snapshot `pending`
while Vultr is still fetching the image: an instance booted from it then, or an upload deleted
then, breaks the site. Vultr's own Terraform `Snapshot` resource polls GET /v2/snapshots/{id}
until `status` is `complete`; this does the same for snapshots made from a URL.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from ..errors import MailsiteError

API = "https://api.vultr.com/v2"
# Tests point this at a local server that answers like Vultr; the program never sets it.
API_OVERRIDE = "MAILSITE_VULTR_API_URL"
# As long as Vultr's Terraform provider waits for a snapshot: a raw image of a few GB.
READY_MINUTES = 60
_FIRST_POLL, _LONGEST_POLL = 1.0, 15.0


class SnapshotError(MailsiteError):
    """A snapshot that did not become usable, in one line naming it."""


class _Unreachable(Exception):
    """The API did not answer this time (network, 429, 5xx): ask again until the deadline."""


def api_url() -> str:
    return os.environ.get(API_OVERRIDE, API).rstrip("/")


def api_key(configured: str | None) -> str:
    key = configured or os.environ.get("VULTR_API_KEY")
    if not key:
        raise SnapshotError("no Vultr API key to check the snapshot with; set it with "
                            "`pulumi config set --secret vultr:apiKey KEY` or export VULTR_API_KEY")
    return key


def snapshot(snapshot_id: str, key: str, api: str) -> dict:
    """GET /v2/snapshots/{id}: the `snapshot` object ({"id", "status", "size", ...})."""
    request = urllib.request.Request(f"{api}/snapshots/{urllib.parse.quote(snapshot_id, safe='')}",
                                     headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["snapshot"]
    except urllib.error.HTTPError as error:
        reason = _api_error(error)
        if error.code == 429 or error.code >= 500:
            raise _Unreachable(f"HTTP {error.code} {reason}") from None
        if error.code in (401, 403):
            raise SnapshotError(f"Vultr refused the API key while checking snapshot {snapshot_id} "
                                f"(HTTP {error.code} {reason}); set a valid vultr:apiKey") from None
        raise SnapshotError(f"Vultr snapshot {snapshot_id}: HTTP {error.code} {reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise _Unreachable(str(getattr(error, "reason", error))) from None
    except (ValueError, KeyError):
        raise _Unreachable("an answer without a snapshot object") from None


def wait_until_complete(
    snapshot_id: str,
    key: str,
    *,
    timeout_seconds: float,
    api: str,
    remake: str,
    progress: Callable[[str], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """The snapshot once its status is `complete`. Any other status than `pending` is final
    (as for Terraform's wait, which only waits through `pending`). `remake` says how to make the
    snapshot again: waiting again does not help a failed one."""
    deadline = time.monotonic() + timeout_seconds
    delay, last = _FIRST_POLL, "not yet checked"
    while True:
        try:
            found = snapshot(snapshot_id, key, api)
        except _Unreachable as error:
            last = f"unreachable ({error})"
        else:
            status = found.get("status")
            if status == "complete":
                return found
            if status != "pending":
                raise SnapshotError(f"Vultr snapshot {snapshot_id} is {status!r}, not complete: Vultr could not "
                                    f"make it from the uploaded image; upload it again with {remake}")
            if last != "pending":
                progress(f"snapshot {snapshot_id} is pending; waiting until Vultr has fetched the image")
            last = "pending"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SnapshotError(f"Vultr snapshot {snapshot_id} is still {last} after {_duration(timeout_seconds)}; "
                                f"run pulumi up again to keep waiting, or if Vultr shows it stuck, {remake}")
        sleep(min(delay, remaining))
        delay = min(delay * 2, _LONGEST_POLL)


def _api_error(error: urllib.error.HTTPError) -> str:
    # Vultr answers errors as {"error": "...", "status": N}.
    try:
        return str(json.loads(error.read() or b"{}").get("error", "")).strip() or error.reason
    except (ValueError, AttributeError):
        return str(error.reason)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} seconds"
