"""Loads the hooks named in config and calls them with the right failure rules."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc

from parley.api.v1 import errors_pb2
from parley.hooks import Deny, Transform
from services.runtime.config import ConfigError, HooksConfig
from services.runtime.errors import ServiceError, permission_denied

log = logging.getLogger("parley.hooks")
Hook = Callable[..., Any]


def load_hook(spec: str, name: str) -> Hook | None:
    """Imports "module:function"; ConfigError naming the hook if it cannot be found."""
    if not spec:
        return None
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"hooks.{name}: expected 'module:function', got {spec!r}")
    _importable_from_working_directory()
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"hooks.{name}: cannot load {spec!r}: {exc}") from exc
    if not callable(function):
        raise ConfigError(f"hooks.{name}: {spec!r} is not callable")
    return function  # type: ignore[no-any-return]


def _importable_from_working_directory() -> None:
    """Hook modules resolve from the directory the server was started in, as under `python -m`.

    The `parley` console script, unlike `python -m`, leaves that directory off
    the import path, so `examples.hooks` would not import from the repo root.
    Appended, so a file there never shadows the standard library or Parley.
    """
    directory = os.getcwd()
    if directory not in sys.path:
        sys.path.append(directory)


class Hooks:
    def __init__(self, config: HooksConfig) -> None:
        self._hooks = {f.name: load_hook(getattr(config, f.name), f.name) for f in dataclasses.fields(config)}

    def has(self, name: str) -> bool:
        return self._hooks.get(name) is not None

    async def decide(self, name: str, default_reason: errors_pb2.ErrorReason.ValueType, *args: Any) -> Any:
        """Runs a deny hook; raises PERMISSION_DENIED on Deny/False, HOOK_FAILED if it raises.

        Returns the hook's result otherwise (None, True, or a Transform).
        """
        hook = self._hooks.get(name)
        if hook is None:
            return None
        try:
            result = await _call(hook, *args)
        except Exception as exc:
            log.exception("hook failed", extra={"hook": name})
            raise ServiceError(
                grpc.StatusCode.INTERNAL, errors_pb2.ERROR_REASON_HOOK_FAILED, f"the {name} hook failed"
            ) from exc
        if result is False:
            raise permission_denied(default_reason, f"refused by the {name} hook")
        if isinstance(result, Deny):
            message = result.message or f"refused by the {name} hook"
            if result.reason:
                raise ServiceError.named(grpc.StatusCode.PERMISSION_DENIED, result.reason, message)
            raise permission_denied(default_reason, message)
        if result is not None and result is not True and not isinstance(result, Transform):
            log.error("hook returned %r; refusing", result, extra={"hook": name})
            raise ServiceError(
                grpc.StatusCode.INTERNAL, errors_pb2.ERROR_REASON_HOOK_FAILED, f"the {name} hook gave no decision"
            )
        return result

    async def call(self, name: str, *args: Any) -> Any:
        """Runs an authenticate-style hook and returns what it returned; HOOK_FAILED if it raises."""
        hook = self._hooks.get(name)
        if hook is None:
            return None
        try:
            return await _call(hook, *args)
        except Exception as exc:
            log.exception("hook failed", extra={"hook": name})
            raise ServiceError(
                grpc.StatusCode.INTERNAL, errors_pb2.ERROR_REASON_HOOK_FAILED, f"the {name} hook failed"
            ) from exc

    async def notify(self, name: str, *args: Any) -> None:
        """Runs a notification hook; errors are logged, never raised."""
        hook = self._hooks.get(name)
        if hook is None:
            return
        try:
            await _call(hook, *args)
        except Exception:
            log.exception("notification hook failed", extra={"hook": name})


async def _call(hook: Hook, *args: Any) -> Any:
    result = hook(*args)
    if inspect.isawaitable(result):
        result = await result
    return result
