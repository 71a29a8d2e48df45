"""HostImage: one host's baked OpenBSD image, published where its target's VMs boot from it
(on Vultr a snapshot made from the upload: components/vultr/snapshots.py).

The bake is a dynamic resource (Python, in-process) rather than a command resource: its inputs
are the host's rendered tree as data, its keys stay Pulumi secrets end to end (a command resource
would have to receive them through its environment or command line), and its diff is exactly
the content hash: same identity, no change, no rebake; another identity, a replacement.

What a provider method receives is not what the program wrote: the engine runs these providers
in `python -m pulumi.dynamic`, a separate process that unpickles them (by module and class name,
so moving or renaming a provider class breaks resources already in state), and their inputs
arrive without the keys the SDK drops (a None anywhere), without secret wrappers (the dynamic
provider does not accept secrets), as floats for numbers, and, in a preview, with unknowns.
tests/test_providers.py runs them that way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider
from pydantic import SecretStr

from mailsite.images.bake import TEMPLATE, BakeRequest, bake, identity_of
from mailsite.images.packer import BakeError
from mailsite.images.publish import delete_image, object_key, object_store, presigned_url, upload_image
from mailsite.model import DkimKey, Host, HostSecrets, Images, ObjectStorage
from mailsite.templates import HostTree, RenderedFile

from .target import BakedImage, Target

# NEVER remove this import, not even once every stack has run an `up` since issue 13. State holds
# each dynamic resource's provider pickled under this module's name (components.host_image), and
# the engine rewrites that pickle only when the resource's inputs change: a snapshot's release
# and ready-wait never change theirs, so their state keeps naming this path for as long as the
# resource exists, and a delete or a refresh unpickles it from here (tests/test_providers.py).
from .vultr.snapshots import _ReleaseProvider, _SnapshotReadyProvider  # noqa: F401

# Tests bake with the null-builder template (no VM, no install media); the program never sets it.
TEMPLATE_OVERRIDE = "MAILSITE_PACKER_TEMPLATE"


@dataclass
class ImageSettings:
    images: Images  # the site's `images` settings: install media, disk, cache, object storage
    image_format: str  # raw for Vultr snapshots, qcow2 for libvirt volumes (mailsite.targets)


def _template() -> Path:
    override = os.environ.get(TEMPLATE_OVERRIDE)
    return Path(override) if override else TEMPLATE


def _tree_data(tree: HostTree) -> dict[str, dict[str, Any]]:
    # An owner only where it is not root: the trees of images made before files had owners stay as they were.
    return {path: {"text": f.text, "mode": f.mode, "secret": f.secret, **({"owner": f.owner} if f.owner != "root" else {})}
            for path, f in tree.items()}


def _tree(data: dict[str, dict[str, Any]]) -> HostTree:
    # An empty file's text is "", which survives; modes arrive as floats.
    return {path: RenderedFile(f.get("text", ""), int(f["mode"]), bool(f.get("secret", False)), str(f.get("owner", "root")))
            for path, f in data.items()}


def _request(props: dict[str, Any]) -> BakeRequest:
    return BakeRequest(
        host=Host.model_validate(props["host"]),
        tree=_tree(props["tree"]),
        secrets=HostSecrets(
            SecretStr(props["queueKey"]), props["queueKeyVersion"], SecretStr(props["spamdSyncKey"]), props["spamdSyncKeyVersion"],
            # Absent from a backup's inputs, and from those of images made before passwords existed.
            {user: SecretStr(hashed) for user, hashed in (props.get("passwordHashes") or {}).items()},
            props.get("passwordHashesVersion", HostSecrets.password_hashes_version),
            # Absent from images made before DKIM signing; empty on a backup.
            tuple(DkimKey(key["domain"], key["selector"], SecretStr(key["privateKey"]), key["fingerprint"])
                  for key in props.get("dkimKeys") or []),
        ),
        settings=Images.model_validate(props["images"]),
        image_format=props["format"],
        template=_template(),
    )


def _known(value: Any) -> bool:
    return isinstance(value, str)  # an unknown (preview) arrives as pulumi.output.Unknown


class _BakeProvider(ResourceProvider):
    def create(self, props):
        request = _request(props)
        baked = bake(request, progress=lambda line: pulumi.log.info(line))
        if baked.identity != props["identity"]:
            # The program and this provider would disagree on every later diff.
            raise BakeError(f"{request.host.name}: the image baked here is {baked.identity[:12]}, but the program "
                            f"asked for {props['identity'][:12]}; run pulumi from the same checkout and packer")
        # Only what others read: the keys and the tree stay in the (secret) inputs.
        outs = {"identity": baked.identity, "path": str(baked.path)}
        upload = props.get("upload")  # absent on libvirt: the SDK drops a None input
        if upload:
            store = ObjectStorage.model_validate(upload)
            client = object_store(store)
            key = object_key(request.host.name, baked.identity, token_hex(4))
            upload_image(client, store, baked.path, key)
            # The bucket travels with the key: Delete receives only the outputs.
            outs.update(objectKey=key, url=presigned_url(client, store, key), upload=upload)
        return CreateResult(id_=baked.identity, outs=outs)

    def diff(self, _id, olds, news):
        # An unknown identity (a preview where the tree is not known yet) may well be a new image.
        identity = news.get("identity")
        changed = not _known(identity) or olds.get("identity", _id) != identity
        return DiffResult(changes=changed, replaces=["identity"] if changed else [], delete_before_replace=False)

    def delete(self, _id, props):
        # The image stays in the bake cache (a rollback to it needs no rebake), but not in the
        # bucket: an upload whose snapshot never completed was never released, and holds the keys.
        if props.get("objectKey") and props.get("upload"):
            store = ObjectStorage.model_validate(props["upload"])
            delete_image(object_store(store), store, props["objectKey"])


class _Bake(pulumi.dynamic.Resource):
    identity: pulumi.Output[str]
    path: pulumi.Output[str]
    url: pulumi.Output[str]
    objectKey: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions):
        # The None entries declare the outputs Create adds; the SDK does not send them.
        super().__init__(_BakeProvider(), name, {**props, "path": None, "url": None, "objectKey": None}, opts)


@dataclass
class HostImageArgs:
    target: Target  # publishes the image where its VMs boot from
    host: Host  # the MX the image is for
    tree: pulumi.Output[HostTree]  # secret: the host's rendered files, keys included
    secrets: HostSecrets  # the keys' and password hashes' versions count in the image's identity
    settings: ImageSettings


class HostImage(pulumi.ComponentResource):
    identity: pulumi.Output[str]
    image_id: pulumi.Output[str]  # Vultr snapshot id (once complete), or the qcow2 path for a libvirt volume

    def __init__(self, name: str, args: HostImageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:HostImage", name, None, opts)
        settings, secrets = args.settings, args.secrets
        # The identity holds no secret (keys count by version), so it can show in previews.
        self.identity = pulumi.Output.unsecret(
            args.tree.apply(lambda tree: identity_of(BakeRequest(args.host, tree, secrets, settings.images, settings.image_format, _template())))
        )
        upload = settings.images.object_storage.model_dump(mode="json") if args.target.uploads_images else None
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
                # The primary's users' bcrypt hashes, counted by version: a secret in state and
                # previews, and declared one (additional_secret_outputs), as the policy pack requires
                # of every input that carries a key.
                "passwordHashes": pulumi.Output.secret({user: hashed.get_secret_value() for user, hashed in secrets.password_hashes.items()}),
                "passwordHashesVersion": secrets.password_hashes_version,
                # The primary's DKIM private keys, one per domain: a declared secret like the hashes.
                # None (dropped by the SDK) on a backup, whose inputs stay as they were.
                "dkimKeys": pulumi.Output.secret([{"domain": key.domain, "selector": key.selector, "fingerprint": key.fingerprint,
                                                   "privateKey": key.private_key.get_secret_value()} for key in secrets.dkim_keys])
                if secrets.dkim_keys else None,
                "images": settings.images.model_dump(mode="json"),
                "format": settings.image_format,
                "upload": upload,
            },
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["tree", "queueKey", "spamdSyncKey", "passwordHashes", "dkimKeys", "url"]),
        )
        published = BakedImage(args.host.name, baked, baked.path, baked.url, baked.objectKey, upload)
        self.image_id = args.target.publish_image(name, published, pulumi.ResourceOptions(parent=self))
        self.register_outputs({"identity": self.identity, "imageId": self.image_id})
