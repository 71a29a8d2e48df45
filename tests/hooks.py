"""The engine's side of resource hooks, for tests: what a program registers, and calling a hook
the way the engine does (over the program's callback server, by gRPC, with the resource's old
state as a protobuf Struct)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import struct_pb2
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import callback_pb2, callback_pb2_grpc, resource_pb2


@dataclass
class Registered:
    hooks: dict = field(default_factory=dict)  # name -> RegisterResourceHookRequest (holds the callback)
    before_delete: dict = field(default_factory=dict)  # resource name -> hook names, as state records them
    dependencies: dict = field(default_factory=dict)  # resource name -> URNs it depends on
    urns: dict = field(default_factory=dict)  # resource name -> URN
    types: dict = field(default_factory=dict)  # resource name -> type token
    parents: dict = field(default_factory=dict)  # resource name -> parent URN ('' for the stack)
    ignore_changes: dict = field(default_factory=dict)  # resource name -> input names the engine diffs without
    delete_before_replace: dict = field(default_factory=dict)  # resource name -> replaced old-first
    property_dependencies: dict = field(default_factory=dict)  # resource name -> URNs its inputs come from
    protect: dict = field(default_factory=dict)  # resource name -> whether the engine refuses to delete it
    retain_on_delete: dict = field(default_factory=dict)  # resource name -> whether a delete only forgets it


class HookMonitor(MockMonitor):
    """Pulumi's mock monitor, keeping what the engine would keep: hook registrations, each
    resource's hook names and dependencies."""

    def __init__(self, mocks, registered: Registered):
        super().__init__(mocks)
        self.registered = registered

    def RegisterResourceHook(self, request):
        self.registered.hooks[request.name] = request
        return super().RegisterResourceHook(request)

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        self.registered.before_delete[request.name] = list(request.hooks.before_delete)
        self.registered.dependencies[request.name] = list(request.dependencies)
        self.registered.urns[request.name] = response.urn
        self.registered.types[request.name] = request.type
        self.registered.parents[request.name] = request.parent
        self.registered.ignore_changes[request.name] = list(request.ignoreChanges)
        self.registered.delete_before_replace[request.name] = request.deleteBeforeReplace
        self.registered.property_dependencies[request.name] = {urn for deps in request.propertyDependencies.values() for urn in deps.urns}
        self.registered.protect[request.name] = request.protect
        self.registered.retain_on_delete[request.name] = request.retainOnDelete
        return response


def _struct(values: dict | None) -> struct_pb2.Struct | None:
    if values is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def call_before_delete(registration, urn: str, resource_id: str, old_inputs: dict, old_outputs: dict) -> str:
    """Run a registered hook as the engine's DeleteStep does; returns the hook's error ('' if none)."""
    name = urn.rsplit("::", 1)[-1]
    typ = urn.split("::")[2].rsplit("$", 1)[-1]
    request = resource_pb2.ResourceHookRequest(urn=urn, id=resource_id, name=name, type=typ,
                                               old_inputs=_struct(old_inputs), old_outputs=_struct(old_outputs))
    async with grpc.aio.insecure_channel(registration.callback.target) as channel:
        stub = callback_pb2_grpc.CallbacksStub(channel)
        answer = await stub.Invoke(callback_pb2.CallbackInvokeRequest(token=registration.callback.token,
                                                                       request=request.SerializeToString()))
    return resource_pb2.ResourceHookResponse.FromString(answer.response).error
