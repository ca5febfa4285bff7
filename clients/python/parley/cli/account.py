"""CLI commands about you and other users: login, whoami, user lookups, devices."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from google.protobuf import json_format

from parley.cli.people import DeviceProfile, UserProfile, look_up, profile_lines
from parley.client import Client
from parley.device_identity import DeviceIdentity


async def login(client: Client) -> None:
    """Prints the session as JSON: scripts read `accessToken` from it."""
    session = await client.login()
    print(json.dumps(json_format.MessageToDict(session), indent=2))


async def whoami(client: Client, *, as_json: bool) -> None:
    me = await client.whoami()
    profile = UserProfile.of(await client.get_user_by_id(me.user_id))
    if as_json:
        print(json.dumps({**dataclasses.asdict(profile), "device_id": me.device_id}, indent=2))
        return
    print("\n".join(profile_lines(profile, this_device=me.device_id)))


async def show_user(client: Client, who: str, *, as_json: bool) -> None:
    profile = await look_up(client, who)
    if as_json:
        print(json.dumps(dataclasses.asdict(profile), indent=2))
        return
    print("\n".join(profile_lines(profile)))


async def list_devices(client: Client, *, show_revoked: bool) -> None:
    for device in map(DeviceProfile.of, await client.devices(show_revoked=show_revoked)):
        state = "revoked" if device.revoked else "active"
        mine = " (this device)" if device.device_id == client.device_id else ""
        print(f"{device.device_id}  {state:7}  {device.name or '-'}{mine}")


async def add_device(client: Client, key_file: Path, name: str) -> None:
    """Registers a new device and writes its key file beside this device's."""
    path = new_device_key_file(key_file, name)
    if path.exists():
        earlier = DeviceIdentity.load(path)
        active = {device.device_id for device in await client.devices()}
        if earlier.user_id == client.user_id and earlier.device_id in active:
            print(f"device {name} already added ({earlier.device_id}); its key file is {path}")
            return
        raise SystemExit(f"error: {path} already exists; choose another device name")
    added = await client.add_device(name)
    added.save(path, overwrite=False)
    print(f"added device {name} ({added.device_id}); its key file is {path}")
    print(f"give it to the other device: parley --key-file {path} whoami")


async def revoke_device(client: Client, device_id: str) -> None:
    device = DeviceProfile.of(await client.revoke_device(device_id))
    print(f"revoked device {device.name or '-'} ({device.device_id})")


def new_device_key_file(key_file: Path, name: str) -> Path:
    """`~/.config/parley/identity.json` + "Phone 2" → `~/.config/parley/identity-phone-2.json`."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "device"
    return key_file.absolute().parent / f"{key_file.stem}-{slug}.json"
