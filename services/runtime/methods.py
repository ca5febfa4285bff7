"""What the contract says about each RPC: its shape and access policy."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TypeAlias

from google.protobuf import descriptor

from parley.api.v1 import annotations_pb2

AccessPolicy: TypeAlias = annotations_pb2.AccessPolicy.ValueType


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    full_name: str  # "/parley.identity.v1.IdentityService/Login"
    service: str
    method: str
    access: AccessPolicy
    client_streaming: bool
    server_streaming: bool


# Infrastructure services anyone may call; any other method not described by
# the contract needs a token, so a servicer registered without its descriptor
# is never open by accident.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})


def methods_of(service: descriptor.ServiceDescriptor) -> list[MethodInfo]:
    return [
        MethodInfo(
            full_name=f"/{service.full_name}/{m.name}",
            service=service.full_name,
            method=m.name,
            access=m.GetOptions().Extensions[annotations_pb2.access],
            client_streaming=m.client_streaming,
            server_streaming=m.server_streaming,
        )
        for m in service.methods
    ]


class MethodTable:
    """Looks up the MethodInfo of a call by its full method name."""

    def __init__(self, services: Iterable[descriptor.ServiceDescriptor]) -> None:
        self._by_name = {m.full_name: m for s in services for m in methods_of(s)}

    def lookup(self, full_name: str) -> MethodInfo:
        info = self._by_name.get(full_name)
        if info is not None:
            return info
        service, _, method = full_name.strip("/").partition("/")
        access = (
            annotations_pb2.ACCESS_POLICY_PUBLIC
            if service in OPEN_SERVICES
            else annotations_pb2.ACCESS_POLICY_UNSPECIFIED
        )
        return MethodInfo(full_name, service, method, access, client_streaming=False, server_streaming=False)
