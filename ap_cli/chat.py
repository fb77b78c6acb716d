"""Implement `ap chat`: a prompt loop that runs each line and streams the reply live."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from contextlib import aclosing
from typing import TextIO

import grpc
from agentplatform import ClientError, RpcFailure, describe_rpc_error

from ap_cli.commands import resume_command
from ap_cli.context import Context
from ap_cli.render import EventRenderer

PROMPT = "you> "
EXIT_INTERRUPTED = 130


class ChatTurns:
    """Run lines of input in one session, remembering enough to tell the user how to resume."""

    def __init__(self, ctx: Context, session: str) -> None:
        """Chat in `session`."""
        self._ctx = ctx
        self.session = session
        self.run: str | None = None
        self.last_sequence = 0

    async def turn(self, text: str) -> None:
        """Create a run for `text` and render its events until the terminal one.

        Ctrl-C cancels this coroutine; the run keeps going on the server, so the user is told
        how to watch it. A retried CreateRun reuses the request_id, so it cannot queue the
        line twice.
        """
        self.run, self.last_sequence = None, 0
        try:
            run = await self._ctx.client.create_run(
                self.session, text, request_id=str(uuid.uuid4())
            )
        except asyncio.CancelledError:
            self._ctx.note(
                "interrupted before the server confirmed the run; it may still run. "
                f"Check with: ap runs list {self.session}"
            )
            raise
        self.run = run.name
        renderer = EventRenderer(self._ctx.out, color=self._ctx.color)

        stream = self._ctx.client.stream_run_events(
            run.name, on_reconnect=self._ctx.reconnect_notices(renderer.finish)
        )
        try:
            async with aclosing(stream.events()) as events:
                async for event in events:
                    renderer.render(event)
                    self.last_sequence = stream.last_sequence
        except asyncio.CancelledError:
            renderer.finish()
            self._ctx.note(
                "interrupted; the run continues on the server. Resume with: "
                + resume_command(run.name, self.last_sequence)
            )
            raise
        finally:
            renderer.finish()
        if renderer.outcome is None and stream.final_run is not None:
            self._ctx.say(f"[run ended; its last event is {stream.final_run.last_event_sequence}]")

    def explain(self, failure: RpcFailure) -> None:
        """Print an error line and, where it helps, what to run next."""
        self._ctx.error(failure)
        if failure.reason == "RUN_ALREADY_ACTIVE":
            active = failure.metadata.get("active_run")
            if active:
                self._ctx.note(
                    f"run {active} is still active; watch it with: ap runs watch {active}"
                )
            else:
                self._ctx.note(
                    f"a run is still active; list them with: ap runs list {self.session}"
                )
        elif self.run is not None:
            self._ctx.note(
                "the run may still be going on the server. Resume with: "
                + resume_command(self.run, self.last_sequence)
            )


def chat(ctx: Context, args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    """Run the chat loop over stdin; interactive on a terminal, line by line from a pipe."""
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    if interactive:
        # Importing readline gives input() line editing and history.
        import readline  # noqa: F401
    turns = ChatTurns(ctx, _open_session(ctx, args))
    while True:
        try:
            line = _read_line(stdin, interactive)
        except EOFError:
            if interactive:
                ctx.say()
            return 0
        except KeyboardInterrupt:
            ctx.say()
            return 0
        if not line.strip():
            continue
        if not interactive:
            # Echo piped input so the transcript on stdout shows what each reply answers.
            ctx.say(PROMPT + line)
        status = _turn(ctx, turns, line)
        # A pipe has nobody to read the error and decide, so its script stops at the first.
        if status and not interactive:
            return status


def _open_session(ctx: Context, args: argparse.Namespace) -> str:
    """Return the session to chat in: the one named, after a check, or a new one."""
    if args.session:
        session = ctx.run(ctx.client.get_session(args.session))
        ctx.say(f"session: {session.name}" + (f" ({session.title})" if session.title else ""))
        if session.active_run:
            ctx.note(
                f"run {session.active_run} is still active; new lines fail until it ends. "
                f"Watch it with: ap runs watch {session.active_run}"
            )
        return session.name
    session = ctx.run(
        ctx.client.create_session(title=args.title or "", instructions=args.instructions or "")
    )
    ctx.say(f"session: {session.name}")
    return session.name


def _turn(ctx: Context, turns: ChatTurns, line: str) -> int:
    """Run one line and return 0, or the exit status its failure calls for."""
    try:
        ctx.run(turns.turn(line))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except grpc.aio.AioRpcError as err:
        turns.explain(describe_rpc_error(err))
        return 1
    except ClientError as err:
        turns.explain(err.failure)
        return 1
    return 0


def _read_line(stdin: TextIO, interactive: bool) -> str:
    """Read one line of input without its newline; raise EOFError at the end."""
    if interactive and stdin is sys.stdin:
        return input(PROMPT)
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")
