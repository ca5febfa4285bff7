"""`parley user register`: the SDK writes the key file once the server has accepted the registration.

When the outcome is unknown (the connection broke after the request went
out) the keys wait beside the key file as an unfinished registration, which
the next `parley user register` finishes, or discards if the server never
got it (see `parley.auth`). Registering again as the user the key file
already holds is done already: it says so and succeeds, so scripts can rerun.
"""

from __future__ import annotations

import sys
from pathlib import Path

from parley.auth import outcome_unknown, pending_key_file
from parley.client import Client
from parley.device_identity import DeviceIdentity
from parley.errors import NotFoundError, ParleyError, UnauthenticatedError


def _registered_owner(key_file: Path) -> str | None:
    """The user a key file already belongs to, if it holds a finished registration."""
    if not key_file.exists():
        return None
    identity = DeviceIdentity.load(key_file)
    return identity.username if identity.registered else None


async def _confirm(address: str, key_file: Path) -> None:
    """A rerun for the user the key file already holds: done, once the server knows this device."""
    try:
        async with Client(address, key_file=key_file) as client:
            me = await client.whoami()
    except (NotFoundError, UnauthenticatedError) as exc:
        raise SystemExit(
            f"error: {key_file} holds a registration this server does not know ({exc}); choose another --key-file"
        ) from None
    print(f"already registered as {me.username} ({me.user_id}), device {me.device_id}; keys in {key_file}")


async def register(
    address: str, key_file: Path, username: str, device_name: str, keystore_passphrase: str | None = None
) -> None:
    owner = _registered_owner(key_file)
    if owner == username:
        await _confirm(address, key_file)
        return
    if owner is not None:
        raise SystemExit(f"error: {key_file} already holds a registered identity ({owner}); choose another --key-file")
    try:
        async with Client(
            address,
            username=username,
            key_file=key_file,
            device_name=device_name,
            keystore_passphrase=keystore_passphrase,
        ) as client:
            me = await client.whoami()
            await client.publish_prekeys()  # others can start encrypted conversations with it from now on
    except ParleyError as exc:
        if outcome_unknown(exc) and pending_key_file(key_file).exists():
            print(
                f"note: the server may have registered {username}; its keys are kept in "
                f"{pending_key_file(key_file)}: run `parley user register {username}` again to finish",
                file=sys.stderr,
            )
        raise
    print(f"registered {me.username} ({me.user_id}), device {me.device_id}; keys in {key_file}")
