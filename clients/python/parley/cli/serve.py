"""`parley serve`: settings from --config, then PARLEY_* variables, then flags."""

from __future__ import annotations

import argparse
import os
import sys


async def serve(args: argparse.Namespace) -> int:
    from services.launcher import serve
    from services.runtime.config import ConfigError, load_config

    overrides = {
        "server.host": args.host,
        "server.port": args.port,
        "server.data_dir": args.data_dir,
        "server.gateway_processes": args.gateway_processes,
        "server.reuse_port": args.reuse_port,
    }
    try:
        config = load_config(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        await serve(config, args.service)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
