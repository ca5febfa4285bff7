"""`parley serve`: settings from --config, then PARLEY_* variables, then flags.

With a web port (`--web-port`, `web.port`) Envoy, the browsers' gRPC-Web
proxy, runs beside the server (services/web_proxy, docs/browser.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.runtime.config import Config


async def serve(args: argparse.Namespace) -> int:
    from services.launcher import serve
    from services.runtime.config import ConfigError, load_config
    from services.web_proxy.envoy_process import EnvoyFailed
    from services.web_proxy.serving import serve_with_web_proxy

    overrides = {
        "server.host": args.host,
        "server.port": args.port,
        "server.data_dir": args.data_dir,
        "server.gateway_processes": args.gateway_processes,
        "server.reuse_port": args.reuse_port,
        "web.port": args.web_port,
    }
    try:
        config = load_config(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_web_config:
        return _print_web_config(config)
    try:
        if config.web.port is None:
            await serve(config, args.service)
        else:
            await serve_with_web_proxy(config, args.service)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, EnvoyFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_web_config(config: Config) -> int:
    from services.web_proxy.envoy_config import envoy_config_text, plan_for

    if config.web.port is None:
        print("error: --print-web-config needs --web-port (or web.port)", file=sys.stderr)
        return 2
    print(envoy_config_text(plan_for(config)), end="")
    return 0
