"""The identity service as a module of a server, and on its own."""

from __future__ import annotations

from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from services.identity.accounts import Accounts
from services.identity.prekeys import Prekeys
from services.identity.revocations import RevocationFeed
from services.identity.servicer import IdentityServicer
from services.identity.sessions import SessionIssuer
from services.identity.storage import open_identity_storage
from services.identity.token_signing import TokenSigner
from services.runtime.config import Config
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry

SERVICE = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]


async def identity_module(config: Config) -> ServiceModule:
    storage = await open_identity_storage(config)
    signer = TokenSigner(storage, config.auth)
    try:
        await signer.load()
    except BaseException:
        await storage.close()
        raise
    servicer = IdentityServicer(
        Accounts(storage),
        Prekeys(storage),
        SessionIssuer(storage, signer, config.auth),
        signer,
        config.auth,
        RevocationFeed(),
        trust_forwarded_client=config.server.trust_forwarded_client,
    )
    return ServiceModule(
        services=[SERVICE],
        register=lambda server: identity_pb2_grpc.add_IdentityServiceServicer_to_server(servicer, server),
        close=storage.close,
    )


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The identity service alone, bound and started."""
    return await serve_modules(
        config, [identity_module], process_name="identity", identity_address=None, telemetry=telemetry
    )
