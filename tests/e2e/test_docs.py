"""Every console and Python example in the feature docs, run against a real server
configured with examples/parley.toml."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from services import allinone
from services.runtime.config import HooksConfig, load_config
from tests.support import REPO, running

CONSOLE = re.compile(r"```console\n(.*?)```", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)
BACKEND_SECRET = "docs-backend-secret"
DOCS = ["rooms.md", "pubsub.md", "hooks.md", "backend-api.md", "history.md", "sdk.md"]
EXAMPLE_HOOKS = HooksConfig(
    before_join="examples.hooks:before_join",
    before_publish="examples.hooks:before_publish",
    after_publish="examples.hooks:after_publish",
)


async def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 40)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("doc", DOCS)
async def test_doc_examples_run(doc: str, data_dir: Path, tmp_path: Path) -> None:
    text = (REPO / "docs" / doc).read_text()
    consoles = CONSOLE.findall(text)
    programs = PYTHON.findall(text)
    assert consoles or programs, f"{doc} has no examples"
    config = load_config(
        REPO / "examples" / "parley.toml",
        overrides={
            "server.port": 0,
            "server.data_dir": data_dir,
            "auth.service_credentials": {"backend": BACKEND_SECRET},
            "hooks": EXAMPLE_HOOKS if doc == "hooks.md" else HooksConfig(),
        },
    )
    async with running(allinone.create_server, config) as (_, address):
        env = {
            **os.environ,
            "HOME": str(tmp_path),
            "PARLEY_ADDR": address,
            "BACKEND_SECRET": BACKEND_SECRET,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
        }
        env.pop("PARLEY_KEY_FILE", None)
        for block in consoles:
            commands = [line.removeprefix("$ ") for line in block.splitlines() if line.startswith("$ ")]
            script = "set -eu\n" + "\n".join(c.replace("localhost:50051", address) for c in commands)
            code, out, err = await run(["bash", "-c", script], env, REPO)
            assert code == 0, f"{doc}: console block failed\n{out}\n{err}"
        for program in programs:
            code, out, err = await run(
                [sys.executable, "-c", program.replace("localhost:50051", address)], env, tmp_path
            )
            assert code == 0, f"{doc}: python block failed\n{out}\n{err}"
