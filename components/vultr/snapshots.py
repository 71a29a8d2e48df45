"""A baked image published on Vultr: a snapshot made from the uploaded image, waited for until
complete, and the upload deleted once the snapshot holds it.

The wait and the release are dynamic resources: the engine runs their providers in `python -m
pulumi.dynamic` and finds them in state by module and class name. Stacks made before issue 13
name them in components.host_image, which keeps an alias (tests/test_providers.py loads those).
"""

from __future__ import annotations

from typing import Any

import ediri_vultr as vultr
import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider

from mailsite.images.publish import delete_image, object_store
from mailsite.images.vultr_snapshots import READY_MINUTES, SnapshotError, api_key, api_url, wait_until_complete
from mailsite.model import ObjectStorage

from ..target import BakedImage


def _known(value: Any) -> bool:
    return isinstance(value, str)  # an unknown (preview) arrives as pulumi.output.Unknown


class _SnapshotReadyProvider(ResourceProvider):
    """Waits until Vultr has made the snapshot from the uploaded image (status `complete`)."""

    def create(self, props):
        snapshot_id, host = props["snapshotId"], props["host"]
        try:
            ready = wait_until_complete(
                snapshot_id,
                api_key(props.get("apiKey")),
                timeout_seconds=float(props.get("timeoutSeconds", READY_MINUTES * 60)),
                api=api_url(),
                # A new upload (cached image, fresh URL) makes a new snapshot, wait and instance.
                remake=f"pulumi up --replace '{props['bakeUrn']}'",
                progress=lambda line: pulumi.log.info(f"{host}: {line}"),
            )
        except SnapshotError as error:
            raise SnapshotError(f"{host}: {error}") from None
        # Never the API key: outputs are what the program reads and what state shows.
        return CreateResult(id_=snapshot_id, outs={"snapshotId": snapshot_id, "status": ready["status"]})

    def diff(self, _id, olds, news):
        snapshot_id = news.get("snapshotId")
        changed = not _known(snapshot_id) or olds.get("snapshotId", _id) != snapshot_id
        return DiffResult(changes=changed, replaces=["snapshotId"] if changed else [], delete_before_replace=False)


class _SnapshotReady(pulumi.dynamic.Resource):
    snapshotId: pulumi.Output[str]
    status: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions):
        super().__init__(_SnapshotReadyProvider(), name, {**props, "status": None}, opts)


class _ReleaseProvider(ResourceProvider):
    """Deletes the uploaded image once Vultr has made its snapshot: nothing stays in the bucket."""

    def create(self, props):
        store = ObjectStorage.model_validate(props["upload"])
        delete_image(object_store(store), store, props["objectKey"])
        return CreateResult(id_=props["objectKey"], outs={"objectKey": props["objectKey"], "snapshotId": props["snapshotId"]})

    def diff(self, _id, olds, news):
        # A new upload or a new snapshot of it: a new release, so that create deletes it again.
        replaces = [k for k in ("objectKey", "snapshotId") if not _known(news.get(k)) or olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(replaces), replaces=replaces, delete_before_replace=False)


class _Release(pulumi.dynamic.Resource):
    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions):
        super().__init__(_ReleaseProvider(), name, props, opts)


def snapshot_of(name: str, baked: BakedImage, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    """The snapshot id, known only once the snapshot is complete: an instance is made from it then."""
    snapshot = vultr.SnapshotFromUrl(f"{name}-snapshot", url=baked.url, opts=opts)
    # The same key the Vultr provider uses; absent, the provider process reads VULTR_API_KEY.
    key = pulumi.Config("vultr").get_secret("apiKey")
    ready = _SnapshotReady(
        f"{name}-ready",
        {"snapshotId": snapshot.id, "host": baked.host, "bakeUrn": baked.bake.urn,
         "timeoutSeconds": READY_MINUTES * 60, "apiKey": key},
        opts,
    )
    # Released per snapshot: a snapshot made again from the same upload deletes it again.
    _Release(
        f"{name}-release",
        {"upload": baked.upload, "objectKey": baked.object_key, "snapshotId": ready.snapshotId},
        opts,
    )
    return ready.snapshotId
