"""How the CLI reports what went wrong: one line on stderr, never a traceback."""

from __future__ import annotations

import os
import sys

import grpc

from parley.errors import ParleyError

# What a shell reports for a command stopped by SIGPIPE (128 + 13): `parley … | head`
# ends like `cat … | head` does, so `set -o pipefail` scripts see the same thing.
EXIT_OUTPUT_CLOSED = 141


def server_unreachable(error: ParleyError) -> bool:
    """The call never reached a Parley server: nothing listens there, or the name does not resolve.

    A Parley server that is up but cannot serve says why in its ErrorInfo reason;
    gRPC's own connection failures carry none.
    """
    return error.code == grpc.StatusCode.UNAVAILABLE and not error.reason


def describe(error: ParleyError, address: str) -> str:
    """One line for stderr: the Parley reason (or the status code) and the message."""
    if server_unreachable(error):
        return f"error: no Parley server at {address} — start one with `make run`"
    message = " ".join(error.message.split())
    return f"error: {error.reason or error.code.name}: {message}"


def output_closed() -> int:
    """Whoever read our stdout has gone (`parley … | head`): stop quietly.

    stdout is pointed at /dev/null so that the interpreter's last flush at exit
    does not fail again (the recipe in the Python docs' `signal` notes).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_OUTPUT_CLOSED
