"""One configuration object for every Parley process.

Built once at start-up from, in rising precedence: defaults, a TOML file,
`PARLEY_<SECTION>_<KEY>` environment variables, and command-line flags; then
passed in to whatever needs it. Nothing below the entry point reads the
environment.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "PARLEY_"
INTERNAL_SERVICE = "parley"
# Read by the `parley` CLI as a client, not settings of a server.
CLIENT_ENV = frozenset({"PARLEY_ADDR", "PARLEY_KEY_FILE"})
MiB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting."""


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = Path("./data")
    # Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    grace_seconds: float = 5.0
    max_message_bytes: int = 4 * MiB
    # Server pings idle clients this often and drops them if unanswered.
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    # The shortest ping interval a client may ask for.
    keepalive_min_client_ping_ms: int = 10_000
    max_connection_idle_ms: int = 0
    # Believe the gateway's `x-parley-client-address` header about who the
    # caller is (per-client rate limits). Turn on only for services behind a
    # gateway whose own ports clients cannot reach.
    trust_forwarded_client: bool = False
    # Let other processes of this user listen on the same port (SO_REUSEPORT, Linux): the
    # kernel spreads new connections over them. Off, a second server on the port fails to start.
    reuse_port: bool = False
    # `parley serve` and `parley serve gateway` run this many gateway processes on the port,
    # sharing it (reuse_port) and the NATS bus. 1: one process, as always.
    gateway_processes: int = 1
    # Once started, the cyclic garbage collector runs every this many allocations (Python: 700),
    # what start-up built frozen out of its walks (services/runtime/collector.py). 0: Python's settings.
    gc_threshold: int = 20_000


@dataclasses.dataclass
class PeersConfig:
    """Addresses of the other services, used in split mode."""

    identity: str = "127.0.0.1:50052"
    room: str = "127.0.0.1:50053"
    history: str = "127.0.0.1:50054"
    file: str = "127.0.0.1:50055"


@dataclasses.dataclass
class ExternalJwtConfig:
    """An app's own token issuer, accepted next to Parley's tokens."""

    issuer: str = ""
    audience: str = ""
    # PEM public key (or HS256 shared secret) inline, or a file holding it.
    key: str = ""
    key_file: str = ""
    algorithms: list[str] = dataclasses.field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


@dataclasses.dataclass
class AuthConfig:
    issuer: str = "parley"
    access_token_ttl_seconds: int = 300
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    challenge_ttl_seconds: int = 60
    # Tolerance for clocks that disagree when checking token times.
    clock_skew_seconds: float = 5.0
    # Login challenges one username may request per minute from one address.
    challenges_per_minute: int = 30
    # Accounts RegisterUser creates per minute for one client address (bursts up to this).
    registrations_per_minute: int = 10
    # Devices one user may add per hour (failed additions and revocations are free),
    # and hold (not revoked) at once.
    device_additions_per_hour: int = 60
    max_devices_per_user: int = 50
    # Prekey bundle fetches (FetchPrekeyBundles) one user may make per minute: each takes one-time
    # prekeys, so a caller that fetched without limit could drain another user's.
    prekey_fetches_per_minute: int = 60
    # Backend credentials: name -> secret; sent as `svc:<name>:<secret>`.
    # Parley's own services call each other as INTERNAL_SERVICE ("parley"):
    # all-in-one mode makes that secret up, split mode needs it configured.
    service_credentials: dict[str, str] = dataclasses.field(default_factory=dict)
    # Seconds between refetches of verification keys for an unknown key id.
    key_refresh_interval_seconds: float = 5.0
    # Cached verification keys are refreshed at least this often.
    key_cache_seconds: float = 300.0
    external_jwt: ExternalJwtConfig = dataclasses.field(default_factory=ExternalJwtConfig)


@dataclasses.dataclass
class TelemetryConfig:
    # "off", "console" or "otlp".
    tracing: str = "off"
    metrics: str = "off"
    otlp_endpoint: str = "http://127.0.0.1:4317"
    # Where the console exporter writes; empty means standard output.
    console_path: str = ""
    metrics_interval_seconds: float = 60.0


@dataclasses.dataclass
class GatewayConfig:
    # On a quiet gateway, events for one connection are gathered this long into one frame; under
    # load they wait for the last flush's writes and go together (services/gateway/flush_pacing.py).
    batch_window_ms: float = 1.0
    # Largest frame the gateway builds from gathered events.
    max_frame_bytes: int = 256 * 1024
    # A connection more than this far behind is ended as a slow consumer.
    max_outbound_bytes: int = 4 * MiB
    # Largest JSON payload of one published event.
    max_payload_bytes: int = 64 * 1024
    # Events one user may publish per window, over all their connections.
    events_per_window: int = 200
    window_seconds: int = 10
    max_rooms_per_connection: int = 100
    # Open Connect streams one user may hold on this gateway.
    max_connections_per_user: int = 100
    # Commands of one connection under way at once (publishes awaiting their append included);
    # past it the gateway reads no more of that connection's commands until one is answered.
    max_commands_in_flight: int = 256
    # Subject subscriptions (exact or wildcard) one user may hold over all their streams.
    max_subject_subscriptions_per_user: int = 1000
    # Bytes queued for all connections together; past it the furthest behind are cut first.
    max_outbound_bytes_total: int = 512 * MiB
    # A resume replays at most this many missed events; beyond, recovered=false.
    replay_cap: int = 1000
    # A room's missing position is waited for this long before it is read from history.
    gap_wait_ms: float = 5.0
    # Joins and leaves of a room are gathered this long into one Presence frame per member.
    presence_window_ms: float = 50.0
    # A gateway in its own process renews its lease with the room service; if it
    # stops renewing (killed), its connections leave their rooms this long after.
    lease_seconds: float = 10.0
    # A draining gateway (SIGTERM) tells its clients to come back within this many ms, each after
    # a random part of it, so that they do not all arrive at the next gateway at once.
    drain_reconnect_within_ms: int = 2000
    # An ephemeral signal (typing) expires this long after it was last sent.
    ephemeral_ttl_seconds: float = 5.0


@dataclasses.dataclass
class BusConfig:
    # Empty: in process (one process holds every gateway). nats://host:port[,nats://...]: core NATS.
    url: str = ""
    # NATS subjects start with this, so deployments (or test runs) can share one NATS server.
    subject_prefix: str = "parley"


@dataclasses.dataclass
class WebConfig:
    """The browsers' gRPC-Web proxy: an Envoy that `parley serve` starts beside the server (docs/browser.md)."""

    # The port Envoy listens on for browsers; None: no proxy; 0: a free port, chosen at start.
    port: int | None = None
    # The interface Envoy binds; empty: server.host.
    host: str = ""
    # Origins (scheme://host[:port]) whose pages may call Parley; "*": any.
    allowed_origins: list[str] = dataclasses.field(default_factory=lambda: ["*"])


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
STORAGE_SERVICES = ("identity", "room", "history")


@dataclasses.dataclass
class StorageConfig:
    # Empty: SQLite files under server.data_dir. postgresql://user:password@host:port/db: PostgreSQL
    # (the database must exist; each service keeps its tables in a schema of its own).
    url: str = ""
    # One service's storage, when it is not `url` (empty: `url`).
    identity_url: str = ""
    room_url: str = ""
    history_url: str = ""
    file_url: str = ""
    # Connections each service opens to PostgreSQL at most.
    max_connections: int = 10

    def url_of(self, service: str) -> str:
        """The storage URL of "identity", "room", "history" or "file"."""
        own: str = getattr(self, f"{service}_url")
        return own or self.url


@dataclasses.dataclass
class HistoryConfig:
    # A retried publish with the same idempotency key is stored once within this window.
    idempotency_window_seconds: float = 600.0
    default_page_size: int = 100
    max_page_size: int = 500
    # How often retention (per event definition) and old idempotency keys are pruned.
    prune_interval_seconds: float = 60.0
    # The hot buffer: the newest min(history.limit, this) events per (room, event name)
    # are served from memory, within hot_buffer_bytes for all rooms (0 turns it off).
    hot_events_per_name: int = 1000
    hot_buffer_bytes: int = 64 * 1024 * 1024
    # Sealed direct messages wait this long in an offline device's mailbox (30 days).
    mailbox_ttl_seconds: float = 30 * 86_400.0


@dataclasses.dataclass
class RoomServiceConfig:
    # Rooms one user may create per hour (services are not limited).
    creations_per_hour: int = 60
    # JSON Schema bytes (as compact JSON) in one run-time room, and in all the
    # live rooms one user created.
    max_schema_bytes_per_room: int = 64 * 1024
    max_schema_bytes_per_user: int = 256 * 1024


@dataclasses.dataclass
class HooksConfig:
    """Python callables, "module:function", called by the gateway (see docs/hooks.md)."""

    authenticate: str = ""
    before_join: str = ""
    before_publish: str = ""
    after_publish: str = ""
    on_connected: str = ""
    on_disconnected: str = ""
    on_joined: str = ""
    on_left: str = ""
    on_room_created: str = ""
    on_room_deleted: str = ""


@dataclasses.dataclass
class LoggingConfig:
    level: str = "INFO"
    # "json" (one object per line) or "text".
    format: str = "json"


@dataclasses.dataclass
class HistorySettings:
    enabled: bool = False
    # Keep at most this many events of this kind; 0 = no count limit.
    limit: int = 0
    # Keep events at most this long; 0 = no age limit.
    max_age_seconds: int = 0


@dataclasses.dataclass
class EventDefinition:
    # An event name, or "*" for any event.
    name: str
    description: str = ""
    # A JSON Schema for the payload, inline or in a JSON file.
    schema: dict[str, Any] | None = None
    schema_file: str = ""
    history: HistorySettings = dataclasses.field(default_factory=HistorySettings)


@dataclasses.dataclass
class RoomDefinition:
    id: str
    name: str = ""
    description: str = ""
    max_size: int = 0
    # "public" (listed) or "unlisted".
    visibility: str = "public"
    # None (not set) accepts any event; an empty list makes the room read-only
    # for clients (services may still publish).
    events: list[EventDefinition] | None = None
    # Events a client is subscribed to on join ("*" for all).
    default_subscriptions: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    # true = send all kept history on join; N = the last N per event type.
    sync_history_on_join: bool | int = False
    # false: members are not told when others join or leave (participants are still listed).
    presence: bool = True


# Media types the file service accepts unless `files.media_types` says otherwise: common
# images, sound, video and documents; not HTML, SVG or executables.
DEFAULT_MEDIA_TYPES = (
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/heic",
    "image/avif",
    "audio/mpeg",
    "audio/mp4",
    "audio/aac",
    "audio/ogg",
    "audio/opus",
    "audio/wav",
    "audio/webm",
    "audio/flac",
    "video/mp4",
    "video/webm",
    "video/quicktime",
    "application/pdf",
    "text/plain",
    "text/markdown",
    "text/csv",
    "application/json",
    "application/zip",
    "application/gzip",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
)
MEDIA_TYPE_PATTERN = re.compile(r"(\*/\*|[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*))", re.IGNORECASE)
WEB_ORIGIN_PATTERN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s?#]+", re.IGNORECASE)
MB = 1000 * 1000
GiB = 1024 * MiB


@dataclasses.dataclass
class FilesConfig:
    # Share store directories, in share order, one per share (each may be its own disk).
    # Empty: server.data_dir/shares/0 .. total_shares - 1.
    share_stores: list[Path] = dataclasses.field(default_factory=list)
    # Any data_shares of a file's total_shares shares restore it.
    data_shares: int = 3
    total_shares: int = 5
    # Largest file per top-level media type, in bytes of ciphertext; "document" is any other type.
    max_image_bytes: int = 10 * MB
    max_audio_bytes: int = 16 * MB
    max_video_bytes: int = 100 * MB
    max_document_bytes: int = 100 * MB
    # Accepted media types: "type/subtype", "type/*" or "*/*".
    media_types: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_MEDIA_TYPES))
    # Bytes of files one user may keep (services are not limited).
    quota_bytes_per_user: int = 1 * GiB
    # Plaintext chunk size clients encrypt separately (told to clients in the upload policy).
    chunk_bytes: int = 1 * MiB

    def share_directories(self, data_dir: Path) -> list[Path]:
        """Where shares 0 .. n-1 live."""
        return list(self.share_stores) or [data_dir / "shares" / str(i) for i in range(self.total_shares)]


@dataclasses.dataclass
class Config:
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    peers: PeersConfig = dataclasses.field(default_factory=PeersConfig)
    auth: AuthConfig = dataclasses.field(default_factory=AuthConfig)
    telemetry: TelemetryConfig = dataclasses.field(default_factory=TelemetryConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    files: FilesConfig = dataclasses.field(default_factory=FilesConfig)
    gateway: GatewayConfig = dataclasses.field(default_factory=GatewayConfig)
    bus: BusConfig = dataclasses.field(default_factory=BusConfig)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    room_service: RoomServiceConfig = dataclasses.field(default_factory=RoomServiceConfig)
    history: HistoryConfig = dataclasses.field(default_factory=HistoryConfig)
    hooks: HooksConfig = dataclasses.field(default_factory=HooksConfig)
    web: WebConfig = dataclasses.field(default_factory=WebConfig)
    rooms: list[RoomDefinition] = dataclasses.field(default_factory=list)
    # Where the config file is; relative paths in it (schema files) start here.
    config_dir: Path | None = None


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Builds the config: defaults < TOML file < environment < overrides.

    `overrides` keys are dotted paths ("server.port"); `None` values are ignored
    so unset CLI flags do not clobber the file.
    """
    config = Config()
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        _merge(config, document, "")
        config.config_dir = Path(path).resolve().parent
    for name, raw in (env or {}).items():
        if name.startswith(ENV_PREFIX) and name not in CLIENT_ENV:
            _apply_env(config, name, raw)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(config, dotted.split("."), value, dotted)
    validate(config)
    return config


def validate(config: Config) -> None:
    if not 0 <= config.server.port <= 65535:
        raise ConfigError(f"server.port must be 0–65535, got {config.server.port}")
    for name in ("tracing", "metrics"):
        value = getattr(config.telemetry, name)
        if value not in ("off", "console", "otlp"):
            raise ConfigError(f"telemetry.{name} must be off, console or otlp, got {value!r}")
    if config.logging.format not in ("json", "text"):
        raise ConfigError(f"logging.format must be json or text, got {config.logging.format!r}")
    _validate_files(config.files)
    if config.server.gateway_processes < 1:
        raise ConfigError(f"server.gateway_processes must be at least 1, got {config.server.gateway_processes}")
    if config.server.gateway_processes > 1 and not config.bus.url:
        raise ConfigError(
            f"server.gateway_processes = {config.server.gateway_processes} needs bus.url (a NATS server, "
            "e.g. PARLEY_BUS_URL=nats://127.0.0.1:4222): the in-process bus cannot reach other processes"
        )
    if config.history.prune_interval_seconds <= 0:
        raise ConfigError("history.prune_interval_seconds must be positive")
    if config.history.mailbox_ttl_seconds <= 0:
        raise ConfigError("history.mailbox_ttl_seconds must be positive")
    for name in ("hot_events_per_name", "hot_buffer_bytes"):
        if getattr(config.history, name) < 0:
            raise ConfigError(f"history.{name} must not be negative")
    if config.gateway.ephemeral_ttl_seconds <= 0:
        raise ConfigError("gateway.ephemeral_ttl_seconds must be positive")
    if config.gateway.drain_reconnect_within_ms < 0:
        raise ConfigError("gateway.drain_reconnect_within_ms must not be negative")
    for section, name in (
        ("auth", "registrations_per_minute"),
        ("auth", "device_additions_per_hour"),
        ("auth", "prekey_fetches_per_minute"),
        ("auth", "max_devices_per_user"),
        ("gateway", "max_connections_per_user"),
        ("gateway", "max_commands_in_flight"),
        ("gateway", "max_subject_subscriptions_per_user"),
        ("gateway", "max_outbound_bytes_total"),
        ("room_service", "max_schema_bytes_per_room"),
        ("room_service", "max_schema_bytes_per_user"),
    ):
        if getattr(getattr(config, section), name) <= 0:
            raise ConfigError(f"{section}.{name} must be positive")
    external = config.auth.external_jwt
    if external.enabled:
        if not external.audience:
            raise ConfigError("auth.external_jwt.audience is required when auth.external_jwt.issuer is set")
        if not (external.key or external.key_file):
            raise ConfigError("auth.external_jwt needs key or key_file when issuer is set")
        if external.issuer == config.auth.issuer:
            raise ConfigError("auth.external_jwt.issuer must differ from auth.issuer")
    for service in STORAGE_SERVICES:
        url = config.storage.url_of(service)
        if url and not url.startswith(POSTGRES_SCHEMES):
            setting = f"storage.{service}_url" if getattr(config.storage, f"{service}_url") else "storage.url"
            raise ConfigError(f"{setting} must be empty (SQLite) or a postgresql:// URL")
    if config.storage.max_connections <= 0:
        raise ConfigError("storage.max_connections must be positive")
    _validate_web(config.web)
    seen: set[str] = set()
    for room in config.rooms:
        if room.id in seen:
            raise ConfigError(f"rooms: duplicate room id {room.id!r}")
        if room.visibility not in ("public", "unlisted"):
            raise ConfigError(f"rooms.{room.id}.visibility must be public or unlisted")
        seen.add(room.id)


def _validate_files(files: FilesConfig) -> None:
    if not 0 < files.data_shares <= files.total_shares <= 255:
        raise ConfigError("files: need 0 < data_shares <= total_shares <= 255")
    if files.share_stores and len(files.share_stores) != files.total_shares:
        raise ConfigError(
            f"files.share_stores lists {len(files.share_stores)} directories; "
            f"files.total_shares = {files.total_shares} needs one per share"
        )
    for name in (
        "max_image_bytes",
        "max_audio_bytes",
        "max_video_bytes",
        "max_document_bytes",
        "quota_bytes_per_user",
        "chunk_bytes",
    ):
        if getattr(files, name) <= 0:
            raise ConfigError(f"files.{name} must be positive")
    for media_type in files.media_types:
        if not MEDIA_TYPE_PATTERN.fullmatch(media_type):
            raise ConfigError(f"files.media_types: {media_type!r} is not type/subtype, type/* or */*")


def _validate_web(web: WebConfig) -> None:
    if web.port is not None and not 0 <= web.port <= 65535:
        raise ConfigError(f"web.port must be 0–65535, got {web.port}")
    if not web.allowed_origins:
        raise ConfigError('web.allowed_origins must name at least one origin, or "*" for any')
    for origin in web.allowed_origins:
        if origin != "*" and not WEB_ORIGIN_PATTERN.fullmatch(origin):
            raise ConfigError(
                f"web.allowed_origins: {origin!r} is not an origin (scheme://host[:port], no path, "
                'e.g. "https://chat.example.com") or "*"'
            )


def _merge(target: Any, document: Mapping[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in document.items():
        if key not in fields:
            raise ConfigError(f"unknown setting {where}{key}")
        _assign(target, fields[key], value, f"{where}{key}")


def _assign(target: Any, field: dataclasses.Field[Any], value: Any, where: str) -> None:
    current = getattr(target, field.name)
    if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
        _merge(current, value, f"{where}.")
        return
    setattr(target, field.name, _coerce(_field_type(target, field), value, where))


def _field_type(target: Any, field: dataclasses.Field[Any]) -> Any:
    return typing.get_type_hints(type(target))[field.name]


def _coerce(kind: Any, value: Any, where: str) -> Any:
    """Converts a TOML value or an environment string to the setting's type, strictly."""
    origin = typing.get_origin(kind)
    try:
        if kind is Any:
            return value
        if origin in (types.UnionType, typing.Union):
            return _coerce_union(typing.get_args(kind), value, where)
        if dataclasses.is_dataclass(kind):
            return _build(kind, value, where)
        if kind is bool:
            return _to_bool(value)
        if kind is int:
            return _to_int(value)
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError("expected a number")
            return float(value)
        if kind in (str, Path):
            if not isinstance(value, str | Path):
                raise TypeError("expected a string")
            return kind(value)
        if origin is list:
            (item,) = typing.get_args(kind)
            items = [entry.strip() for entry in value.split(",")] if isinstance(value, str) else value
            if not isinstance(items, list):
                raise TypeError("expected a list")
            if dataclasses.is_dataclass(item):
                return [_build(item, entry, f"{where}[{i}]") for i, entry in enumerate(items)]
            return [_coerce(item, entry, where) for entry in items if entry != ""]
        if origin is dict:
            if isinstance(value, str):
                pairs = [entry.split("=", 1) for entry in value.split(",") if entry.strip()]
                if any(len(pair) != 2 for pair in pairs):
                    raise ValueError("expected name=value pairs separated by commas")
                return {k.strip(): v.strip() for k, v in pairs}
            if not isinstance(value, Mapping):
                raise TypeError("expected a table")
            _, value_kind = typing.get_args(kind)
            return {str(k): _coerce(value_kind, v, f"{where}.{k}") for k, v in value.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r}: {exc}") from exc
    raise ConfigError(f"{where}: unsupported setting type {kind}")


def _coerce_union(kinds: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None and type(None) in kinds:
        return None
    # bool before int: TOML `true` must not become 1.
    ordered = sorted((k for k in kinds if k is not type(None)), key=lambda k: k is not bool)
    if len(ordered) == 1:
        return _coerce(ordered[0], value, where)
    for kind in ordered:
        try:
            return _coerce(kind, value, where)
        except ConfigError:
            continue
    names = " or ".join(getattr(k, "__name__", str(k)) for k in ordered)
    raise ConfigError(f"{where}: cannot use {value!r}: expected {names}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError("expected true or false")


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError("expected a whole number")
    return int(value)


def _build(kind: Any, entry: Any, where: str) -> Any:
    if isinstance(entry, kind):
        return entry
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a table")
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(entry) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]}")
    hints = typing.get_type_hints(kind)
    try:
        return kind(**{k: _coerce(hints[k], v, f"{where}.{k}") for k, v in entry.items()})
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _apply_env(config: Config, name: str, raw: str) -> None:
    """Maps PARLEY_AUTH_EXTERNAL_JWT_ISSUER to auth.external_jwt.issuer."""
    words = name[len(ENV_PREFIX) :].lower()
    target: Any = config
    path: list[str] = []
    while True:
        fields = sorted((f.name for f in dataclasses.fields(target)), key=len, reverse=True)
        match = next((f for f in fields if words == f or words.startswith(f + "_")), None)
        if match is None:
            raise ConfigError(f"environment variable {name} names no setting")
        path.append(match)
        words = words[len(match) + 1 :]
        value = getattr(target, match)
        if not words:
            _set_path(config, path, raw, name)
            return
        if not dataclasses.is_dataclass(value):
            raise ConfigError(f"environment variable {name} names no setting")
        target = value


def _set_path(config: Config, path: list[str], value: Any, where: str) -> None:
    target: Any = config
    for part in path[:-1]:
        target = getattr(target, part, None)
        if target is None or not dataclasses.is_dataclass(target):
            raise ConfigError(f"{where} names no setting")
    fields = {f.name: f for f in dataclasses.fields(target)}
    if path[-1] not in fields:
        raise ConfigError(f"{where} names no setting")
    _assign(target, fields[path[-1]], value, where)
