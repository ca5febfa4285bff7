"""Static checks of the container files: docker/Dockerfile, docker/compose.yaml, .dockerignore.

No Docker engine runs here, so these tests read the files and hold them to
the real CLI parser and config loader: a command the `parley` CLI would
reject, a peer address pointing at the wrong port or an environment variable
that names no setting fails here rather than in a container.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from parley.cli.main import build_parser
from services.runtime.config import ENV_PREFIX, PeersConfig, ServerConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

GATEWAY = "gateway"
# The gateways, all alike but for their ports.
GATEWAYS = (GATEWAY, "gateway-2")
# The services the gateway forwards to: exactly the `peers.*` addresses.
PEERS = tuple(f.name for f in dataclasses.fields(PeersConfig) if isinstance(f.default, str))
PARLEY_SERVICES = (*PEERS, GATEWAY)
SCALE_OUT_SERVICES = ("postgres", "nats")
SECRET_WORDS = ("CREDENTIAL", "PASSWORD", "SECRET", "TOKEN", "KEY")
INTERPOLATION = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}$")


# --- helpers -----------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def services() -> dict[str, Any]:
    found: dict[str, Any] = load_compose()["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whether written as a mapping or as a list."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(entry.split("=", 1) for entry in raw)
    return {str(k): str(v) for k, v in raw.items()}


def representative(name: str, value: str) -> str:
    """What an operator would put where the compose file interpolates a variable."""
    if not INTERPOLATION.match(value):
        return re.sub(r"\$\{[^}]*\}", "x", value)  # one inside a value (a password in a URL)
    if "CREDENTIALS" in name:
        return "backend=s3cret"
    if name.startswith(f"{ENV_PREFIX}PEERS_"):
        return "host:1"
    return "x"


def resolved_env(service: dict[str, Any]) -> dict[str, str]:
    return {name: representative(name, value) for name, value in environment(service).items()}


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parses like the `parley` entry point; argparse's exit becomes a test failure."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`parley {' '.join(argv)}` is rejected by the CLI (exit {exc.code})")


def serve_args(name: str) -> argparse.Namespace:
    command = services()[name]["command"]
    assert isinstance(command, list), f"{name}: command must be an exec-form list"
    return parse_cli([str(part) for part in command])


def served_port(name: str) -> int:
    port = serve_args(name).port
    assert isinstance(port, int)
    return port


def port_of(address: str) -> int:
    host, _, port = address.rpartition(":")
    assert host, f"{address!r} is not host:port"
    return int(port)


def health_args(test: list[str]) -> argparse.Namespace:
    assert test[0] == "CMD", f"health check must be exec form, got {test[0]!r}"
    assert test[1] == "parley", f"health check must run parley, got {test[1]!r}"
    args = parse_cli(test[2:])
    assert args.command == "health"
    return args


def interpolation(value: str) -> re.Match[str]:
    match = INTERPOLATION.match(value)
    assert match, f"{value!r} is not a ${{VARIABLE}} interpolation"
    return match


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [rest for found, rest in dockerfile_instructions() if found == keyword]


def only(values: list[str], what: str) -> str:
    assert len(values) == 1, f"expected one {what}, found {values}"
    return values[0]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list), f"{text!r} must be exec (JSON array) form"
    return [str(part) for part in value]


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` (or a directory above it) out of the context."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for pattern in patterns for prefix in prefixes)


# --- compose: the Parley services ----------------------------------------------


def test_compose_runs_every_parley_service() -> None:
    assert set(PARLEY_SERVICES) <= set(services())


@pytest.mark.parametrize("name", PARLEY_SERVICES)
def test_command_serves_that_service_on_its_own_port(name: str) -> None:
    args = serve_args(name)
    assert args.command == "serve"
    assert args.service == name
    assert args.port is not None, f"{name} must pass --port"
    # Reachable from the other containers, storing where the volume is mounted.
    assert args.host == "0.0.0.0"
    assert args.data_dir == Path("/data")


def test_ports_are_the_defaults_the_config_uses() -> None:
    expected = {peer: port_of(getattr(PeersConfig(), peer)) for peer in PEERS}
    expected[GATEWAY] = ServerConfig().port
    assert {name: served_port(name) for name in PARLEY_SERVICES} == expected
    assert len(set(expected.values())) == len(expected)


@pytest.mark.parametrize("name", PARLEY_SERVICES)
def test_health_check_probes_the_port_the_service_serves(name: str) -> None:
    check = services()[name]["healthcheck"]
    args = health_args(check["test"])
    assert port_of(args.addr) == served_port(name)
    assert args.addr.rpartition(":")[0] in ("localhost", "127.0.0.1")
    for setting in ("interval", "timeout", "retries", "start_period"):
        assert setting in check, f"{name}: healthcheck needs {setting}"


@pytest.mark.parametrize("name", PARLEY_SERVICES)
def test_peer_addresses_name_a_compose_service_and_its_port(name: str) -> None:
    env = environment(services()[name])
    peers = {key: value for key, value in env.items() if key.startswith(f"{ENV_PREFIX}PEERS_")}
    for key, address in peers.items():
        host = address.rpartition(":")[0]
        assert host in services(), f"{name}: {key}={address} names no compose service"
        assert host in PARLEY_SERVICES, f"{name}: {key}={address} is not a Parley service"
        assert port_of(address) == served_port(host), f"{name}: {key}={address} but {host} serves elsewhere"


def test_gateway_reaches_every_peer_through_the_config() -> None:
    config = load_config(env=resolved_env(services()[GATEWAY]))
    for peer in PEERS:
        assert getattr(config.peers, peer) == f"{peer}:{served_port(peer)}"


@pytest.mark.parametrize("name", [p for p in PEERS if p != "identity"])
def test_services_fetch_verification_keys_from_the_identity_container(name: str) -> None:
    # room, history and file verify tokens with keys served by peers.identity;
    # the default (127.0.0.1) would point each container at itself.
    config = load_config(env=resolved_env(services()[name]))
    assert config.peers.identity == f"identity:{served_port('identity')}"


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_gateways_start_after_their_peers_and_the_bus_are_healthy(gateway: str) -> None:
    depends_on = services()[gateway]["depends_on"]
    assert isinstance(depends_on, dict), "depends_on must be the long form with conditions"
    assert set(depends_on) == {*PEERS, "nats"}
    for peer in (*PEERS, "nats"):
        assert depends_on[peer] == {"condition": "service_healthy"}


def test_only_the_gateways_publish_ports() -> None:
    publishing = {name for name, service in services().items() if service.get("ports")}
    assert publishing == set(GATEWAYS)
    (mapping,) = services()[GATEWAY]["ports"]
    published, _, container = str(mapping).rpartition(":")
    assert int(container) == served_port(GATEWAY)
    assert int(published) == ServerConfig().port


def test_the_second_gateway_is_the_first_on_another_port() -> None:
    first, second = services()[GATEWAY], services()[GATEWAYS[1]]
    assert environment(first) == environment(second)
    assert serve_args(GATEWAYS[1]).service == GATEWAY
    (mapping,) = second["ports"]
    published, _, container = str(mapping).rpartition(":")
    assert int(published) == int(container) == serve_args(GATEWAYS[1]).port != served_port(GATEWAY)
    assert port_of(health_args(second["healthcheck"]["test"]).addr) == int(container)


@pytest.mark.parametrize("name", PARLEY_SERVICES)
def test_every_parley_service_shares_the_bus_and_the_database(name: str) -> None:
    config = load_config(env=resolved_env(services()[name]))
    assert config.bus.url == "nats://nats:4222"
    assert urlsplit(config.storage.url).hostname == "postgres"
    if name in ("identity", "room", "history"):  # they keep state, and announce on the bus
        assert {"postgres", "nats"} <= set(services()[name]["depends_on"])


@pytest.mark.parametrize("name", PARLEY_SERVICES)
def test_services_that_store_data_keep_it_in_their_own_named_volume(name: str) -> None:
    stores = any("server.data_dir" in source.read_text() for source in (ROOT / "services" / name).glob("*.py"))
    mounts = [str(entry) for entry in services()[name].get("volumes", [])]
    if not stores:
        assert not mounts, f"{name} stores nothing; drop its volume"
        return
    data_dir = str(serve_args(name).data_dir)
    volume = next((m.split(":")[0] for m in mounts if m.split(":")[1] == data_dir), None)
    assert volume is not None, f"{name} writes to --data-dir {data_dir} but mounts nothing there"
    assert volume in (load_compose().get("volumes") or {}), f"{volume} must be a named volume"
    others = {
        str(entry).split(":")[0]
        for other, service in services().items()
        if other != name
        for entry in service.get("volumes", [])
    }
    assert volume not in others, f"{volume} is shared with another service"


@pytest.mark.parametrize("name", PARLEY_SERVICES)
def test_every_parley_service_shares_the_backend_credentials(name: str) -> None:
    # Every process verifies tokens itself, so each needs the same credentials.
    credentials = environment(services()[name]).get(f"{ENV_PREFIX}AUTH_SERVICE_CREDENTIALS")
    assert credentials is not None
    match = interpolation(credentials)
    assert match["op"] == ":?", "compose must refuse to start without credentials"
    assert credentials == environment(services()[GATEWAY])[f"{ENV_PREFIX}AUTH_SERVICE_CREDENTIALS"]


@pytest.mark.parametrize("name", PARLEY_SERVICES)
def test_shutdown_grace_outlasts_the_server_drain(name: str) -> None:
    period = str(services()[name].get("stop_grace_period", "10s"))
    match = re.fullmatch(r"(\d+)s", period)
    assert match, f"{name}: write stop_grace_period in seconds, e.g. 15s"
    config = load_config(env=resolved_env(services()[name]))
    assert int(match[1]) > config.server.grace_seconds


@pytest.mark.parametrize("name", PARLEY_SERVICES)
def test_parley_services_start_by_default_and_use_the_repo_image(name: str) -> None:
    service = services()[name]
    assert not service.get("profiles")
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (COMPOSE_FILE.parent / service["build"]["context"]).resolve() == ROOT
    assert (ROOT / service["build"]["dockerfile"]).resolve() == DOCKERFILE


# --- compose: PostgreSQL and NATS ----------------------------------------------


def test_postgres_is_checked_with_pg_isready() -> None:
    postgres = services()["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    test = postgres["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    assert "pg_isready" in " ".join(test[1:])
    assert "POSTGRES_PASSWORD" in environment(postgres)


def test_nats_runs_jetstream_and_is_checked_on_its_monitoring_port() -> None:
    nats = services()["nats"]
    assert str(nats["image"]).startswith("nats:2")
    command = [str(part) for part in nats["command"]]
    assert "-js" in command
    assert command[command.index("-m") + 1] == "8222"
    test = nats["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert any(re.fullmatch(r"http://(localhost|127\.0\.0\.1):8222/healthz", part) for part in test)


# --- compose: secrets and environment names ------------------------------------


def test_no_secret_is_written_into_the_compose_file() -> None:
    checked = 0
    for name, service in services().items():
        for key, value in environment(service).items():
            if not any(word in key.upper() for word in SECRET_WORDS):
                continue
            match = interpolation(value)
            if match["op"] in ("-", ":-"):
                assert not match["arg"], f"{name}: {key} defaults to a literal secret"
            assert match["op"] not in ("+", ":+"), f"{name}: {key} substitutes a literal secret"
            checked += 1
    assert checked >= len(PARLEY_SERVICES) + 1  # the credentials everywhere, the postgres password


def test_every_parley_variable_names_a_config_setting() -> None:
    names: dict[str, str] = {}
    for service in services().values():
        names.update({k: v for k, v in resolved_env(service).items() if k.startswith(ENV_PREFIX)})
    for line in dockerfile("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", line):
            if key.startswith(ENV_PREFIX):
                names[key] = value
    assert names
    for name, value in names.items():
        load_config(env={name: value})  # raises ConfigError for a name with no setting


def test_interpolated_parley_variables_are_config_settings_too() -> None:
    # `parley serve` rejects any PARLEY_* variable that names no setting, so a
    # variable the operator exports for compose must not break a local serve.
    for service in services().values():
        for value in environment(service).values():
            match = INTERPOLATION.match(value)
            if match and match["name"].startswith(ENV_PREFIX):
                load_config(env={match["name"]: representative(match["name"], value)})


# --- Dockerfile ----------------------------------------------------------------


def test_image_is_python_311_slim() -> None:
    assert only(dockerfile("FROM"), "FROM") == "python:3.11-slim"


def test_entrypoint_is_the_parley_cli() -> None:
    assert exec_form(only(dockerfile("ENTRYPOINT"), "ENTRYPOINT")) == ["parley"]


def test_default_command_serves_everything_on_the_exposed_port_and_volume() -> None:
    args = parse_cli(exec_form(only(dockerfile("CMD"), "CMD")))
    assert args.command == "serve"
    assert args.service == "all"
    assert args.host == "0.0.0.0"
    port = args.port if args.port is not None else ServerConfig().port
    assert dockerfile("EXPOSE") == [str(port)]
    assert str(args.data_dir) in dockerfile("VOLUME")


def test_image_health_check_runs_parley_health_on_the_default_port() -> None:
    healthcheck = only(dockerfile("HEALTHCHECK"), "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert all(option.startswith("--") for option in options.split()), options
    args = health_args(["CMD", *exec_form(command)])
    assert port_of(args.addr) == ServerConfig().port


def test_image_runs_as_a_non_root_user() -> None:
    users = dockerfile("USER")
    assert users, "the image must switch away from root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_image_installs_parley_non_editable() -> None:
    installs = [run for run in dockerfile("RUN") if "pip install" in run]
    assert installs
    for run in installs:
        words = run.split()
        assert "." in words
        assert "--no-cache-dir" in words
        assert "-e" not in words
        assert "--editable" not in words


def test_dockerfile_copies_only_files_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for copy in dockerfile("COPY"):
        *sources, _destination = copy.split()
        for source in sources:
            assert not source.startswith("--"), "COPY --from/--chown are not expected here"
            assert (ROOT / source).exists(), f"COPY {source}: no such file at the repository root"
            assert not ignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv", "node_modules", "data", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    assert ignored("services/runtime/__pycache__/config.cpython-311.pyc", patterns)
    assert not ignored("services/runtime/config.py", patterns)
