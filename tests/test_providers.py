"""The image providers as the engine runs them: the real program's inputs, serialized by the SDK,
handed to `python -m pulumi.dynamic` over gRPC; real null-builder bakes, a real upload to
moto_server, and a local server answering Vultr's snapshot API."""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2

from components.vultr import snapshots as vultr_snapshots
from components.host_image import TEMPLATE_OVERRIDE
from mailsite.images.publish import object_store
from mailsite.images.vultr_snapshots import API_OVERRIDE, READY_MINUTES, wait_until_complete
from mailsite.model import ObjectStorage
from tests.dynamic_engine import ProviderFailed, Registered, destroy, provider_process, run_program, unwrapped
from tests.sites import example_settings, fake_key
from tests.test_program import Recorded, SiteMocks, inline_secrets, vultr_settings

NULL_TEMPLATE = Path(__file__).parent / "fixtures/packer/null.pkr.hcl"
# Each dynamic provider as the program pickled it before issue 13 (taken from its `__provider` inputs).
OLD_PICKLES = Path(__file__).parent / "fixtures/state/provider-pickles.json"
API_KEY = "VULTR-TEST-KEY-not-a-real-one-0123456789"
HOSTS = ("mx1", "mx2", "mx3")


class FakeVultr:
    """Answers GET /v2/snapshots/{id} as api.vultr.com does. A snapshot made from a URL fetches
    the URL at once, as Vultr does, then walks through its statuses (the last one stays)."""

    def __init__(self):
        self.statuses: dict[str, list[str]] = {}
        self.script = ["pending", "pending", "complete"]
        self.fetched: dict[str, bytes] = {}
        self.answers: list[tuple[str, str]] = []  # (snapshot id, status) in order
        self.keys: set[str] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake.keys.add(self.headers.get("Authorization", ""))
                snapshot_id = self.path.removeprefix("/v2/snapshots/")
                if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                    return self._answer(401, {"error": "Invalid API token.", "status": 401})
                if snapshot_id not in fake.statuses:
                    return self._answer(404, {"error": "Invalid snapshot ID.", "status": 404})
                steps = fake.statuses[snapshot_id]
                status = steps.pop(0) if len(steps) > 1 else steps[0]
                fake.answers.append((snapshot_id, status))
                if status.isdigit():  # Vultr busy or failing for a moment
                    return self._answer(int(status), {"error": "Service Unavailable", "status": int(status)})
                size = len(fake.fetched.get(snapshot_id, b""))
                self._answer(200, {"snapshot": {"id": snapshot_id, "date_created": "2026-11-25T20:00:00+00:00",
                                                "description": "", "size": size, "compressed_size": size,
                                                "status": status, "os_id": 159, "app_id": 0}})

            def _answer(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def create_from_url(self, snapshot_id: str, url: str, script: list[str] | None = None) -> None:
        self.fetched[snapshot_id] = urllib.request.urlopen(url, timeout=10).read()
        self.statuses[snapshot_id] = list(script or self.script)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class CloudMocks(SiteMocks):
    """The clouds' side for the non-dynamic resources; SnapshotFromUrl goes to the fake Vultr."""

    def __init__(self, vultr: FakeVultr | None = None):
        super().__init__(Recorded())
        self.vultr = vultr
        self.secret_urls: list[bool] = []

    def new_resource(self, args):
        snapshot_id, outputs = super().new_resource(args)
        if args.typ == "vultr:index/snapshotFromUrl:SnapshotFromUrl":
            self.secret_urls.append(rpc.is_rpc_secret(args.inputs["url"]))
            self.vultr.create_from_url(snapshot_id, rpc.unwrap_rpc_secret(args.inputs["url"]))
        return snapshot_id, outputs


def _libvirt(tmp_path) -> dict:
    settings = inline_secrets(example_settings())
    settings["images"] = {"cacheDir": str(tmp_path / "cache")}
    settings["libvirt"]["zoneDir"] = str(tmp_path / "zones")  # the zone files' provider writes there
    settings["dns"] = {"nameservers": ["ns1.example.com"]}  # complete zones, whose SOA serial the provider writes
    return settings


def _zone_serial(tmp_path, zone: str = "example.org") -> int:
    """The serial of a zone file the provider wrote, as nsd's own parser reads it."""
    path = tmp_path / "zones" / f"{zone}.zone"
    checked = subprocess.run(["nsd-checkzone", "-p", zone, str(path)], capture_output=True, text=True, timeout=20)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    return int(re.search(r"\bSOA\b[^(]*\(\s*(\d+)", checked.stdout)[1])


def _vultr(tmp_path, moto_endpoint) -> dict:
    settings = vultr_settings(inline_secrets(example_settings()))
    settings["images"].update(cacheDir=str(tmp_path / "cache"),
                              objectStorage={"endpointUrl": moto_endpoint, "bucket": "mailsite-images", "region": "eu-central-1"})
    return settings


def _secrets_absent(text: str) -> None:
    # Named, never shown: a failing assertion would print the key in the test output.
    named = {"the Vultr API key": API_KEY, "the spamd sync key": fake_key("spamd-sync"),
             **{f"{h}'s queue key": fake_key(h) for h in HOSTS}}
    leaked = [name for name, secret in named.items() if secret in text]
    assert not leaked, f"in clear: {', '.join(leaked)}"


@pytest.fixture
def null_bakes(monkeypatch):
    """Bakes through the null-builder template, here and in the provider process."""
    monkeypatch.setenv(TEMPLATE_OVERRIDE, str(NULL_TEMPLATE))
    return {TEMPLATE_OVERRIDE: str(NULL_TEMPLATE)}


@pytest.fixture
def fake_vultr():
    fake = FakeVultr()
    yield fake
    fake.close()


@pytest.fixture
def bucket(moto_endpoint):
    store = ObjectStorage(endpoint_url=moto_endpoint, bucket="mailsite-images", region="eu-central-1")
    client = object_store(store)
    client.create_bucket(Bucket=store.bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    yield client
    for item in client.list_objects_v2(Bucket=store.bucket).get("Contents", []):
        client.delete_object(Bucket=store.bucket, Key=item["Key"])
    client.delete_bucket(Bucket=store.bucket)


def test_libvirt_bake_creates_the_image_and_replaces_it_only_when_its_identity_changes(tmp_path, null_bakes):
    settings = _libvirt(tmp_path)
    with provider_process(null_bakes) as provider:
        # The dynamic provider takes no secrets: the engine unwraps them before Check and Create.
        assert provider.configure({"mailsite:target": "libvirt"}).acceptSecrets is False
        first = run_program(settings, CloudMocks(), provider)
        bakes = first.urns("-image-bake")
        assert len(bakes) == 3 and set(bakes) <= set(first.ops("create"))
        for urn in bakes:
            inputs, outputs = first.plain(urn, "inputs"), first.plain(urn)
            assert "upload" not in inputs, "the SDK drops a None input: libvirt sends no upload"
            assert first.state[urn].id == inputs["identity"] == outputs["identity"]
            assert Path(outputs["path"]).is_file() and Path(outputs["path"]).parent.name == inputs["identity"]
            assert "url" not in outputs and "objectKey" not in outputs
        images = {h: v["imageId"] for h, v in first.outputs["hosts"].items()}
        assert all(Path(path).is_file() for path in images.values()), "each volume is made from its baked image"
        serial = _zone_serial(tmp_path)

        again = run_program(settings, CloudMocks(), provider, previous=first)
        assert again.ops("create") == [] and again.ops("delete") == []
        assert all(again.diffs[u].changes == provider_pb2.DiffResponse.DIFF_NONE and not again.diffs[u].replaces for u in bakes)
        assert _zone_serial(tmp_path) == serial, "no change, no new serial"

        settings["hosts"][2]["preference"] = 40
        changed = run_program(settings, CloudMocks(), provider, previous=again)
        mx3 = next(urn for urn in bakes if "mx3" in urn)
        assert {u for u in bakes if changed.diffs[u].replaces} == {mx3}
        assert list(changed.diffs[mx3].replaces) == ["identity"]
        assert [u for u in changed.ops("create") if u in bakes] == [mx3] and changed.ops("delete") == [mx3]
        assert changed.state[mx3].id != again.state[mx3].id
        # The zone's records changed (mx3's MX preference): its secondaries see a greater serial.
        assert _zone_serial(tmp_path) > serial
        _secrets_absent(provider.log())


def test_vultr_image_is_uploaded_and_the_instance_waits_for_a_complete_snapshot(tmp_path, null_bakes, moto_endpoint, bucket, fake_vultr):
    settings = _vultr(tmp_path, moto_endpoint)
    with provider_process({**null_bakes, API_OVERRIDE: fake_vultr.url}) as provider:
        provider.configure({"mailsite:target": "vultr", "vultr:apiKey": API_KEY}, secret_keys=("vultr:apiKey",))
        mocks = CloudMocks(fake_vultr)
        run = run_program(settings, mocks, provider, config={"vultr:apiKey": API_KEY})
        log = provider.log()
    assert mocks.secret_urls == [True] * 3, "the presigned URL reaches Vultr's provider as a secret"
    for host in HOSTS:
        (bake,) = run.urns(f"-{host}-image-bake")
        (ready,) = run.urns(f"-{host}-image-ready")
        (release,) = run.urns(f"-{host}-image-release")
        (instance,) = run.urns(f"-{host}-instance")
        outputs = run.plain(bake)
        assert run.state[bake].id == outputs["identity"]
        assert re.fullmatch(f"mailsite/images/{host}-{outputs['identity']}-[0-9a-f]{{8}}\\.raw", outputs["objectKey"])
        snapshot_id = run.plain(ready, "inputs")["snapshotId"]
        assert fake_vultr.fetched[snapshot_id] == Path(outputs["path"]).read_bytes(), "Vultr fetched the baked image"
        assert [s for i, s in fake_vultr.answers if i == snapshot_id] == ["pending", "pending", "complete"]
        waited = run.plain(ready)
        assert (waited["snapshotId"], waited["status"]) == (snapshot_id, "complete") and "apiKey" not in waited
        # The upload is deleted, and the instance made, only once the snapshot is complete.
        assert run.at("created", ready) < run.at("create", release)
        assert run.at("created", ready) < run.at("register", instance)
        assert run.outputs["hosts"][host]["imageId"] == snapshot_id
    assert bucket.list_objects_v2(Bucket="mailsite-images").get("KeyCount", 0) == 0, "nothing stays in the bucket"
    assert fake_vultr.keys == {f"Bearer {API_KEY}"}
    _secrets_absent(run.in_clear())
    _secrets_absent(log)


def test_state_holds_the_keys_only_as_secrets_and_no_provider_pickles_one(tmp_path, null_bakes, moto_endpoint, bucket, fake_vultr):
    settings = _vultr(tmp_path, moto_endpoint)
    with provider_process({**null_bakes, API_OVERRIDE: fake_vultr.url}) as provider:
        provider.configure({"mailsite:target": "vultr", "vultr:apiKey": API_KEY}, secret_keys=("vultr:apiKey",))
        run = run_program(settings, CloudMocks(fake_vultr), provider, config={"vultr:apiKey": API_KEY})
    # The engine writes each key into state only inside a secret, where the stack's secrets provider encrypts it.
    _secrets_absent(run.in_clear())
    for host in HOSTS:
        (bake,) = run.urns(f"-{host}-image-bake")
        (ready,) = run.urns(f"-{host}-image-ready")
        assert run.plain(ready, "inputs")["apiKey"] == API_KEY, "the wait reads the key the Vultr provider uses"
        assert rpc.is_rpc_secret(rpc.deserialize_properties(run.state[ready].inputs)["apiKey"])
        assert rpc.is_rpc_secret(rpc.deserialize_properties(run.state[bake].outputs)["url"]), "the URL reads the image"
    # Each provider travels pickled (dill, by reference); a key caught in a closure or an attribute
    # would travel with it into every Check, Diff and Delete.
    pickles = {run.plain(urn, which)["__provider"] for urn in run.urns("") for which in ("inputs", "outputs")
               if "__provider" in run.state[urn].inputs.fields}
    for pickle in pickles:
        _secrets_absent(base64.b64decode(pickle).decode("latin-1"))
    assert len(pickles) == 3, "one pickle per provider class: nothing of a host's own travels in it"


def _ready_inputs(tmp_path, moto_endpoint, fake_vultr, provider) -> struct_pb2.Struct:
    """mx2's snapshot wait, as the program sends it (through a whole up of the site)."""
    run = run_program(_vultr(tmp_path, moto_endpoint), CloudMocks(fake_vultr), provider, config={"vultr:apiKey": API_KEY})
    (ready,) = run.urns("-mx2-image-ready")
    return run.checked[ready]


def _wait(provider, inputs: struct_pb2.Struct, snapshot_id: str, **changes) -> str:
    request = struct_pb2.Struct()
    request.CopyFrom(inputs)
    request.update({"snapshotId": snapshot_id, **changes})
    with pytest.raises(grpc.RpcError) as failed:
        provider.stub.Create(provider_pb2.CreateRequest(urn="urn:pulumi:test::mailsite::wait::mx2", properties=request))
    # The engine shows the provider's traceback; its last line is what the user reads.
    return failed.value.details().strip().splitlines()[-1]


def test_snapshot_that_vultr_fails_or_never_completes_stops_the_up_with_its_id(tmp_path, null_bakes, moto_endpoint, bucket, fake_vultr):
    with provider_process({**null_bakes, API_OVERRIDE: fake_vultr.url}) as provider:
        inputs = _ready_inputs(tmp_path, moto_endpoint, fake_vultr, provider)
        fake_vultr.statuses["snap-failed"] = ["pending", "failed"]
        fake_vultr.statuses["snap-stuck"] = ["pending"]
        failed = _wait(provider, inputs, "snap-failed")
        stuck = _wait(provider, inputs, "snap-stuck", timeoutSeconds=3)
        unknown = _wait(provider, inputs, "snap-gone")
        log = provider.log()
    error = "mailsite.images.vultr_snapshots.SnapshotError: mx2: Vultr snapshot"
    remake = f"pulumi up --replace '{inputs['bakeUrn']}'"
    assert inputs["bakeUrn"].endswith("::mail-mx2-image-bake")
    assert failed == (f"{error} snap-failed is 'failed', not complete: Vultr could not make it from the uploaded image; "
                      f"upload it again with {remake}")
    assert stuck == (f"{error} snap-stuck is still pending after 3 seconds; run pulumi up again to keep waiting, "
                     f"or if Vultr shows it stuck, {remake}")
    assert unknown == f"{error} snap-gone: HTTP 404 Invalid snapshot ID."
    _secrets_absent(log)


def test_wrong_api_key_is_named_without_showing_it(tmp_path, null_bakes, moto_endpoint, bucket, fake_vultr):
    with provider_process({**null_bakes, API_OVERRIDE: fake_vultr.url}) as provider:
        inputs = _ready_inputs(tmp_path, moto_endpoint, fake_vultr, provider)
        snapshot_id = inputs["snapshotId"]
        refused = _wait(provider, inputs, snapshot_id, apiKey="WRONG-KEY-0123")
        log = provider.log()
    assert refused == ("mailsite.images.vultr_snapshots.SnapshotError: mx2: Vultr refused the API key while checking "
                       f"snapshot {snapshot_id} (HTTP 401 Invalid API token.); set a valid vultr:apiKey")
    assert "WRONG-KEY-0123" not in refused + log


def test_preview_with_unknown_addresses_checks_every_image_without_baking(tmp_path, null_bakes, moto_endpoint, fake_vultr):
    settings = _vultr(tmp_path, moto_endpoint)
    with provider_process({**null_bakes, API_OVERRIDE: fake_vultr.url}) as provider:
        provider.configure({"mailsite:target": "vultr", "vultr:apiKey": API_KEY}, secret_keys=("vultr:apiKey",))
        preview = run_program(settings, CloudMocks(fake_vultr), provider, preview=True, config={"vultr:apiKey": API_KEY})
    assert preview.ops("create") == [] and not (tmp_path / "cache").exists(), "a preview bakes nothing"
    for host in HOSTS:
        (bake,) = preview.urns(f"-{host}-image-bake")
        (ready,) = preview.urns(f"-{host}-image-ready")
        # Reserved addresses are not known before they exist, so neither is the image.
        assert preview.checked[bake]["identity"] == rpc.UNKNOWN
        assert preview.checked[ready]["snapshotId"] == rpc.UNKNOWN
    assert fake_vultr.answers == []


def test_diff_with_an_unknown_identity_is_a_replacement_not_an_error(tmp_path, null_bakes):
    with provider_process(null_bakes) as provider:
        provider.configure({"mailsite:target": "libvirt"})
        run = run_program(_libvirt(tmp_path), CloudMocks(), provider)
        (bake,) = run.urns("-mx2-image-bake")
        old = run.state[bake]
        news = unwrapped(old.inputs)  # the engine sends no secrets to a dynamic provider
        news.update({"identity": rpc.UNKNOWN})
        diff = provider.stub.Diff(provider_pb2.DiffRequest(id=old.id, urn=bake, olds=unwrapped(old.outputs), news=news,
                                                           old_inputs=unwrapped(old.inputs)))
    assert diff.changes == provider_pb2.DiffResponse.DIFF_SOME and list(diff.replaces) == ["identity"]


def test_a_busy_vultr_api_is_asked_again_with_growing_pauses(fake_vultr):
    fake_vultr.statuses["snap-busy"] = ["503", "429", "pending", "complete"]
    pauses: list[float] = []
    found = wait_until_complete("snap-busy", API_KEY, timeout_seconds=600, api=fake_vultr.url, remake="-", sleep=pauses.append)
    assert found["status"] == "complete" and found["id"] == "snap-busy"
    assert pauses == [1.0, 2.0, 4.0]


def test_a_site_made_before_the_wait_previews_it_without_replacing_instances(tmp_path, null_bakes, moto_endpoint, bucket, fake_vultr):
    settings = _vultr(tmp_path, moto_endpoint)
    with provider_process({**null_bakes, API_OVERRIDE: fake_vultr.url}) as provider:
        made = run_program(settings, CloudMocks(fake_vultr), provider, config={"vultr:apiKey": API_KEY})
        # State as the previous version left it: no wait, releases keyed by the object alone.
        before = copy.copy(made)
        before.state = {urn: r for urn, r in made.state.items() if not urn.endswith("-image-ready")}
        for urn in before.urns("-image-release"):
            old = before.state[urn]
            outputs = struct_pb2.Struct()
            outputs.CopyFrom(old.outputs)
            del outputs["snapshotId"]
            before.state[urn] = Registered(old.id, old.inputs, outputs)
        preview = run_program(settings, CloudMocks(fake_vultr), provider, preview=True, previous=before,
                              config={"vultr:apiKey": API_KEY})
    for host in HOSTS:
        (instance,) = preview.urns(f"-{host}-instance")
        (ready,) = preview.urns(f"-{host}-image-ready")
        # A new wait previews with its inputs as its outputs, so the instance sees the same snapshot.
        assert preview.plain(instance, "inputs")["snapshotId"] == made.plain(instance, "inputs")["snapshotId"]
        assert preview.plain(ready)["snapshotId"] == made.plain(ready)["snapshotId"]
    assert all(not preview.diffs[u].replaces for u in preview.urns("-image-bake"))


def test_an_image_whose_snapshot_failed_leaves_nothing_in_the_bucket_once_destroyed(tmp_path, null_bakes, moto_endpoint, bucket, fake_vultr):
    # The upload holds the host's keys; with no complete snapshot no release ever deletes it.
    fake_vultr.script = ["pending", "failed"]
    with provider_process({**null_bakes, API_OVERRIDE: fake_vultr.url}) as provider:
        provider.configure({"mailsite:target": "vultr", "vultr:apiKey": API_KEY}, secret_keys=("vultr:apiKey",))
        with pytest.raises(ProviderFailed, match="is 'failed', not complete") as raised:
            run_program(_vultr(tmp_path, moto_endpoint), CloudMocks(fake_vultr), provider, config={"vultr:apiKey": API_KEY})
        failed = raised.value.run
        assert failed.urns("-image-ready") == [] and len(failed.urns("-image-bake")) == 3
        assert bucket.list_objects_v2(Bucket="mailsite-images").get("KeyCount", 0) == 3
        deleted = destroy(failed, provider)
    assert set(failed.urns("-image-bake")) <= set(deleted)
    assert bucket.list_objects_v2(Bucket="mailsite-images").get("KeyCount", 0) == 0, "the uploads go with the stack"


def test_a_wait_that_timed_out_waits_again_for_the_same_snapshot_on_the_next_up(tmp_path, null_bakes, moto_endpoint, bucket, fake_vultr, monkeypatch):
    settings = _vultr(tmp_path, moto_endpoint)
    fake_vultr.script = ["pending"]  # Vultr still fetching when the wait gives up
    monkeypatch.setattr(vultr_snapshots, "READY_MINUTES", 0.05)
    with provider_process({**null_bakes, API_OVERRIDE: fake_vultr.url}) as provider:
        provider.configure({"mailsite:target": "vultr", "vultr:apiKey": API_KEY}, secret_keys=("vultr:apiKey",))
        with pytest.raises(ProviderFailed, match="is still pending after 3 seconds; run pulumi up again") as raised:
            run_program(settings, CloudMocks(fake_vultr), provider, config={"vultr:apiKey": API_KEY})
        stopped = raised.value.run
        snapshots = {urn: stopped.state[urn].id for urn in stopped.urns("-image-snapshot")}
        assert len(snapshots) == 3 and stopped.urns("-instance") == []
        for snapshot_id in snapshots.values():
            fake_vultr.statuses[snapshot_id] = ["complete"]  # Vultr has finished meanwhile
        monkeypatch.setattr(vultr_snapshots, "READY_MINUTES", READY_MINUTES)
        again = run_program(settings, CloudMocks(fake_vultr), provider, previous=stopped, config={"vultr:apiKey": API_KEY})
    # Nothing baked, uploaded or snapshotted again: the new wait asks about the snapshot in state.
    assert not [u for u in again.ops("create") if u.endswith("-image-bake")]
    assert {urn: again.state[urn].id for urn in again.urns("-image-snapshot")} == snapshots
    for host in HOSTS:
        (ready,) = again.urns(f"-{host}-image-ready")
        (snapshot,) = again.urns(f"-{host}-image-snapshot")
        assert ready in again.ops("created") and again.plain(ready)["snapshotId"] == snapshots[snapshot]
        assert again.outputs["hosts"][host]["imageId"] == snapshots[snapshot]
    assert bucket.list_objects_v2(Bucket="mailsite-images").get("KeyCount", 0) == 0, "released once complete"


def test_refresh_leaves_every_image_resource_as_it_was(tmp_path, null_bakes, moto_endpoint, bucket, fake_vultr):
    # `pulumi refresh` calls Read with the outputs in state; these providers keep the SDK's Read,
    # which answers them unchanged: a refresh neither rebakes, re-uploads nor asks Vultr.
    with provider_process({**null_bakes, API_OVERRIDE: fake_vultr.url}) as provider:
        provider.configure({"mailsite:target": "vultr", "vultr:apiKey": API_KEY}, secret_keys=("vultr:apiKey",))
        run = run_program(_vultr(tmp_path, moto_endpoint), CloudMocks(fake_vultr), provider, config={"vultr:apiKey": API_KEY})
        asked = len(fake_vultr.answers)
        dynamic = [urn for urn in run.urns("") if "__provider" in run.state[urn].inputs.fields]
        assert len(dynamic) == 9
        for urn in dynamic:
            old = run.state[urn]
            read = provider.stub.Read(provider_pb2.ReadRequest(id=old.id, urn=urn, properties=unwrapped(old.outputs),
                                                               inputs=unwrapped(old.inputs)))
            assert read.id == old.id and rpc.deserialize_properties(read.properties) == run.plain(urn)
            assert not read.HasField("inputs"), "the inputs in state stay as they are"
    assert len(fake_vultr.answers) == asked


def test_a_provider_pickled_by_an_earlier_version_still_deletes_and_refreshes(tmp_path):
    """State holds each dynamic resource's provider pickled by module and class name, and a
    delete or a refresh unpickles the one in state, not the program's: a provider class moved
    without an alias at its old path fails every destroy and replacement of a stack made before."""
    pickles = json.loads(OLD_PICKLES.read_text())
    zone = tmp_path / "example.org.zone"
    zone.write_text("; a zone file an earlier up wrote\n")
    with provider_process({}) as provider:
        provider.configure({"mailsite:target": "vultr"})
        for path, pickle in pickles.items():
            module, name = path.rsplit(".", 1)
            raw = base64.b64decode(pickle)
            assert module.encode() in raw and name.encode() in raw, f"{path}: the fixture names another class"
            outputs = struct_pb2.Struct()
            outputs.update({"__provider": pickle, "path": str(zone)})
            urn = f"urn:pulumi:test::mailsite::pulumi-python:dynamic:Resource::{name}"
            read = provider.stub.Read(provider_pb2.ReadRequest(id=f"{name}-id", urn=urn, properties=outputs, inputs=outputs))
            assert read.id == f"{name}-id", path
            provider.stub.Delete(provider_pb2.DeleteRequest(id=f"{name}-id", urn=urn, properties=outputs, old_inputs=outputs))
    assert not zone.exists(), "the zone file provider pickled at its old path ran its own delete"
