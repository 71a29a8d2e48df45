"""The engine's side of the dynamic provider protocol, for tests: the Pulumi CLI cannot be
installed here, so this plays the engine between the real program and the real provider process.

- The program runs as it does under `pulumi up`, with the SDK serializing each resource's inputs
  (secrets wrapped, Nones dropped, the provider dill-pickled into `__provider`); only the resource
  monitor is ours.
- The dynamic providers run in `python -m pulumi.dynamic`, started from the project directory as
  the engine starts it, and are spoken to over gRPC (provider.proto).
- Between the two, this does what the engine does with a provider that answered Configure with
  acceptSecrets=false (pkg/resource/plugin/provider_plugin.go): secrets unwrapped on the way in
  (news, olds, outputs), unknowns kept only in a preview; on the way back, what Check and Create
  answer takes the secret bit of the input of the same name (annotateSecrets), and the outputs
  named in additionalSecretOutputs are secret too. Check, then Diff against the previous run's
  state, then Create (in a preview, the checked inputs stand for the outputs, as for a provider
  without preview support), Delete of what a replacement left behind. State holds what the
  engine would write: secrets wrapped, so `Run.in_clear` is what a state file shows in clear. Other resources' outputs come from the given Mocks, or from the
  previous run's state when their inputs did not change; in a preview, a new or changed resource
  answers with its inputs only (everything else unknown), as the engine does.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
import grpc
import pulumi
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc, resource_pb2

from tests.sites import ROOT

DYNAMIC = "pulumi-python:dynamic:Resource"
PROGRAM = ROOT / "__main__.py"


class ProviderProcess:
    """`python -m pulumi.dynamic` from the project directory; its port from its first line."""

    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen([sys.executable, "-m", "pulumi.dynamic"], cwd=ROOT, env={**os.environ, **env},
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        port = self.process.stdout.readline().strip()
        if not port.isdigit():
            self.close()
            raise RuntimeError(f"the dynamic provider did not start: {port!r} {self.process.stderr.read()}")
        self.output: list[str] = []  # everything it prints after the port: the engine logs it
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=lambda s=stream: self.output.extend(s), daemon=True).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)

    def configure(self, config: dict[str, str], secret_keys: tuple[str, ...] = ()) -> provider_pb2.ConfigureResponse:
        """The stack's config as the engine sends it: secret values wrapped (KeepSecrets: true)."""
        args = struct_pb2.Struct()
        args.update({k: rpc.wrap_rpc_secret(v) if k in secret_keys else v for k, v in config.items()})
        return self.stub.Configure(provider_pb2.ConfigureRequest(
            variables=config, args=args, acceptSecrets=True, acceptResources=True,
            sends_old_inputs=True, sends_old_inputs_to_delete=True))

    def log(self) -> str:
        return "".join(self.output)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def provider_process(env: dict[str, str]):
    process = ProviderProcess(env)
    try:
        yield process
    finally:
        process.close()


def unwrapped(values: struct_pb2.Struct) -> struct_pb2.Struct:
    return rpc._unwrap_rpc_secret_struct_properties(values)[0]  # the SDK's own unwrapping


def for_provider(sent: struct_pb2.Struct, preview: bool) -> struct_pb2.Struct:
    """What the engine passes on of what the program sent: no secret wrappers (the dynamic
    provider does not accept secrets); unknowns only while previewing."""
    plain = unwrapped(sent)
    if not preview:
        assert not rpc.struct_contains_unknowns(plain), "an update never sends unknowns"
    return plain


def _has_secret(value) -> bool:
    if rpc.is_rpc_secret(value):
        return True
    if isinstance(value, dict):
        return any(_has_secret(v) for v in value.values())
    return isinstance(value, list) and any(_has_secret(v) for v in value)


def _mark(outs: dict, ins: dict) -> None:
    # annotateSecrets: objects on both sides are compared key by key; any other value whose
    # input held a secret anywhere becomes one secret.
    for key, given in ins.items():
        if key not in outs:
            continue
        answered = outs[key]
        if isinstance(answered, dict) and isinstance(given, dict) and not rpc.is_rpc_secret(answered) \
                and not rpc.is_rpc_secret(given):
            _mark(answered, given)
        elif not rpc.is_rpc_secret(answered) and _has_secret(given):
            outs[key] = rpc.wrap_rpc_secret(answered)


def keep_secret_bits(answer: struct_pb2.Struct, given: struct_pb2.Struct, also: tuple[str, ...] = ()) -> struct_pb2.Struct:
    """What the provider answered, with the secret bit of the inputs it was given without it."""
    outs = json_format.MessageToDict(answer)
    _mark(outs, json_format.MessageToDict(given))
    for key in also:
        if key in outs:
            outs[key] = rpc.wrap_rpc_secret(outs[key])
    marked = struct_pb2.Struct()
    marked.update(outs)
    return marked


def _hidden(value):
    if rpc.is_rpc_secret(value):
        return "[secret]"
    if isinstance(value, dict):
        return {k: _hidden(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hidden(v) for v in value]
    return value


class ProviderFailed(Exception):
    """A provider call the engine would report as the resource's error."""


@dataclass
class Registered:
    id: str
    inputs: struct_pb2.Struct
    outputs: struct_pb2.Struct


@dataclass
class Run:
    """What one `pulumi up` or preview did, resource by resource."""

    state: dict[str, Registered] = field(default_factory=dict)
    calls: list[tuple[float, str, str]] = field(default_factory=list)  # (time, operation, urn)
    diffs: dict[str, provider_pb2.DiffResponse] = field(default_factory=dict)
    checked: dict[str, struct_pb2.Struct] = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    def urns(self, suffix: str) -> list[str]:
        return sorted(urn for urn in self.state if urn.endswith(suffix))

    def ops(self, operation: str) -> list[str]:
        return [urn for _, op, urn in self.calls if op == operation]

    def at(self, operation: str, urn: str) -> float:
        return next(t for t, op, u in self.calls if op == operation and u == urn)

    def plain(self, urn: str, which: str = "outputs") -> dict:
        """The values as the program reads them, secrets unwrapped."""
        return rpc.deserialize_properties(unwrapped(getattr(self.state[urn], which)))

    def in_clear(self) -> str:
        """Every resource's inputs and outputs as a state file holds them outside its encrypted secrets."""
        shown = {urn: {which: _hidden(json_format.MessageToDict(getattr(r, which))) for which in ("inputs", "outputs")}
                 for urn, r in self.state.items()}
        return json.dumps(shown, sort_keys=True)


class Engine(MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks, provider: ProviderProcess, preview: bool, previous: Run | None):
        super().__init__(mocks)
        self.provider, self.preview = provider, preview
        self.previous = previous.state if previous else {}
        self.run = Run()
        self.lock = threading.Lock()
        self.in_flight, self.steps = threading.Condition(), 0

    def _note(self, operation: str, urn: str) -> None:
        with self.lock:
            self.run.calls.append((time.monotonic(), operation, urn))

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == DYNAMIC:
            return self._dynamic(urn, request)
        old = self.previous.get(urn)
        if old is not None and old.inputs == request.object:
            self.run.state[urn] = old  # unchanged: the engine keeps its state
            return resource_pb2.RegisterResourceResponse(urn=urn, id=old.id, object=old.outputs)
        if self.preview:
            # A new or changed resource in a preview: its inputs and nothing else are known.
            self.run.state[urn] = Registered(old.id if old else "", request.object, request.object)
            return resource_pb2.RegisterResourceResponse(urn=urn, id=old.id if old else "", object=request.object)
        self._note("register", urn)
        response = super().RegisterResource(request)
        self.run.state[urn] = Registered(response.id, request.object, response.object)
        return response

    def _dynamic(self, urn: str, request) -> resource_pb2.RegisterResourceResponse:
        with self.in_flight:
            self.steps += 1
        try:
            return self._step(urn, request)
        except grpc.RpcError as error:
            # What `pulumi up` prints last: the provider's exception line.
            raise ProviderFailed(f"{urn}: {error.details().strip().splitlines()[-1]}") from None
        finally:
            with self.in_flight:
                self.steps -= 1
                self.in_flight.notify_all()

    def settle(self) -> None:
        """After a failure the engine starts nothing new but lets the steps under way finish."""
        with self.in_flight:
            assert self.in_flight.wait_for(lambda: self.steps == 0, timeout=600), "a step never finished"

    def _step(self, urn: str, request) -> resource_pb2.RegisterResourceResponse:
        stub, old = self.provider.stub, self.previous.get(urn)
        news = for_provider(request.object, self.preview)
        olds, old_inputs = (unwrapped(old.outputs), unwrapped(old.inputs)) if old else (None, struct_pb2.Struct())
        self._note("check", urn)
        check = stub.Check(provider_pb2.CheckRequest(urn=urn, name=request.name, type=request.type,
                                                     olds=old_inputs, news=news))
        assert not check.failures, check.failures
        checked = check.inputs
        self.run.checked[urn] = checked  # as the provider answered, without the secret bits
        inputs = keep_secret_bits(checked, request.object)  # what the engine keeps as the inputs
        replace, update = old is None, False
        if old is not None:
            self._note("diff", urn)
            diff = stub.Diff(provider_pb2.DiffRequest(id=old.id, urn=urn, name=request.name, type=request.type,
                                                      olds=olds, news=checked, old_inputs=old_inputs))
            self.run.diffs[urn] = diff
            replace = bool(diff.replaces)
            update = not replace and diff.changes == provider_pb2.DiffResponse.DIFF_SOME
        secret = tuple(request.additionalSecretOutputs)
        if not replace and update and not self.preview:
            self._note("update", urn)
            updated = stub.Update(provider_pb2.UpdateRequest(id=old.id, urn=urn, name=request.name, type=request.type,
                                                             olds=olds, news=checked, old_inputs=old_inputs))
            registered = Registered(old.id, inputs, keep_secret_bits(updated.properties, inputs, secret))
        elif not replace:
            # A preview of an update answers with the new inputs, as for a create.
            registered = Registered(old.id, inputs, keep_secret_bits(inputs, inputs, secret) if update else old.outputs)
        elif self.preview:
            registered = Registered("", inputs, keep_secret_bits(inputs, inputs, secret))
        else:
            self._note("create", urn)
            created = stub.Create(provider_pb2.CreateRequest(urn=urn, name=request.name, type=request.type, properties=checked))
            self._note("created", urn)
            registered = Registered(created.id, inputs, keep_secret_bits(created.properties, inputs, secret))
        self.run.state[urn] = registered
        return resource_pb2.RegisterResourceResponse(urn=urn, id=registered.id, object=registered.outputs)

    def finish(self) -> None:
        """Create-before-delete: what a replacement or a removal left behind goes last."""
        if self.preview:
            return
        for urn, old in self.previous.items():
            if "__provider" not in old.inputs.fields:
                continue  # not a dynamic resource
            current = self.run.state.get(urn)
            if current is None or current.id != old.id:
                self._note("delete", urn)
                self.provider.stub.Delete(provider_pb2.DeleteRequest(id=old.id, urn=urn, properties=unwrapped(old.outputs),
                                                                     old_inputs=unwrapped(old.inputs)))


def run_program(settings: dict, mocks: pulumi.runtime.Mocks, provider: ProviderProcess, *, preview: bool = False,
                previous: Run | None = None, config: dict[str, str] | None = None) -> Run:
    """The project's __main__.py with these `mailsite:` settings, through the engine above."""
    engine = Engine(mocks, provider, preview, previous)
    pulumi.runtime.set_mocks(mocks, project="mailsite", stack="test", preview=preview, monitor=engine)
    pulumi.runtime.set_all_config({**{f"mailsite:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()},
                                   **(config or {})})

    @pulumi.runtime.test
    def program():
        mail = runpy.run_path(str(PROGRAM), run_name="mailsite_program")["main"]()
        return pulumi.Output.all(mail.host_outputs).apply(lambda values: engine.run.outputs.update(hosts=values[0]))

    try:
        program()
    except ProviderFailed as failed:
        engine.settle()
        failed.run = engine.run  # what the engine saves of a failed up: what was made until it stopped
        raise
    engine.finish()
    return engine.run


def destroy(previous: Run, provider: ProviderProcess) -> list[str]:
    """`pulumi destroy` of the dynamic resources: Delete with the outputs in state, dependents
    first (the reverse of the order they were made in); the URNs deleted, in order."""
    made = [urn for _, op, urn in previous.calls if op == "created"]
    order = [urn for urn in reversed(made) if urn in previous.state]
    order += [urn for urn in previous.state if urn not in order and "__provider" in previous.state[urn].inputs.fields]
    for urn in order:
        old = previous.state[urn]
        provider.stub.Delete(provider_pb2.DeleteRequest(id=old.id, urn=urn, properties=unwrapped(old.outputs),
                                                        old_inputs=unwrapped(old.inputs)))
    return order
