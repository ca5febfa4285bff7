"""Registering a servicer whose responses may be pre-encoded bytes.

Services that build responses by concatenating stored or shared encodings
(the gateway's event frames, the history service's pages) return bytes; every
other method returns a message as usual.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor, message, message_factory


def _serialize(response: bytes | message.Message) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def passthrough_handler(service: descriptor.ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler[Any, Any]:
    """`service`'s methods on `servicer` (by method name), with bytes-or-message responses."""
    handlers = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        if method.client_streaming and method.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        elif method.client_streaming:
            make = grpc.stream_unary_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name), request_deserializer=request_type.FromString, response_serializer=_serialize
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
