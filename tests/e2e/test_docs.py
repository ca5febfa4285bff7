"""Every console and Python example in docs/, run twice against the server each doc says to start.

Every doc with a ```console or ```python block is run; recipes that need
containers, PostgreSQL or NATS (deployment.md, benchmarks.md) are ```sh
blocks, which are not examples of this kind. The README's examples are run
by test_readme.py, with checks on what they print.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.doc_examples import Examples, doc_server, has_examples, reader_env, run_examples
from tests.support import REPO

DOCS = sorted(path.name for path in (REPO / "docs").glob("*.md") if has_examples(path.read_text()))


def test_the_docs_with_examples_are_found() -> None:
    assert {"rooms.md", "pubsub.md", "hooks.md", "backend-api.md", "history.md", "errors.md"} <= set(DOCS)
    assert "deployment.md" not in DOCS


@pytest.mark.parametrize("doc", DOCS)
async def test_doc_examples_run_twice(doc: str, tmp_path: Path) -> None:
    examples = Examples.of((REPO / "docs" / doc).read_text())
    env = reader_env(tmp_path / "home")
    async with doc_server(examples.serve, tmp_path / "data", tmp_path / "server.log", env) as address:
        for attempt in ("first", "second"):
            await run_examples(f"{doc} ({attempt} run)", examples, address, env, tmp_path / "cwd")
