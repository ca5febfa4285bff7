"""Access policies read from the contract."""

from __future__ import annotations

import pytest

from parley.api.v1 import annotations_pb2
from parley.identity.v1 import identity_pb2
from services.runtime.methods import MethodTable

IDENTITY = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]


@pytest.mark.parametrize(
    ("method", "access"),
    [
        ("Login", annotations_pb2.ACCESS_POLICY_PUBLIC),
        ("Logout", annotations_pb2.ACCESS_POLICY_USER),
        ("RotateSigningKey", annotations_pb2.ACCESS_POLICY_SERVICE),
        ("WhoAmI", annotations_pb2.ACCESS_POLICY_UNSPECIFIED),
    ],
)
def test_policy_comes_from_the_method_option(method: str, access: int) -> None:
    info = MethodTable([IDENTITY]).lookup(f"/parley.identity.v1.IdentityService/{method}")
    assert info.access == access
    assert info.service == "parley.identity.v1.IdentityService"


def test_health_and_reflection_are_open() -> None:
    table = MethodTable([])
    assert table.lookup("/grpc.health.v1.Health/Check").access == annotations_pb2.ACCESS_POLICY_PUBLIC
    reflection = table.lookup("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert reflection.access == annotations_pb2.ACCESS_POLICY_PUBLIC


def test_a_method_the_contract_does_not_describe_needs_a_token() -> None:
    info = MethodTable([]).lookup("/parley.room.v1.RoomService/ListRooms")
    assert info.access == annotations_pb2.ACCESS_POLICY_UNSPECIFIED
    assert (info.service, info.method) == ("parley.room.v1.RoomService", "ListRooms")
