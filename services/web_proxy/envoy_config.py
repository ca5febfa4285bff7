"""Envoy's bootstrap config for the gRPC-Web proxy: browsers' gRPC-Web in, gRPC over HTTP/2 out.

Every timeout that could cut a long stream is off (a page's Subscribe stays
open for hours); the admin interface is left out, so Envoy opens no port but
the web one; and a call that cannot reach Parley gets UNAVAILABLE naming the
address that did not answer, instead of Envoy's own wording.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
from typing import Any

from services.runtime.client_address import CLIENT_ADDRESS_HEADER
from services.runtime.config import Config

ANY_ORIGIN = "*"
# What gRPC-Web and Connect clients (grpc-web, @connectrpc/connect-web) send, and Parley's token.
ALLOWED_HEADERS = (
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "connect-protocol-version",
    "connect-timeout-ms",
    "x-accept-content-transfer-encoding",
    "x-accept-response-streaming",
    "cache-control",
)
# A trailers-only response (an error before any message) carries these as HTTP headers, which a
# cross-origin page can read only when they are exposed.
EXPOSED_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")
ALLOWED_METHODS = ("POST", "OPTIONS")
PREFLIGHT_CACHE_SECONDS = 86_400
# Envoy's response flags for "no connection to the upstream": connect failed, no healthy host,
# the connection was reset or closed before the response began.
UNREACHABLE_FLAGS = ("UF", "UH", "UR", "UC")
BACKEND_CLUSTER = "parley"
# Beyond Envoy's default of 1024 open requests per cluster, calls would fail with "overflow":
# every page holds one Subscribe stream.
CLUSTER_LIMIT = 1_000_000
MAX_DOWNSTREAM_CONNECTIONS = 100_000
WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


@dataclasses.dataclass(frozen=True)
class ProxyPlan:
    """Where Envoy listens, where Parley's gRPC port is, and who may call."""

    listen_host: str
    listen_port: int
    backend_host: str
    backend_port: int
    allowed_origins: tuple[str, ...] = (ANY_ORIGIN,)

    @property
    def backend_address(self) -> str:
        return _join_host_port(self.backend_host, self.backend_port)

    @property
    def web_address(self) -> str:
        return _join_host_port(self.listen_host, self.listen_port)


def plan_for(config: Config) -> ProxyPlan:
    """The proxy of `config.web` in front of `config.server`'s port."""
    if config.web.port is None:
        raise ValueError("web.port is not set: there is no gRPC-Web proxy to plan")
    return ProxyPlan(
        listen_host=_bare_host(config.web.host or config.server.host),
        listen_port=config.web.port,
        backend_host=WILDCARD_HOSTS.get(config.server.host, _bare_host(config.server.host)),
        backend_port=config.server.port,
        allowed_origins=tuple(config.web.allowed_origins),
    )


def envoy_bootstrap(plan: ProxyPlan) -> dict[str, Any]:
    """Envoy's v3 bootstrap config: one listener, one HTTP/2 cluster, no admin interface."""
    return {
        "static_resources": {
            "listeners": [_listener(plan)],
            "clusters": [_backend_cluster(plan)],
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }
            ]
        },
    }


def envoy_config_text(plan: ProxyPlan) -> str:
    """The bootstrap as JSON (which Envoy reads as YAML too)."""
    return json.dumps(envoy_bootstrap(plan), indent=2) + "\n"


# TCP keepalive on the web port (accepted sockets inherit it): a page that vanished without closing (a laptop
# shut, a network gone) is noticed after about KEEPALIVE_IDLE + KEEPALIVE_INTERVAL x KEEPALIVE_PROBES seconds, and
# its Subscribe stream, and so its session, ends. Streams themselves have no idle timeout.
KEEPALIVE_IDLE_SECONDS = 60
KEEPALIVE_INTERVAL_SECONDS = 15
KEEPALIVE_PROBES = 4


def _listener(plan: ProxyPlan) -> dict[str, Any]:
    return {
        "name": "parley_web",
        "address": _socket_address(plan.listen_host, plan.listen_port),
        "socket_options": [
            # This host's option numbers: Envoy runs beside the server.
            _socket_option(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            _socket_option(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS),
            _socket_option(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS),
            _socket_option(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES),
        ],
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _connection_manager(plan),
                    }
                ]
            }
        ],
    }


def _socket_option(level: int, name: int, value: int) -> dict[str, Any]:
    return {"level": level, "name": name, "int_value": value, "state": "STATE_PREBIND"}


def _connection_manager(plan: ProxyPlan) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "parley_web",
        "codec_type": "AUTO",
        # Envoy's default cuts a stream that is quiet for 5 minutes.
        "stream_idle_timeout": "0s",
        "request_timeout": "0s",
        "use_remote_address": True,
        "route_config": _routes(plan),
        "http_filters": [
            _filter("envoy.filters.http.grpc_web", "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"),
            _filter("envoy.filters.http.cors", "envoy.extensions.filters.http.cors.v3.Cors"),
            _filter("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router"),
        ],
        "local_reply_config": _unreachable_reply(plan),
    }


def _routes(plan: ProxyPlan) -> dict[str, Any]:
    return {
        "name": "parley",
        # Stand-in for the browser's own address, for per-client limits (server.trust_forwarded_client);
        # whatever a caller sent under that name is replaced.
        "request_headers_to_add": [
            {
                "header": {"key": CLIENT_ADDRESS_HEADER, "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "virtual_hosts": [
            {
                "name": "parley",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": BACKEND_CLUSTER,
                            "timeout": "0s",
                            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
                        },
                    }
                ],
                "typed_per_filter_config": {"envoy.filters.http.cors": _cors_policy(plan)},
            }
        ],
    }


def _cors_policy(plan: ProxyPlan) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [_origin_matcher(origin) for origin in plan.allowed_origins],
        "allow_methods": ", ".join(ALLOWED_METHODS),
        "allow_headers": ", ".join(ALLOWED_HEADERS),
        "expose_headers": ", ".join(EXPOSED_HEADERS),
        "max_age": str(PREFLIGHT_CACHE_SECONDS),
    }


def _origin_matcher(origin: str) -> dict[str, Any]:
    if origin == ANY_ORIGIN:
        return {"safe_regex": {"regex": ".*"}}
    return {"exact": origin, "ignore_case": True}


def _unreachable_reply(plan: ProxyPlan) -> dict[str, Any]:
    message = f"the Parley server at {plan.backend_address} is not reachable (gRPC-Web proxy)"
    return {
        "mappers": [
            {
                "filter": {"response_flag_filter": {"flags": list(UNREACHABLE_FLAGS)}},
                "body": {"inline_string": message},
            }
        ]
    }


def _backend_cluster(plan: ProxyPlan) -> dict[str, Any]:
    limits = {
        "max_connections": CLUSTER_LIMIT,
        "max_pending_requests": CLUSTER_LIMIT,
        "max_requests": CLUSTER_LIMIT,
    }
    return {
        "name": BACKEND_CLUSTER,
        "type": "STATIC" if _is_ip(plan.backend_host) else "STRICT_DNS",
        "connect_timeout": "2s",
        "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", **limits}, {"priority": "HIGH", **limits}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": BACKEND_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(plan.backend_host, plan.backend_port)}}]}
            ],
        },
    }


def _filter(name: str, config_type: str) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": f"type.googleapis.com/{config_type}"}}


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _bare_host(host: str) -> str:
    """`[::1]` -> `::1`: Envoy takes IPv6 addresses without brackets."""
    return host.removeprefix("[").removesuffix("]")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
