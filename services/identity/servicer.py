"""gRPC face of the identity service: requests in, domain calls, responses out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from services.identity.accounts import Accounts
from services.identity.prekeys import Bundle, Prekeys
from services.identity.revocations import RevocationFeed
from services.identity.sessions import IssuedSession, SessionIssuer
from services.identity.storage import DeviceListRow, DeviceRow, UserRow
from services.identity.token_signing import PublishedKey, TokenSigner
from services.identity.validation import check_username
from services.runtime.client_address import client_address
from services.runtime.config import AuthConfig
from services.runtime.errors import invalid_field, rate_limited
from services.runtime.grpc_types import Context
from services.runtime.principal import current_principal, require_user
from services.runtime.ratelimit import RateLimiter
from services.runtime.revocations import token_life_after_revocation
from services.runtime.timestamps import to_timestamp
from services.runtime.uncancellable import uncancellable

# Fetches of one user's bundles by one caller per minute (a new session per device needs one).
PREKEY_FETCHES_OF_ONE_USER_PER_MINUTE = 10


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(
        self,
        accounts: Accounts,
        prekeys: Prekeys,
        sessions: SessionIssuer,
        signer: TokenSigner,
        auth: AuthConfig,
        revocations: RevocationFeed,
        trust_forwarded_client: bool = False,
    ) -> None:
        self._trust_forwarded_client = trust_forwarded_client
        self._accounts = accounts
        self._prekeys = prekeys
        self._sessions = sessions
        self._signer = signer
        self._auth = auth
        self._revocations = revocations
        self._registrations = RateLimiter(auth.registrations_per_minute, 60.0)
        self._device_additions = RateLimiter(auth.device_additions_per_hour, 3600.0)
        self._prekey_fetches = RateLimiter(auth.prekey_fetches_per_minute, 60.0)
        self._prekey_fetches_of = RateLimiter(PREKEY_FETCHES_OF_ONE_USER_PER_MINUTE, 60.0)

    async def RegisterUser(
        self, request: identity_pb2.RegisterUserRequest, context: Context
    ) -> identity_pb2.RegisterUserResponse:
        address = client_address(context, self._trust_forwarded_client)
        wait = self._registrations.try_acquire(address)
        if wait:
            raise rate_limited(f"too many accounts registered from {address}; retry in {wait:.1f}s", wait)
        user, device = await self._accounts.register(request.username, request.user_signing_key, request.device)
        return identity_pb2.RegisterUserResponse(user=_user(user), device=_device(device))

    async def CreateLoginChallenge(
        self, request: identity_pb2.CreateLoginChallengeRequest, context: Context
    ) -> identity_pb2.CreateLoginChallengeResponse:
        check_username(request.username)
        if not request.device_id:
            raise invalid_field("device_id", "is required")
        challenge = await self._sessions.create_challenge(
            request.username, request.device_id, client_address(context, self._trust_forwarded_client)
        )
        return identity_pb2.CreateLoginChallengeResponse(
            challenge_id=challenge.challenge_id,
            nonce=challenge.nonce,
            user_id=challenge.user_id,
            expire_time=to_timestamp(challenge.expires_at),
        )

    async def Login(self, request: identity_pb2.LoginRequest, context: Context) -> identity_pb2.LoginResponse:
        if not request.challenge_id:
            raise invalid_field("challenge_id", "is required")
        if not request.signature:
            raise invalid_field("signature", "is required")
        challenge, session = await self._sessions.login(request.challenge_id, request.signature)
        return identity_pb2.LoginResponse(
            session=_session(session), user_id=challenge.user_id, device_id=challenge.device_id
        )

    async def RefreshToken(
        self, request: identity_pb2.RefreshTokenRequest, context: Context
    ) -> identity_pb2.RefreshTokenResponse:
        if not request.refresh_token:
            raise invalid_field("refresh_token", "is required")
        session = await self._sessions.refresh(request.refresh_token)
        return identity_pb2.RefreshTokenResponse(session=_session(session))

    async def Logout(self, request: identity_pb2.LogoutRequest, context: Context) -> identity_pb2.LogoutResponse:
        caller = require_user()
        revoked = await self._sessions.logout(caller.user_id, caller.device_id, request.refresh_token)
        return identity_pb2.LogoutResponse(revoked_sessions=revoked)

    async def WhoAmI(self, request: identity_pb2.WhoAmIRequest, context: Context) -> identity_pb2.WhoAmIResponse:
        caller = current_principal()
        if caller.is_service:
            return identity_pb2.WhoAmIResponse(service_name=caller.service_name, issuer=caller.issuer)
        username = ""
        if caller.issuer == self._auth.issuer:
            username = (await self._accounts.user(caller.user_id)).username
        return identity_pb2.WhoAmIResponse(
            user_id=caller.user_id,
            username=username,
            device_id=caller.device_id,
            issuer=caller.issuer,
            expire_time=to_timestamp(caller.expires_at),
        )

    async def AddDevice(
        self, request: identity_pb2.AddDeviceRequest, context: Context
    ) -> identity_pb2.AddDeviceResponse:
        caller = require_user()
        device = await self._accounts.add_device(
            caller.user_id, caller.device_id, request.device, self._auth.max_devices_per_user, self._charge_addition
        )
        return identity_pb2.AddDeviceResponse(device=_device(device))

    async def ListDevices(
        self, request: identity_pb2.ListDevicesRequest, context: Context
    ) -> identity_pb2.ListDevicesResponse:
        user_id = request.user_id or require_user().user_id
        devices = await self._accounts.devices(user_id, request.show_revoked)
        return identity_pb2.ListDevicesResponse(devices=[_device(d) for d in devices])

    async def RevokeDevice(
        self, request: identity_pb2.RevokeDeviceRequest, context: Context
    ) -> identity_pb2.RevokeDeviceResponse:
        caller = require_user()
        if not request.device_id:
            raise invalid_field("device_id", "is required")
        # Not rate limited: a user can revoke no more devices than they added (which is limited), and a
        # limit here would let a stolen device spend it and keep its owner from revoking it.

        async def revoke() -> DeviceRow:
            device, newly_revoked = await self._accounts.revoke_device(
                caller.user_id, caller.device_id, request.device_id
            )
            if newly_revoked:
                self._revocations.announce(device)
            return device

        # Once committed, the gateways must hear of it, even if the caller stops waiting.
        device = await uncancellable(revoke())
        return identity_pb2.RevokeDeviceResponse(device=_device(device))

    def _charge_addition(self, user_id: str) -> None:
        # Each device added may be revoked, and each revocation is announced to every gateway and
        # kept there for a token's lifetime. Called only for an addition that passed every check.
        wait = self._device_additions.try_acquire(user_id)
        if wait:
            raise rate_limited(f"too many devices added; retry in {wait:.1f}s", wait)

    async def GetUser(self, request: identity_pb2.GetUserRequest, context: Context) -> identity_pb2.GetUserResponse:
        lookup = request.WhichOneof("lookup")
        if lookup == "username":
            user = await self._accounts.user_named(request.username)
        elif lookup == "user_id" and request.user_id:
            user = await self._accounts.user(request.user_id)
        else:
            raise invalid_field("lookup", "give user_id or username")
        devices = await self._accounts.devices(user.user_id, include_revoked=False)
        return identity_pb2.GetUserResponse(user=_user(user), devices=[_device(d) for d in devices])

    async def GetVerificationKeys(
        self, request: identity_pb2.GetVerificationKeysRequest, context: Context
    ) -> identity_pb2.GetVerificationKeysResponse:
        return identity_pb2.GetVerificationKeysResponse(
            keys=[_verification_key(k) for k in self._signer.published_keys()], issuer=self._auth.issuer
        )

    async def WatchRevocations(
        self, request: identity_pb2.WatchRevocationsRequest, context: Context
    ) -> AsyncIterator[identity_pb2.WatchRevocationsResponse]:
        window = token_life_after_revocation(self._auth)
        async for response in self._revocations.watch(lambda: self._accounts.revoked_since(time.time() - window)):
            yield response

    async def RotateSigningKey(
        self, request: identity_pb2.RotateSigningKeyRequest, context: Context
    ) -> identity_pb2.RotateSigningKeyResponse:
        key = await self._signer.rotate()
        return identity_pb2.RotateSigningKeyResponse(key=_verification_key(PublishedKey(key, None)))

    # Device lists and prekeys

    async def PublishDeviceList(
        self, request: identity_pb2.PublishDeviceListRequest, context: Context
    ) -> identity_pb2.PublishDeviceListResponse:
        caller = require_user()
        await self._prekeys.publish_device_list(caller.user_id, caller.device_id, request.device_list)
        return identity_pb2.PublishDeviceListResponse()

    async def GetDeviceList(
        self, request: identity_pb2.GetDeviceListRequest, context: Context
    ) -> identity_pb2.GetDeviceListResponse:
        if not request.user_id:
            raise invalid_field("user_id", "is required")
        row = await self._prekeys.device_list(request.user_id)
        return identity_pb2.GetDeviceListResponse(device_list=_device_list(row))

    async def UploadPrekeys(
        self, request: identity_pb2.UploadPrekeysRequest, context: Context
    ) -> identity_pb2.UploadPrekeysResponse:
        caller = require_user()
        held = await self._prekeys.upload(caller.user_id, caller.device_id, request)
        return identity_pb2.UploadPrekeysResponse(one_time_prekeys=held)

    async def FetchPrekeyBundles(
        self, request: identity_pb2.FetchPrekeyBundlesRequest, context: Context
    ) -> identity_pb2.FetchPrekeyBundlesResponse:
        caller = require_user()
        if not request.user_id:
            raise invalid_field("user_id", "is required")
        # Each fetch takes one-time prekeys: limited per caller, and per caller and target (so one
        # caller cannot spend all of its allowance draining one user's keys).
        wait = self._prekey_fetches.try_acquire(caller.user_id) or self._prekey_fetches_of.try_acquire(
            f"{caller.user_id}>{request.user_id}"
        )
        if wait:
            raise rate_limited(f"too many prekey fetches; retry in {wait:.1f}s", wait)
        found = await self._prekeys.bundles(request.user_id, list(request.device_ids), caller.device_id)
        response = identity_pb2.FetchPrekeyBundlesResponse(
            user=_user(found.user),
            bundles=[_bundle(b) for b in found.bundles],
            devices_without_prekeys=found.without_prekeys,
        )
        if found.device_list is not None:
            response.device_list.CopyFrom(_device_list(found.device_list))
        return response

    async def CountPrekeys(
        self, request: identity_pb2.CountPrekeysRequest, context: Context
    ) -> identity_pb2.CountPrekeysResponse:
        caller = require_user()
        held, uploaded_at = await self._prekeys.count(caller.user_id, caller.device_id)
        response = identity_pb2.CountPrekeysResponse(one_time_prekeys=held)
        if uploaded_at is not None:
            response.signed_prekey_upload_time.CopyFrom(to_timestamp(uploaded_at))
        return response


def _device_list(row: DeviceListRow) -> identity_pb2.SignedDeviceList:
    return identity_pb2.SignedDeviceList(list=row.list, signature=row.signature)


def _bundle(bundle: Bundle) -> identity_pb2.PrekeyBundle:
    signed = bundle.signed_prekey
    found = identity_pb2.PrekeyBundle(
        device=_device(bundle.device),
        signed_prekey=identity_pb2.SignedPrekey(
            key_id=signed.key_id, public_key=signed.public_key, signature=signed.signature
        ),
    )
    if bundle.one_time_prekey is not None:
        key = bundle.one_time_prekey
        found.one_time_prekey.CopyFrom(identity_pb2.OneTimePrekey(key_id=key.key_id, public_key=key.public_key))
    if bundle.kem_prekey is not None:
        kem = bundle.kem_prekey
        found.kem_prekey.CopyFrom(
            identity_pb2.KemPrekey(key_id=kem.key_id, kem=kem.kem, public_key=kem.public_key, signature=kem.signature)
        )
    return found


def _user(row: UserRow) -> identity_pb2.User:
    return identity_pb2.User(
        user_id=row.user_id,
        username=row.username,
        signing_key=row.signing_key,
        create_time=to_timestamp(row.created_at),
    )


def _device(row: DeviceRow) -> identity_pb2.Device:
    device = identity_pb2.Device(
        device_id=row.device_id,
        user_id=row.user_id,
        signing_key=row.signing_key,
        dh_key=row.dh_key,
        certificate=row.certificate,
        display_name=row.display_name,
        create_time=to_timestamp(row.created_at),
    )
    if row.revoked_at is not None:
        device.revoke_time.CopyFrom(to_timestamp(row.revoked_at))
    return device


def _session(session: IssuedSession) -> identity_pb2.Session:
    return identity_pb2.Session(
        access_token=session.access_token,
        access_token_expire_time=to_timestamp(session.access_expires_at),
        refresh_token=session.refresh_token,
        refresh_token_expire_time=to_timestamp(session.refresh_expires_at),
    )


def _verification_key(published: PublishedKey) -> identity_pb2.VerificationKey:
    key = identity_pb2.VerificationKey(
        key_id=published.key.key_id,
        algorithm="EdDSA",
        public_key=published.key.public_key,
        create_time=to_timestamp(published.key.created_at),
    )
    if published.expires_at is not None:
        key.expire_time.CopyFrom(to_timestamp(published.expires_at))
    return key
