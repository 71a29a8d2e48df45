"""Handing a baked image to its target (an I/O edge).

Vultr makes a snapshot from a URL: the raw image goes to S3-compatible object storage, private,
and Vultr gets a short-lived presigned URL; the object is deleted once the snapshot exists.
libvirt reads the qcow2 from the cache directly.
"""

from __future__ import annotations

from pathlib import Path

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from ..model import ObjectStorage
from .packer import BakeError


def object_store(store: ObjectStorage):
    session = boto3.session.Session(profile_name=store.profile) if store.profile else boto3.session.Session()
    return session.client("s3", endpoint_url=store.endpoint_url, region_name=store.region)


def object_key(host: str, identity: str, upload: str) -> str:
    # One key per upload: a replaced bake's delete, which the engine runs after its replacement's
    # upload (at the end of that up, or of a later one if it failed), never removes the new upload.
    return f"mailsite/images/{host}-{identity}-{upload}.raw"


def upload_image(client, store: ObjectStorage, path: Path, key: str) -> None:
    if not store.bucket:
        raise BakeError("mailsite:images.objectStorage.bucket is not set; name a private bucket for image uploads")
    try:
        # Images are gigabytes: multipart, a few parts at a time.
        client.upload_file(str(path), store.bucket, key, ExtraArgs={"ACL": "private"},
                           Config=TransferConfig(multipart_chunksize=64 << 20, max_concurrency=4))
    except (ClientError, BotoCoreError, S3UploadFailedError) as error:
        raise BakeError(f"upload of {path.name} to bucket {store.bucket} failed: {_reason(error)}") from None


def presigned_url(client, store: ObjectStorage, key: str) -> str:
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": store.bucket, "Key": key}, ExpiresIn=store.presign_seconds
    )


def delete_image(client, store: ObjectStorage, key: str) -> None:
    """Deletes the upload; one already gone (S3 answers a missing key with success) is no error."""
    try:
        client.delete_object(Bucket=store.bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return  # the bucket went first: nothing of the image is left in it
        raise BakeError(f"cannot delete {key} from bucket {store.bucket}: {_reason(error)}") from None
    except BotoCoreError as error:
        raise BakeError(f"cannot delete {key} from bucket {store.bucket}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    if isinstance(error, ClientError):
        detail = error.response.get("Error", {})
        return f"{detail.get('Code', 'error')}: {detail.get('Message', '')}".strip()
    # S3UploadFailedError wraps the ClientError's text after the file name.
    return str(error).splitlines()[0].split(": ", 1)[-1]
