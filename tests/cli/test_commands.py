"""The real `ap` program, as processes, against a real control plane and worker."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from agentplatform import AsyncClient
from agentplatform.v1 import run_pb2

from ap_cli.context import invoked_as
from ap_cli.main import build_parser
from tests.harness import Stack

REPO = Path(__file__).resolve().parents[2]
AP = Path(sys.executable).with_name("ap")
SLOW = "[[tokens=40]] [[delay_ms=25]] [[reasoning=0]]"
# Long enough to still be running while another `ap` process starts; tests cancel it.
LONG = "[[tokens=2000]] [[delay_ms=10]] [[reasoning=0]]"
TIMEOUT_S = 30.0


@dataclass
class Ran:
    """What one `ap` process did."""

    code: int
    out: str
    err: str


@dataclass
class Ap:
    """Run `ap` as a user of one workspace would, with its key in the environment."""

    env: dict[str, str]
    program: str = str(AP)
    cwd: Path = REPO

    async def __call__(self, *args: str, stdin: str = "") -> Ran:
        """Run `ap ARGS` with `stdin` piped in; return its exit code and output."""
        proc = await asyncio.create_subprocess_exec(
            self.program,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), TIMEOUT_S)
        assert proc.returncode is not None
        return Ran(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def workspace(stack: Stack) -> AsyncIterator[tuple[Ap, AsyncClient]]:
    """Give a test its own workspace: `ap` configured for it, and an SDK client of it."""
    owner = await stack.new_workspace("CLI")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    env |= {"AP_ENDPOINT": stack.address, "AP_API_KEY": owner.api_key, "NO_COLOR": "1"}
    async with AsyncClient(stack.address, owner.api_key) as client:
        yield Ap(env), client


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse one JSON object per line."""
    return [json.loads(line) for line in text.splitlines()]


async def test_version_names_the_cli_and_the_sdk(workspace: tuple[Ap, AsyncClient]) -> None:
    """`ap --version` prints both versions and needs no configuration."""
    ap, _ = workspace
    ran = await Ap({"PATH": os.environ["PATH"]})("--version")
    expected = (
        f"ap {metadata.version('agentplatform')} "
        f"(agentplatform-sdk {metadata.version('agentplatform-sdk')})"
    )
    assert (ran.code, ran.out.strip()) == (0, expected)
    assert (await ap("--version")).out == ran.out


async def test_read_commands_print_canonical_json_lines(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """--json prints one proto3 JSON object per line: lists, shows, whoami and a run's stream."""
    ap, client = workspace
    session = await client.create_session(title="json")
    await client.send_message(session.name, "json please [[tokens=2]]")
    (run,) = [r async for r in client.list_runs(session.name)]

    listed = await ap("sessions", "list", "--json")
    assert listed.code == 0 and [s["name"] for s in json_lines(listed.out)] == [session.name]
    shown = json_lines((await ap("sessions", "show", session.name, "--json")).out)
    assert len(shown) == 1
    assert [m["text"] for m in shown[0]["messages"]] == ["json please [[tokens=2]]", "alpha bravo"]
    runs = json_lines((await ap("runs", "list", session.name, "--json")).out)
    assert [(r["name"], r["state"]) for r in runs] == [(run.name, "COMPLETED")]
    (detail,) = json_lines((await ap("runs", "show", run.name, "--json")).out)
    assert detail["run"]["name"] == run.name
    assert detail["outputMessage"]["text"] == "alpha bravo"
    watched = await ap("runs", "watch", run.name, "--json")
    events = json_lines(watched.out)
    assert watched.code == 0
    # Canonical JSON: int64 fields are strings, names are lowerCamelCase.
    assert [e["sequence"] for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert events[-1]["type"] == "run.completed"
    assert "".join(e["outputTextDelta"]["text"] for e in events if "outputTextDelta" in e) == (
        "alpha bravo"
    )
    (me,) = json_lines((await ap("whoami", "--json")).out)
    assert me["role"] == "owner"
    members = json_lines((await ap("members", "list", "--json")).out)
    assert [m["role"] for m in members] == ["owner"]
    keys = json_lines((await ap("keys", "list", "--json")).out)
    assert len(keys) == 1 and "key" not in keys[0]


# Commands that change something (or converse) rather than read; every other one has --json.
WRITES = {
    "sessions rename",
    "sessions rm",
    "runs cancel",
    "runs approve",
    "runs deny",
    "chat",
    "secrets put",
    "secrets rm",
    "vault rotate",
    "tools add-http",
    "tools add-mcp",
    "tools policy",
    "tools rm",
    "keys create",
    "keys revoke",
    "members add",
    "members set-role",
    "members remove",
    "members invite",
    "invitations revoke",
    "invitations accept",
    "completion",
}


def leaf_commands() -> dict[str, list[str]]:
    """Return each command of the parser (`group sub`) with its option strings."""
    found: dict[str, list[str]] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            found[prefix] = [s for a in parser._actions for s in a.option_strings]
            return
        for name, sub in subparsers[0].choices.items():
            walk(sub, f"{prefix} {name}".strip())

    walk(build_parser(), "")
    return found


def test_every_read_command_takes_json() -> None:
    """A read command without --json fails here (writes are listed in WRITES)."""
    commands = leaf_commands()
    assert set(commands) >= WRITES
    missing = [
        name for name, options in commands.items() if name not in WRITES and "--json" not in options
    ]
    assert not missing, f"read commands without --json: {missing}"


async def test_sessions_are_renamed_and_removed(workspace: tuple[Ap, AsyncClient]) -> None:
    """rename changes the title; rm refuses an active run with a hint, --force deletes it."""
    ap, client = workspace
    session = await client.create_session(title="Before")
    renamed = await ap("sessions", "rename", session.name.removeprefix("sessions/"), "After")
    assert (renamed.code, renamed.out.strip()) == (0, f"{session.name} is now titled 'After'")
    assert (await client.get_session(session.name)).title == "After"
    run = await client.create_run(session.name, LONG)
    refused = await ap("sessions", "rm", session.name)
    assert refused.code == 1 and refused.out == ""
    assert run.name in refused.err and "RUN_ALREADY_ACTIVE" in refused.err
    assert f"ap sessions rm {session.name} --force" in refused.err
    forced = await ap("sessions", "rm", session.name, "--force")
    assert (forced.code, forced.out.strip()) == (0, f"deleted {session.name}")
    assert [s.name async for s in client.list_sessions()] == []
    again = await ap("sessions", "rm", session.name)
    assert again.code == 1 and "NOT_FOUND" in again.err


async def test_chat_titles_a_new_session_after_its_first_message(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """A piped chat creates its session with the first line as the title."""
    ap, client = workspace
    ran = await ap("chat", stdin="Plan a trip to Lisbon [[tokens=3]]\n")
    assert ran.code == 0, ran.err
    assert "alpha bravo charlie" in ran.out
    (session,) = [s async for s in client.list_sessions()]
    assert session.title == "Plan a trip to Lisbon [[tokens=3]]"


async def test_chat_in_a_session_shows_the_recent_transcript_first(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """`ap chat SESSION` prints the latest messages before the first new line."""
    ap, client = workspace
    session = await client.create_session(title="old")
    await client.send_message(session.name, "earlier question [[tokens=2]]")
    ran = await ap("chat", session.name, stdin="new question [[tokens=1]]\n")
    assert ran.code == 0, ran.err
    before = ran.out.split("you> new question", 1)[0]
    assert "earlier question" in before and "alpha bravo" in before


async def test_a_line_sent_while_a_run_is_active_is_queued(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """A line for a session whose run is still going waits for that run instead of failing."""
    ap, client = workspace
    session = await client.create_session(title="busy")
    active = await client.create_run(session.name, LONG)
    proc = await asyncio.create_subprocess_exec(
        str(AP),
        "chat",
        session.name,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ap.env,
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(b"after that [[tokens=2]]\n")
    proc.stdin.close()
    async with asyncio.timeout(TIMEOUT_S):
        queued = await proc.stderr.readuntil(b" ends]\n")
        # The line is stored behind the active run; ending that one lets it start.
        await client.cancel_run(active.name)
        out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert f"[queued: starts when {active.name} ends]" in queued.decode()
    assert out.decode().rstrip().endswith("alpha bravo\n[run completed]")
    runs = [r async for r in client.list_runs(session.name)]
    assert [r.state for r in runs] == [run_pb2.Run.COMPLETED, run_pb2.Run.CANCELLED]


async def test_a_piped_chat_stops_with_status_1_when_a_run_fails(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """The first failed run ends a piped chat with exit status 1; later lines are not run."""
    ap, client = workspace
    ran = await ap("chat", stdin="[[fail=400]]\nnever sent\n")
    assert ran.code == 1
    assert "[run failed:" in ran.out and "never sent" not in ran.out
    (session,) = [s async for s in client.list_sessions()]
    assert len([r async for r in client.list_runs(session.name)]) == 1


async def test_an_oversized_line_is_refused_before_anything_is_created(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """Input over the limit creates no session and is not echoed back."""
    ap, client = workspace
    huge = "x" * (64 * 1024 + 1)
    ran = await ap("chat", stdin=huge + "\n")
    assert ran.code == 1
    assert "over the limit of 65536" in ran.err
    assert "x" * 100 not in ran.out + ran.err
    assert [s async for s in client.list_sessions()] == []


async def test_runs_show_prints_the_input_and_reply_text(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """`ap runs show` shows what was asked and answered, not only message names."""
    ap, client = workspace
    session = await client.create_session(title="show")
    await client.send_message(session.name, "what is this? [[tokens=3]]")
    (run,) = [r async for r in client.list_runs(session.name)]
    ran = await ap("runs", "show", run.name)
    assert ran.code == 0
    assert "what is this? [[tokens=3]]" in ran.out and "alpha bravo charlie" in ran.out


async def test_hints_name_the_program_as_it_was_invoked(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """Next-step hints say `.venv/bin/ap …` when run so, and `ap …` when found on PATH."""
    ap, client = workspace
    session = await client.create_session(title="hints")
    active = await client.create_run(session.name, LONG)
    elsewhere = os.pathsep.join(p for p in ap.env["PATH"].split(os.pathsep) if p != str(AP.parent))
    venv_ap = str(AP.relative_to(REPO))
    ran = await Ap(ap.env | {"PATH": elsewhere}, program=venv_ap, cwd=REPO)("chat", session.name)
    assert f"Watch it with: {venv_ap} runs watch {active.name}" in ran.err
    on_path = Ap(ap.env | {"PATH": f"{AP.parent}{os.pathsep}{elsewhere}"}, program="ap")
    ran = await on_path("chat", session.name)
    assert f"Watch it with: ap runs watch {active.name}" in ran.err
    await client.cancel_run(active.name)


def test_invoked_as_falls_back_to_the_absolute_path_outside_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From another folder, the hint names the program by its absolute path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert invoked_as(str(AP)) == str(AP)
    assert invoked_as("ap") == "ap"


async def test_ctrl_c_while_watching_says_how_to_resume(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """SIGINT during `ap runs watch` exits 130 with the command that resumes the stream."""
    ap, client = workspace
    session = await client.create_session(title="interrupt")
    run = await client.create_run(session.name, LONG)
    proc = await asyncio.create_subprocess_exec(
        str(AP),
        "runs",
        "watch",
        run.name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ap.env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen = b""
    async with asyncio.timeout(TIMEOUT_S):
        # The reply streams inline; its first word means the stream is being followed.
        while b"alpha" not in seen:
            chunk = await proc.stdout.read(64)
            assert chunk, f"the stream ended early: {seen!r}"
            seen += chunk
        proc.send_signal(signal.SIGINT)
        err = (await proc.stderr.read()).decode()
        assert await proc.wait() == 130
    assert f"runs watch {run.name} --after " in err.split("Resume with: ", 1)[1]
    await client.cancel_run(run.name)


async def test_completion_scripts_complete_commands(tmp_path: Path) -> None:
    """`ap completion bash` defines a completion that offers the commands and subcommands."""
    ran = await Ap({"PATH": os.environ["PATH"]})("completion", "bash")
    assert ran.code == 0
    script = tmp_path / "ap.bash"
    script.write_text(ran.out)
    probe = (
        f"source {script}; complete -p ap; "
        'COMP_WORDS=(ap ses); COMP_CWORD=1; _shtab_ap; echo "${COMPREPLY[@]}"; '
        'COMP_WORDS=(ap runs wa); COMP_CWORD=2; _shtab_ap; echo "${COMPREPLY[@]}"'
    )
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", probe, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    registered, sessions, watch = out.decode().splitlines()[-3:]
    assert registered.endswith(" ap") and (sessions, watch) == ("sessions", "watch")
    for shell in ("zsh", "tcsh"):
        generated = await Ap({"PATH": os.environ["PATH"]})("completion", shell)
        assert generated.code == 0 and "sessions" in generated.out


class Terminal:
    """`ap` on a pseudo-terminal, as a person at a keyboard runs it."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        """Drive `proc` through the terminal's master side."""
        self.proc = proc
        self._master = master
        self.screen = ""

    async def wait_for(self, text: str, *, after: int = 0) -> int:
        """Read the screen until `text` appears past position `after`; return where it ends."""
        loop = asyncio.get_running_loop()
        while (found := self.screen.find(text, after)) < 0:
            chunk = await loop.run_in_executor(None, os.read, self._master, 4096)
            assert chunk, f"the terminal closed before {text!r}:\n{self.screen}"
            self.screen += chunk.decode(errors="replace")
        return found + len(text)

    def type(self, line: str) -> None:
        """Type a line and press Enter."""
        os.write(self._master, line.encode() + b"\r")


async def test_an_interactive_chat_queues_a_line_typed_after_ctrl_c(
    workspace: tuple[Ap, AsyncClient],
) -> None:
    """Ctrl-C leaves the reply's run going; the next line typed waits for it, then answers."""
    ap, client = workspace
    master, slave = os.openpty()
    proc = await asyncio.create_subprocess_exec(
        str(AP), "chat", stdin=slave, stdout=slave, stderr=slave, env=ap.env | {"TERM": "dumb"}
    )
    os.close(slave)
    terminal = Terminal(proc, master)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            at = await terminal.wait_for("you> ")
            terminal.type(LONG)
            at = await terminal.wait_for("alpha", after=at)
            proc.send_signal(signal.SIGINT)
            at = await terminal.wait_for("Resume with:", after=at)
            at = await terminal.wait_for("you> ", after=at)
            (session,) = [s async for s in client.list_sessions()]
            (first,) = [r async for r in client.list_runs(session.name)]
            terminal.type("and then? [[tokens=2]]")
            at = await terminal.wait_for(f"[queued: starts when {first.name} ends]", after=at)
            await client.cancel_run(first.name)
            await terminal.wait_for("alpha bravo", after=at)
            await terminal.wait_for("you> ", after=at)
    finally:
        proc.kill()
        await proc.wait()
        os.close(master)
    runs = [r async for r in client.list_runs(session.name)]
    assert [r.state for r in runs] == [run_pb2.Run.COMPLETED, run_pb2.Run.CANCELLED]
