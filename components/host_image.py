"""HostImage: one host's baked OpenBSD image, and for Vultr the snapshot made from it.

The bake is a dynamic resource (Python, in-process) rather than a command resource: its inputs
are the host's rendered tree as data, its keys stay Pulumi secrets end to end (a command resource
would have to receive them through its environment or command line), and its diff is exactly
the content hash: same identity, no change, no rebake; another identity, a replacement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ediri_vultr as vultr
import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider
from pydantic import SecretStr

from mailsite.images.bake import BakeRequest, bake, identity_of
from mailsite.images.publish import delete_image, object_key, object_store, presigned_url, upload_image
from mailsite.model import Host, HostSecrets, Images, ObjectStorage, Site
from mailsite.render import HostTree, RenderedFile


@dataclass
class ImageSettings:
    images: Images
    image_format: str  # raw for Vultr snapshots, qcow2 for libvirt volumes


def _tree_data(tree: HostTree) -> dict[str, dict[str, Any]]:
    return {path: {"text": f.text, "mode": f.mode, "secret": f.secret} for path, f in tree.items()}


def _tree(data: dict[str, dict[str, Any]]) -> HostTree:
    return {path: RenderedFile(f["text"], int(f["mode"]), bool(f["secret"])) for path, f in data.items()}


def _request(props: dict[str, Any]) -> BakeRequest:
    return BakeRequest(
        host=Host.model_validate(props["host"]),
        tree=_tree(props["tree"]),
        secrets=HostSecrets(SecretStr(props["queueKey"]), props["queueKeyVersion"], SecretStr(props["spamdSyncKey"]), props["spamdSyncKeyVersion"]),
        settings=Images.model_validate(props["images"]),
        image_format=props["format"],
    )


class _BakeProvider(ResourceProvider):
    def create(self, props):
        baked = bake(_request(props), progress=lambda line: pulumi.log.info(line))
        outs = {**props, "path": str(baked.path)}
        if props["upload"]:
            store = ObjectStorage.model_validate(props["upload"])
            client = object_store(store)
            key = object_key(props["host"]["name"], baked.identity)
            upload_image(client, store, baked.path, key)
            outs.update(objectKey=key, url=presigned_url(client, store, key))
        return CreateResult(id_=baked.identity, outs=outs)

    def diff(self, _id, olds, news):
        changed = olds.get("identity") != news["identity"]
        return DiffResult(changes=changed, replaces=["identity"] if changed else [], delete_before_replace=False)

    def delete(self, _id, _props):
        pass  # the image stays in the bake cache: a rollback to it needs no rebake


class _Bake(pulumi.dynamic.Resource):
    path: pulumi.Output[str]
    url: pulumi.Output[str]
    objectKey: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions):
        super().__init__(_BakeProvider(), name, {**props, "path": None, "url": None, "objectKey": None}, opts)


class _ReleaseProvider(ResourceProvider):
    """Deletes the uploaded image once Vultr has made its snapshot: nothing stays in the bucket."""

    def create(self, props):
        store = ObjectStorage.model_validate(props["upload"])
        delete_image(object_store(store), store, props["objectKey"])
        return CreateResult(id_=props["objectKey"], outs=props)

    def diff(self, _id, olds, news):
        # A new bake uploads a new object: a new release, so that create deletes it too.
        changed = olds.get("objectKey") != news.get("objectKey")
        return DiffResult(changes=changed, replaces=["objectKey"] if changed else [], delete_before_replace=False)


class _Release(pulumi.dynamic.Resource):
    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions):
        super().__init__(_ReleaseProvider(), name, props, opts)


@dataclass
class HostImageArgs:
    site: Site
    host: Host
    tree: pulumi.Output[HostTree]  # secret: it holds the host's keys
    secrets: HostSecrets
    settings: ImageSettings


class HostImage(pulumi.ComponentResource):
    identity: pulumi.Output[str]
    image_id: pulumi.Output[str]  # Vultr snapshot id, or the qcow2 path for a libvirt volume

    def __init__(self, name: str, args: HostImageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:HostImage", name, None, opts)
        settings, secrets = args.settings, args.secrets
        # The identity holds no secret (keys count by version), so it can show in previews.
        self.identity = pulumi.Output.unsecret(
            args.tree.apply(lambda tree: identity_of(BakeRequest(args.host, tree, secrets, settings.images, settings.image_format)))
        )
        upload = settings.images.object_storage.model_dump() if args.site.target == "vultr" else None
        baked = _Bake(
            f"{name}-bake",
            {
                "identity": self.identity,
                "host": args.host.model_dump(mode="json"),
                "tree": args.tree.apply(_tree_data),
                "queueKey": pulumi.Output.secret(secrets.queue_key.get_secret_value()),
                "queueKeyVersion": secrets.queue_key_version,
                "spamdSyncKey": pulumi.Output.secret(secrets.spamd_sync_key.get_secret_value()),
                "spamdSyncKeyVersion": secrets.spamd_sync_key_version,
                "images": settings.images.model_dump(mode="json"),
                "format": settings.image_format,
                "upload": upload,
            },
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["tree", "queueKey", "spamdSyncKey", "url"]),
        )
        if args.site.target == "vultr":
            snapshot = vultr.SnapshotFromUrl(
                f"{name}-snapshot",
                url=baked.url,
                opts=pulumi.ResourceOptions(parent=self),
            )
            _Release(
                f"{name}-release",
                {"upload": upload, "objectKey": baked.objectKey},
                pulumi.ResourceOptions(parent=self, depends_on=[snapshot]),
            )
            self.image_id = snapshot.id
        else:
            self.image_id = baked.path
        self.register_outputs({"identity": self.identity, "imageId": self.image_id})
