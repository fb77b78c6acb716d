"""Implement `ap chat`: a prompt loop that runs each line and streams the reply live."""

from __future__ import annotations

import argparse
import collections
import sys
import uuid
from typing import TextIO

from agentplatform import MAX_INPUT_BYTES, APError, RunAlreadyActive
from agentplatform.v1 import session_pb2

from ap_cli.approvals import Ask, decide_at_prompt
from ap_cli.commands import print_messages, resume_command
from ap_cli.context import Context
from ap_cli.render import EventRenderer, shorten

PROMPT = "you> "
EXIT_INTERRUPTED = 130
# How much of an existing session's transcript `ap chat SESSION` shows before the prompt.
RECENT_MESSAGES = 10
TITLE_CHARS = 60


class InputTooLarge(Exception):
    """A line is longer than a run accepts; nothing was sent."""


class ChatTurns:
    """Run lines of input in one session, remembering enough to tell the user how to resume.

    The session is created with the first line (titled after it) unless one was given.
    """

    def __init__(self, ctx: Context, args: argparse.Namespace, ask: Ask | None = None) -> None:
        """Chat in `args.session`, or in a session made from `args.title`/`instructions`.

        `ask` reads a person's answer to a tool approval (a terminal); without it the chat
        prints how to decide and waits.
        """
        self._ctx = ctx
        self._args = args
        self.ask = ask
        self.session: str | None = None
        self.run: str | None = None
        self.last_sequence = 0
        # A run this chat stopped watching (Ctrl-C) or found active: the next line waits for it.
        self.unfinished: str | None = None

    def open_existing(self, name: str) -> None:
        """Continue `name`: print its recent transcript and any run still active."""
        session = self._ctx.client.get_session(name)
        self.session = session.name
        self._ctx.say(f"session: {session.name}" + (f" ({session.title})" if session.title else ""))
        recent: collections.deque[session_pb2.Message] = collections.deque(maxlen=RECENT_MESSAGES)
        total = 0
        for message in self._ctx.client.list_messages(session.name):
            recent.append(message)
            total += 1
        if total > len(recent):
            self._ctx.say(
                f"… {total - len(recent)} earlier messages: {self._ctx.ap} sessions show "
                f"{session.name}"
            )
        if recent:
            print_messages(self._ctx, recent)
            self._ctx.say()
        if session.active_run:
            self.unfinished = session.active_run
            self._ctx.note(
                f"run {session.active_run} is still active; a new line waits for it. "
                f"Watch it with: {self._ctx.ap} runs watch {session.active_run}"
            )

    def _session_for(self, first_line: str) -> str:
        """Return the session, creating it titled after the first line if there is none yet."""
        if self.session is None:
            created = self._ctx.client.create_session(
                title=self._args.title or shorten(first_line, TITLE_CHARS),
                instructions=self._args.instructions or "",
            )
            self.session = created.name
            self._ctx.say(f"session: {created.name}")
        return self.session

    def turn(self, text: str) -> bool:
        """Run `text` and render its events until the terminal one; say whether it completed.

        The run is queued behind an active one (ENQUEUE), so a line typed while a run is
        still going waits its turn instead of failing. A retried CreateRun reuses its
        request_id, so it cannot queue the line twice. Ctrl-C (KeyboardInterrupt) leaves
        the run going on the server and says how to watch it.
        """
        if len(text.encode()) > MAX_INPUT_BYTES:
            raise InputTooLarge(
                f"the message is {len(text.encode())} bytes, over the limit of "
                f"{MAX_INPUT_BYTES}; nothing was sent"
            )
        ctx = self._ctx
        session = self._session_for(text)
        self.run, self.last_sequence = None, 0
        try:
            run = ctx.client.create_run(
                session, text, concurrency_policy="enqueue", request_id=str(uuid.uuid4())
            )
        except KeyboardInterrupt:
            ctx.note(
                "interrupted before the server confirmed the run; it may still run. "
                f"Check with: {ctx.ap} runs list {session}"
            )
            raise
        self.run = run.name
        if self.unfinished is not None:
            ctx.note(f"[queued: starts when {self.unfinished} ends]")
            self.unfinished = None
        renderer = EventRenderer(ctx.out, color=ctx.color)

        stream = ctx.client.stream_run_events(
            run.name, on_reconnect=ctx.reconnect_notices(renderer.finish)
        )
        try:
            for event in stream:
                renderer.render(event)
                self.last_sequence = stream.last_sequence
                if event.HasField("tool_call_approval_requested"):
                    asked = event.tool_call_approval_requested
                    if asked.call_id in renderer.pending_approvals:
                        decide_at_prompt(ctx, run.name, asked, self.ask)
        except KeyboardInterrupt:
            renderer.finish()
            self.unfinished = run.name
            ctx.note(
                "interrupted; the run continues on the server. Resume with: "
                + resume_command(ctx, run.name, self.last_sequence)
            )
            raise
        finally:
            renderer.finish()
        if renderer.outcome is None and stream.final_run is not None:
            ctx.say(f"[run ended; its last event is {stream.final_run.last_event_sequence}]")
        return renderer.outcome == "completed"

    def explain(self, failure: APError) -> None:
        """Print an error line and, where it helps, what to run next."""
        ctx = self._ctx
        ctx.error(failure)
        if isinstance(failure, RunAlreadyActive) and failure.active_run:
            ctx.note(
                f"run {failure.active_run} is still active; watch it with: "
                f"{ctx.ap} runs watch {failure.active_run}"
            )
        elif self.run is not None:
            ctx.note(
                "the run may still be going on the server. Resume with: "
                + resume_command(ctx, self.run, self.last_sequence)
            )


def chat(ctx: Context, args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    """Run the chat loop over stdin; interactive on a terminal, line by line from a pipe.

    A pipe has nobody to read an error and decide, so a piped chat stops at the first line
    that fails or whose run does not complete, with exit status 1.
    """
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    if interactive:
        # Importing readline gives input() line editing and history.
        import readline  # noqa: F401
    turns = ChatTurns(ctx, args, input if interactive and stdin is sys.stdin else None)
    if args.session:
        turns.open_existing(args.session)
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
        status = _turn(ctx, turns, line, echo=not interactive)
        if status and not interactive:
            return status


def _turn(ctx: Context, turns: ChatTurns, line: str, *, echo: bool) -> int:
    """Run one line and return 0, or the exit status its failure calls for."""
    try:
        if echo and len(line.encode()) <= MAX_INPUT_BYTES:
            # Echo piped input so the transcript on stdout shows what each reply answers.
            ctx.say(PROMPT + line)
        return 0 if turns.turn(line) else 1
    except InputTooLarge as err:
        ctx.error(str(err))
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except APError as err:
        turns.explain(err)
        return 1


def _read_line(stdin: TextIO, interactive: bool) -> str:
    """Read one line of input without its newline; raise EOFError at the end."""
    if interactive and stdin is sys.stdin:
        return input(PROMPT)
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")
