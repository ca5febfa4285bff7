"""Runs a doc's examples as a reader would: its server started as the doc says, from the repo root.

A doc's ```console blocks run line by line (`$ ` lines) in bash from the repo
root; its ```python blocks run as programs from an empty directory, which
must stay empty. The server is the doc's own `parley serve` line (a ```sh
block) or, when it has none, `make run`. Everything runs twice against the
same server and HOME, as a reader trying the examples again would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support import LISTENING, REPO

CONSOLE = re.compile(r"```console\n(.*?)```", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)
SERVE = re.compile(r"```sh\n((?:\w+=\S+ )*\.venv/bin/parley serve [^\n]*)\n```")
EXPORT = re.compile(r"^\$ export (\w+)=([^$\s]+)$", re.M)
DOCUMENTED_ADDRESS = "localhost:50051"
BIN = Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class Examples:
    consoles: list[str]
    programs: list[str]
    serve: str | None  # the doc's `parley serve` line; None: `make run`
    exported: dict[str, str]  # `$ export NAME=VALUE` in its console blocks: the Python blocks' terminal has them

    @classmethod
    def of(cls, text: str) -> Examples:
        serves = SERVE.findall(text)
        assert len(serves) <= 1, f"more than one server command: {serves}"
        consoles = CONSOLE.findall(text)
        exported = dict(EXPORT.findall("\n".join(consoles)))
        return cls(consoles, PYTHON.findall(text), serves[0] if serves else None, exported)


def has_examples(text: str) -> bool:
    return bool(CONSOLE.search(text) or PYTHON.search(text))


def commands(block: str) -> list[str]:
    return [line.removeprefix("$ ") for line in block.splitlines() if line.startswith("$ ")]


def reader_env(home: Path) -> dict[str, str]:
    """A reader's shell: no PYTHONPATH, no PARLEY_* settings of the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_") and k != "PYTHONPATH"}
    return {**env, "HOME": str(home), "PATH": f"{BIN}:{env['PATH']}"}


@contextlib.asynccontextmanager
async def doc_server(serve: str | None, data_dir: Path, log: Path, env: dict[str, str]) -> AsyncIterator[str]:
    """The doc's server on a free port; yields "127.0.0.1:PORT"."""
    if serve is None:
        # `-o` keeps make from reinstalling the shared .venv; the recipe is `run`'s.
        argv = ["make", "--no-print-directory", "-o", ".venv/.installed", "run", "PORT=0", f"DATA_DIR={data_dir}"]
    else:
        argv = ["bash", "-c", f"{serve} --port 0 --data-dir {data_dir}"]
    with log.open("w") as errors:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=errors, start_new_session=True
        )
        try:
            port = await asyncio.wait_for(listening_port(process, log), 60)
            yield f"127.0.0.1:{port}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            await asyncio.wait_for(process.communicate(), 30)


async def listening_port(process: asyncio.subprocess.Process, log: Path) -> int:
    assert process.stdout is not None
    while line := (await process.stdout.readline()).decode():
        if match := LISTENING.search(line):
            return int(match.group(2))
    raise AssertionError(f"the server exited:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


def entries(directory: Path) -> list[Path]:
    directory.mkdir(exist_ok=True)
    return list(directory.iterdir())


async def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def run_examples(name: str, examples: Examples, address: str, env: dict[str, str], workdir: Path) -> list[str]:
    """Every console block, then every Python block; returns their outputs. Fails on the first failure."""
    outputs = []
    for block in examples.consoles:
        # -e stops at the first failing line; no pipefail, as in a reader's shell, so a
        # line may pipe a refused command into grep to show the refusal.
        script = "set -eu\n" + "\n".join(commands(block)).replace(DOCUMENTED_ADDRESS, address)
        code, out, err = await run(["bash", "-c", script], {**env, "PARLEY_ADDR": address}, REPO)
        assert code == 0, f"{name}: console block failed\n{block}\n{out}\n{err}"
        outputs.append(out)
    assert entries(workdir) == []
    for program in examples.programs:
        argv = [sys.executable, "-c", program.replace(DOCUMENTED_ADDRESS, address)]
        code, out, err = await run(argv, {**env, **examples.exported}, workdir)
        assert code == 0, f"{name}: python block failed\n{program}\n{out}\n{err}"
        assert entries(workdir) == [], f"{name}: a python block wrote into the current directory"
        outputs.append(out)
    return outputs
