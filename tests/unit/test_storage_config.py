"""The [storage] settings: one URL for all, one per service, from the file or the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.config import ConfigError, load_config


def test_without_a_url_every_service_is_on_sqlite() -> None:
    storage = load_config().storage
    assert [storage.url_of(s) for s in ("identity", "room", "history")] == ["", "", ""]


def test_one_url_for_all_and_one_service_elsewhere_from_the_environment() -> None:
    env = {
        "PARLEY_STORAGE_URL": "postgresql://parley@db/parley",
        "PARLEY_STORAGE_HISTORY_URL": "postgres://parley@logs/history",
        "PARLEY_STORAGE_MAX_CONNECTIONS": "4",
    }
    storage = load_config(env=env).storage
    assert storage.url_of("identity") == storage.url_of("room") == "postgresql://parley@db/parley"
    assert storage.url_of("history") == "postgres://parley@logs/history"
    assert storage.max_connections == 4


def test_a_service_on_postgresql_while_the_others_stay_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "parley.toml"
    path.write_text('[storage]\nroom_url = "postgresql://parley@db/rooms"\n')
    storage = load_config(path).storage
    assert [storage.url_of(s) for s in ("identity", "room", "history")] == ["", "postgresql://parley@db/rooms", ""]


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"PARLEY_STORAGE_URL": "sqlite:///data"}, "storage.url"),
        ({"PARLEY_STORAGE_IDENTITY_URL": "mysql://db/identity"}, "storage.identity_url"),
        ({"PARLEY_STORAGE_MAX_CONNECTIONS": "0"}, "storage.max_connections"),
    ],
)
def test_a_url_parley_cannot_use_is_named(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        load_config(env=env)
