"""Run the SDK and CLI examples of the README and docs, as written, against a `make run` stack.

Every ```python and ```sh block of the pages below runs (blocks meant as listings or output
are fenced ```text); a `# prints: X` comment on a line must find X in the block's output. The
stack is `python -m devtools.stack run`, as `make run` starts it, and the examples find it
through the client.json it writes, as a reader's would.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conftest import clone_database
from tests.e2e.test_stack import REPO, running_stack, stack_env

# Each page, and the sections of it whose examples are the SDK's or the CLI's (None: all).
PAGES: dict[str, tuple[str, ...] | None] = {
    "README.md": ("## Chat from the command line", "## The SDK"),
    "docs/sdk.md": None,
    "docs/cli.md": None,
    "sdk/python/README.md": None,
}
RUNNABLE = ("python", "sh")
_FENCE = re.compile(r"^\s*```(\w*)\s*$")
_PRINTS = re.compile(r"#\s*prints:\s*(.+?)\s*$")
_BLOCK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    line: int
    language: str
    code: str

    @property
    def expected(self) -> list[str]:
        """Return what the block's `# prints:` comments promise, in order."""
        return [m.group(1) for line in self.code.splitlines() if (m := _PRINTS.search(line))]


def page_blocks(page: str, sections: tuple[str, ...] | None) -> list[Block]:
    """Return the runnable blocks of a page (of the given `## ` sections only, if any)."""
    found: list[Block] = []
    heading, language, start = "", None, 0
    lines: list[str] = []
    for number, line in enumerate((REPO / page).read_text().splitlines(), start=1):
        fence = _FENCE.match(line)
        if language is None:
            if line.startswith("## "):
                heading = line.strip()
            elif fence:
                language, start, lines = fence.group(1), number, []
        elif fence and not fence.group(1):
            wanted = sections is None or heading in sections
            if language in RUNNABLE and wanted:
                found.append(Block(page, start, language, "\n".join(lines) + "\n"))
            language = None
        else:
            lines.append(line)
    return found


BLOCKS = [block for page, sections in PAGES.items() for block in page_blocks(page, sections)]


def test_every_page_has_examples_to_run() -> None:
    """The extraction finds each page's examples (a broken parser would test nothing)."""
    pages = {block.page for block in BLOCKS}
    assert pages == set(PAGES)
    assert {block.language for block in BLOCKS} == set(RUNNABLE)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack_environment(
    pg_admin_dsn: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:
    """Run a `make run` stack for the module; yield the environment a reader's shell has."""
    database = await clone_database(pg_admin_dsn, template_dsn)
    env = stack_env(database, tmp_path_factory.mktemp("config"))
    stacks: list[tuple[int, int]] = []
    async with running_stack(env, stacks) as stack:
        await stack.wait_ready()
        reader = {k: v for k, v in env.items() if not k.startswith("AP_")}
        reader["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        reader["NO_COLOR"] = "1"
        yield reader
        assert await stack.stop() == 0, stack.output


async def run_block(block: Block, env: dict[str, str], workdir: Path) -> tuple[int, str]:
    """Run one block in a fresh process; return its exit code and output."""
    if block.language == "python":
        program = workdir / "example.py"
        program.write_text(block.code)
        argv = [sys.executable, str(program)]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), _BLOCK_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.page}:{b.line}" for b in BLOCKS])
async def test_example_runs_as_written(
    block: Block, stack_environment: dict[str, str], tmp_path: Path
) -> None:
    """The example exits 0 and prints what its `# prints:` comments say."""
    code, out = await run_block(block, stack_environment, tmp_path)
    assert code == 0, f"{block.page}:{block.line} exited {code}:\n{out}"
    position = 0
    for text in block.expected:
        found = out.find(text, position)
        assert found >= 0, f"{block.page}:{block.line} did not print {text!r}:\n{out}"
        position = found + len(text)
