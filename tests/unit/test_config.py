"""load_config: defaults < TOML file < PARLEY_* environment < overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from services.runtime.config import DEFAULT_MEDIA_TYPES, Config, ConfigError, RoomDefinition, load_config


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "parley.toml"
    path.write_text(text)
    return path


# --- defaults -----------------------------------------------------------------


def test_defaults_without_any_source() -> None:
    config = load_config()
    assert config == Config()
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 50051
    assert config.server.data_dir == Path("./data")
    assert config.auth.issuer == "parley"
    assert config.auth.service_credentials == {}
    assert config.auth.external_jwt.enabled is False
    assert config.telemetry.tracing == "off"
    assert config.rooms == []


def test_defaults_are_not_shared_between_configs() -> None:
    first = load_config()
    first.auth.service_credentials["x"] = "y"
    first.files.media_types.append("image/png")
    second = load_config()
    assert second.auth.service_credentials == {}
    assert second.files.media_types == list(DEFAULT_MEDIA_TYPES)


# --- TOML file ------------------------------------------------------------------


def test_toml_file_sets_nested_values(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[server]
host = "0.0.0.0"
port = 6000
data_dir = "/var/lib/parley"
grace_seconds = 2.5

[auth]
access_token_ttl_seconds = 60
service_credentials = { backend = "s3cret", worker = "other" }

[auth.external_jwt]
issuer = "https://app.example"
audience = "parley"
key_file = "/etc/parley/app.pem"
algorithms = ["RS256"]

[telemetry]
tracing = "console"
metrics = "otlp"

[files]
media_types = ["image/png", "image/jpeg"]
""",
    )
    config = load_config(path)
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 6000
    assert config.server.data_dir == Path("/var/lib/parley")
    assert isinstance(config.server.data_dir, Path)
    assert config.server.grace_seconds == 2.5
    assert config.auth.access_token_ttl_seconds == 60
    assert config.auth.service_credentials == {"backend": "s3cret", "worker": "other"}
    assert config.auth.external_jwt.issuer == "https://app.example"
    assert config.auth.external_jwt.audience == "parley"
    assert config.auth.external_jwt.algorithms == ["RS256"]
    assert config.auth.external_jwt.enabled is True
    assert config.telemetry.tracing == "console"
    assert config.telemetry.metrics == "otlp"
    assert config.files.media_types == ["image/png", "image/jpeg"]
    # Untouched settings keep their defaults.
    assert config.server.max_message_bytes == 4 * 1024 * 1024
    assert config.auth.issuer == "parley"
    assert config.peers.identity == "127.0.0.1:50052"


def test_toml_int_given_for_float_setting_becomes_float(tmp_path: Path) -> None:
    config = load_config(write_toml(tmp_path, "[server]\ngrace_seconds = 3\n"))
    assert config.server.grace_seconds == 3.0
    assert isinstance(config.server.grace_seconds, float)


def test_toml_rooms_array_of_tables(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[[rooms]]
id = "lobby"
name = "Lobby"
max_size = 50

[[rooms]]
id = "staff"
description = "Staff only"
visibility = "unlisted"
""",
    )
    config = load_config(path)
    assert config.rooms == [
        RoomDefinition(id="lobby", name="Lobby", max_size=50),
        RoomDefinition(id="staff", description="Staff only", visibility="unlisted"),
    ]
    assert all(isinstance(room, RoomDefinition) for room in config.rooms)


def test_toml_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "does-not-exist.toml")


def test_toml_syntax_error_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(write_toml(tmp_path, "[server\nport = 1\n"))


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("colour = 1\n", "colour"),
        ("[server]\nprot = 1\n", "server.prot"),
        ("[auth.external_jwt]\nissuerr = 'x'\n", "auth.external_jwt.issuerr"),
    ],
)
def test_toml_unknown_key_is_named(tmp_path: Path, text: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"unknown setting {setting}")):
        load_config(write_toml(tmp_path, text))


def test_toml_unknown_key_in_room_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting colour"):
        load_config(write_toml(tmp_path, "[[rooms]]\nid = 'a'\ncolour = 'red'\n"))


def test_toml_room_without_id_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rooms\[0\].*'id'"):
        load_config(write_toml(tmp_path, "[[rooms]]\nname = 'nameless'\n"))


def test_toml_room_that_is_not_a_table_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(write_toml(tmp_path, "rooms = ['lobby']\n"))


@pytest.mark.parametrize(
    "text",
    [
        "[server]\nport = 'eighty'\n",
        "[server]\nport = true\n",
        "[server]\nport = [1]\n",
        "[server]\ngrace_seconds = 'soon'\n",
        "server = 5\n",
        "rooms = 5\n",
        "[[rooms]]\nid = 'a'\nmax_size = 'big'\n",
    ],
)
def test_toml_bad_types_are_config_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write_toml(tmp_path, text))


# The next three pin down type checks the loader gets wrong today (see report).


def test_toml_list_for_credentials_table_is_config_error(tmp_path: Path) -> None:
    # BUG: `_coerce` calls `value.items()` on a non-mapping, so this raises
    # AttributeError instead of ConfigError, escaping callers that catch ConfigError.
    with pytest.raises(ConfigError, match="service_credentials"):
        load_config(write_toml(tmp_path, '[auth]\nservice_credentials = ["backend"]\n'))


def test_toml_list_for_string_setting_is_config_error(tmp_path: Path) -> None:
    # BUG: `str(value)` accepts anything, so the peer address becomes the
    # literal string "['10.0.0.1:50052']" instead of being rejected.
    with pytest.raises(ConfigError, match=r"peers\.identity"):
        load_config(write_toml(tmp_path, '[peers]\nidentity = ["10.0.0.1:50052"]\n'))


def test_toml_fractional_port_is_config_error(tmp_path: Path) -> None:
    # BUG: `int(50051.9)` silently truncates to 50051.
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(write_toml(tmp_path, "[server]\nport = 50051.9\n"))


# --- environment ----------------------------------------------------------------


def test_env_simple_setting() -> None:
    config = load_config(env={"PARLEY_SERVER_PORT": "7000"})
    assert config.server.port == 7000
    assert isinstance(config.server.port, int)


def test_env_nested_section_with_underscores_in_names() -> None:
    config = load_config(
        env={
            "PARLEY_AUTH_EXTERNAL_JWT_ISSUER": "https://app.example",
            "PARLEY_AUTH_EXTERNAL_JWT_AUDIENCE": "parley",
            "PARLEY_AUTH_EXTERNAL_JWT_KEY_FILE": "/etc/parley/app.pem",
            "PARLEY_AUTH_KEY_REFRESH_INTERVAL_SECONDS": "1.5",
            "PARLEY_SERVER_KEEPALIVE_TIMEOUT_MS": "1234",
            "PARLEY_SERVER_KEEPALIVE_TIME_MS": "5678",
        }
    )
    assert config.auth.external_jwt.issuer == "https://app.example"
    assert config.auth.external_jwt.key_file == "/etc/parley/app.pem"
    assert config.auth.external_jwt.key == ""
    assert config.auth.issuer == "parley"  # not confused with external_jwt.issuer
    assert config.auth.key_refresh_interval_seconds == 1.5
    assert config.server.keepalive_timeout_ms == 1234
    assert config.server.keepalive_time_ms == 5678


def test_env_service_credentials_parse_to_dict() -> None:
    config = load_config(env={"PARLEY_AUTH_SERVICE_CREDENTIALS": "a=x,b=y"})
    assert config.auth.service_credentials == {"a": "x", "b": "y"}


def test_env_service_credentials_strip_spaces_and_keep_equals_in_secret() -> None:
    config = load_config(env={"PARLEY_AUTH_SERVICE_CREDENTIALS": " a = x=1 , b=y,"})
    assert config.auth.service_credentials == {"a": "x=1", "b": "y"}


def test_env_service_credentials_without_equals_is_config_error() -> None:
    with pytest.raises(ConfigError, match="PARLEY_AUTH_SERVICE_CREDENTIALS"):
        load_config(env={"PARLEY_AUTH_SERVICE_CREDENTIALS": "a=x,b"})


def test_env_list_is_comma_separated() -> None:
    config = load_config(env={"PARLEY_AUTH_EXTERNAL_JWT_ALGORITHMS": "EdDSA,,ES256"})
    assert config.auth.external_jwt.algorithms == ["EdDSA", "ES256"]


def test_env_path_setting_becomes_path() -> None:
    config = load_config(env={"PARLEY_SERVER_DATA_DIR": "/srv/parley"})
    assert config.server.data_dir == Path("/srv/parley")


def test_env_ignores_variables_without_prefix() -> None:
    config = load_config(env={"PATH": "/usr/bin", "HOME": "/root", "SERVER_PORT": "1", "parley_server_port": "2"})
    assert config == Config()


@pytest.mark.parametrize(
    "name",
    [
        "PARLEY_SERVER_PROT",
        "PARLEY_NOPE",
        "PARLEY_SERVERPORT",
        "PARLEY_SERVER_PORT_EXTRA",
        "PARLEY_AUTH_EXTERNAL_JWT_NOPE",
        "PARLEY_",
    ],
)
def test_env_unknown_name_is_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(env={name: "1"})


@pytest.mark.parametrize(
    "env",
    [
        {"PARLEY_SERVER_PORT": "eighty"},
        {"PARLEY_SERVER_PORT": ""},
        {"PARLEY_SERVER_GRACE_SECONDS": "soon"},
        {"PARLEY_SERVER": "x"},  # a whole section cannot be set from one variable
        {"PARLEY_ROOMS": "lobby"},
    ],
)
def test_env_bad_values_are_config_errors(env: dict[str, str]) -> None:
    (name,) = env
    with pytest.raises(ConfigError, match=name):
        load_config(env=env)


# --- overrides ------------------------------------------------------------------


def test_overrides_dotted_paths() -> None:
    config = load_config(
        overrides={
            "server.port": 0,
            "server.data_dir": "/tmp/x",
            "auth.external_jwt.audience": "aud",
            "auth.service_credentials": {"backend": "s"},
            "rooms": [{"id": "lobby", "max_size": 3}],
        }
    )
    assert config.server.port == 0
    assert config.server.data_dir == Path("/tmp/x")
    assert config.auth.external_jwt.audience == "aud"
    assert config.auth.service_credentials == {"backend": "s"}
    assert config.rooms == [RoomDefinition(id="lobby", max_size=3)]


def test_overrides_none_values_are_ignored(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 6000\nhost = '0.0.0.0'\n")
    config = load_config(path, overrides={"server.port": None, "server.host": None})
    assert config.server.port == 6000
    assert config.server.host == "0.0.0.0"


@pytest.mark.parametrize("dotted", ["server.prot", "nope.port", "server.port.extra", "auth.external_jwt.x"])
def test_overrides_unknown_paths_are_config_errors(dotted: str) -> None:
    with pytest.raises(ConfigError, match="names no setting"):
        load_config(overrides={dotted: 1})


# --- precedence -----------------------------------------------------------------


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[server]
host = "file-host"
port = 1001
grace_seconds = 9.0
max_message_bytes = 1000
""",
    )
    env = {
        "PARLEY_SERVER_PORT": "2002",
        "PARLEY_SERVER_GRACE_SECONDS": "8.0",
    }
    overrides: dict[str, Any] = {"server.port": 3003}
    config = load_config(path, env=env, overrides=overrides)
    assert config.server.port == 3003  # override beats env and file
    assert config.server.grace_seconds == 8.0  # env beats file
    assert config.server.host == "file-host"  # file beats default
    assert config.server.max_message_bytes == 1000
    assert config.server.keepalive_time_ms == 30_000  # default


def test_env_credentials_replace_file_credentials(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[auth]\nservice_credentials = { old = 'o' }\n")
    config = load_config(path, env={"PARLEY_AUTH_SERVICE_CREDENTIALS": "new=n"})
    assert config.auth.service_credentials == {"new": "n"}


# --- validation -----------------------------------------------------------------


@pytest.mark.parametrize("port", [-1, 65536, 100_000])
def test_port_out_of_range(port: int) -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(overrides={"server.port": port})


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_port_edges_accepted(port: int) -> None:
    assert load_config(overrides={"server.port": port}).server.port == port


def test_port_out_of_range_from_env() -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(env={"PARLEY_SERVER_PORT": "70000"})


def test_duplicate_room_ids(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[[rooms]]\nid = 'lobby'\n\n[[rooms]]\nid = 'lobby'\nname = 'again'\n")
    with pytest.raises(ConfigError, match="duplicate room id 'lobby'"):
        load_config(path)


def test_bad_room_visibility(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[[rooms]]\nid = 'lobby'\nvisibility = 'secret'\n")
    with pytest.raises(ConfigError, match=r"rooms\.lobby\.visibility"):
        load_config(path)


@pytest.mark.parametrize("setting", ["tracing", "metrics"])
def test_bad_telemetry_mode(setting: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"telemetry.{setting}")):
        load_config(overrides={f"telemetry.{setting}": "loud"})


@pytest.mark.parametrize("mode", ["off", "console", "otlp"])
def test_good_telemetry_modes(mode: str) -> None:
    config = load_config(env={"PARLEY_TELEMETRY_TRACING": mode, "PARLEY_TELEMETRY_METRICS": mode})
    assert (config.telemetry.tracing, config.telemetry.metrics) == (mode, mode)


def test_bad_logging_format() -> None:
    with pytest.raises(ConfigError, match=r"logging\.format"):
        load_config(env={"PARLEY_LOGGING_FORMAT": "xml"})


@pytest.mark.parametrize(
    ("data", "total"),
    [(0, 5), (6, 5), (3, 256)],
)
def test_bad_share_counts(data: int, total: int) -> None:
    with pytest.raises(ConfigError, match="data_shares"):
        load_config(overrides={"files.data_shares": data, "files.total_shares": total})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"auth.external_jwt.issuer": "https://app", "auth.external_jwt.key": "k"}, "audience is required"),
        ({"auth.external_jwt.issuer": "https://app", "auth.external_jwt.audience": "p"}, "needs key or key_file"),
        (
            {"auth.external_jwt.issuer": "parley", "auth.external_jwt.audience": "p", "auth.external_jwt.key": "k"},
            "must differ from auth.issuer",
        ),
    ],
)
def test_external_jwt_needs_audience_key_and_own_issuer(settings: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_config(overrides=settings)


@pytest.mark.parametrize("setting", ["history.prune_interval_seconds", "gateway.ephemeral_ttl_seconds"])
def test_intervals_must_be_positive(setting: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{setting} must be positive")):
        load_config(overrides={setting: 0})


@pytest.mark.parametrize("setting", ["history.hot_events_per_name", "history.hot_buffer_bytes"])
def test_hot_buffer_sizes_must_not_be_negative(setting: str) -> None:
    assert getattr(load_config(overrides={setting: 0}).history, setting.split(".")[1]) == 0  # 0 turns it off
    with pytest.raises(ConfigError, match=re.escape(f"{setting} must not be negative")):
        load_config(overrides={setting: -1})
