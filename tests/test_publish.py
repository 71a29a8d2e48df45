"""Publishing a raw image for Vultr: upload, presigned URL, delete, against a real moto_server."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from mailsite.images.packer import BakeError
from mailsite.images.publish import delete_image, object_key, object_store, presigned_url, upload_image
from mailsite.model import ObjectStorage


@pytest.fixture
def store(moto_endpoint):
    settings = ObjectStorage(endpoint_url=moto_endpoint, bucket="mailsite-images", region="eu-central-1", presign_seconds=600)
    client = object_store(settings)
    client.create_bucket(Bucket=settings.bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    yield settings, client
    for item in client.list_objects_v2(Bucket=settings.bucket).get("Contents", []):
        client.delete_object(Bucket=settings.bucket, Key=item["Key"])
    client.delete_bucket(Bucket=settings.bucket)


def test_upload_presign_fetch_delete(store, tmp_path):
    settings, client = store
    image = tmp_path / "image.raw"
    image.write_bytes(b"\x00OpenBSD disk\x00" * 4096)
    key = object_key("mx2", "ab" * 32, "0f1e2d3c")
    upload_image(client, settings, image, key)

    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{settings.endpoint_url}/{settings.bucket}/{key}")
    assert anonymous.value.code == 403, "the image must be private"

    url = presigned_url(client, settings, key)
    assert "Expires=" in url or "X-Amz-Expires=600" in url
    assert urllib.request.urlopen(url).read() == image.read_bytes()

    delete_image(client, settings, key)
    assert client.list_objects_v2(Bucket=settings.bucket).get("KeyCount", 0) == 0


def test_missing_bucket_is_one_line(store, tmp_path):
    settings, client = store
    image = tmp_path / "image.raw"
    image.write_bytes(b"x")
    with pytest.raises(BakeError) as raised:
        upload_image(client, settings.model_copy(update={"bucket": "no-such-bucket"}), image, "k")
    assert "NoSuchBucket" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(BakeError, match="objectStorage.bucket is not set"):
        upload_image(client, settings.model_copy(update={"bucket": ""}), image, "k")


def test_deleting_an_upload_already_gone_or_its_bucket_gone_is_done(store):
    # A destroy after the release (or after the bucket itself went) must not fail on the image.
    settings, client = store
    delete_image(client, settings, object_key("mx2", "ab" * 32, "0f1e2d3c"))
    delete_image(client, settings.model_copy(update={"bucket": "no-such-bucket"}), "k")
