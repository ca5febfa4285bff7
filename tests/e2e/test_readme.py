"""The README's quick start and Python example, run twice against `make run`, as a newcomer would."""

from __future__ import annotations

from pathlib import Path

from services.runtime.config import Config
from tests.e2e.doc_examples import Examples, commands, doc_server, reader_env, run_examples
from tests.support import REPO

README = (REPO / "README.md").read_text()


def test_the_quick_start_runs_against_make_run_and_says_how_long_its_token_lasts() -> None:
    examples = Examples.of(README)
    assert examples.serve is None
    assert "Start Parley with `make run`" in README
    assert any(c.startswith("parley user register") for c in commands(examples.consoles[0]))
    assert Config().auth.access_token_ttl_seconds == 300
    assert "valid for five minutes\n(`auth.access_token_ttl_seconds`, 300 by default)" in README


async def test_readme_runs_twice(tmp_path: Path) -> None:
    examples = Examples.of(README)
    assert (len(examples.consoles), len(examples.programs)) == (1, 1)
    home = tmp_path / "home"
    env = reader_env(home)
    async with doc_server(None, tmp_path / "data", tmp_path / "server.log", env) as address:
        for attempt in ("first", "second"):
            name = f"README ({attempt} run)"
            quick_start, program = await run_examples(name, examples, address, env, tmp_path / "cwd")
            assert "parley.identity.v1.IdentityService" in quick_start
            assert "SERVING" in quick_start
            assert '"username": "alice"' in quick_start
            assert "hi from Python" in program
    assert (home / ".config" / "parley" / "identity.json").exists()
