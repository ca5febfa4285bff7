"""The README's quick start, executed line by line against a real server."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.support import REPO

QUICK_START = re.compile(r"```console\n(.*?)```", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)


def quick_start_commands() -> list[str]:
    block = QUICK_START.search((REPO / "README.md").read_text())
    assert block is not None, "README has no console quick start"
    return [line.removeprefix("$ ") for line in block.group(1).splitlines() if line.startswith("$ ")]


async def test_readme_quick_start_runs(server_address: str, tmp_path: Path) -> None:
    commands = quick_start_commands()
    assert any(c.startswith("parley user register") for c in commands)
    script = "set -euo pipefail\n" + "\n".join(c.replace("localhost:50051", server_address) for c in commands)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PARLEY_ADDR": server_address,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("PARLEY_KEY_FILE", None)
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "parley.identity.v1.IdentityService" in text
    assert "SERVING" in text
    assert '"username": "alice"' in text
    assert (tmp_path / ".config" / "parley" / "identity.json").exists()

    program = PYTHON.search((REPO / "README.md").read_text())
    assert program is not None, "README has no Python example"
    python = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program.group(1).replace("localhost:50051", server_address),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(python.communicate(), 60)
    assert python.returncode == 0, err.decode()
    assert "hi from Python" in out.decode()
