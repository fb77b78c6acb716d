"""Implement the `sessions` and `runs` commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from agentplatform import RunAlreadyActive, RunEventStream
from agentplatform.v1 import run_pb2, session_pb2

from ap_cli.approvals import Ask, decide_at_prompt
from ap_cli.context import Context
from ap_cli.format import (
    format_fields,
    format_seconds,
    format_table,
    format_time,
    seconds_between,
)
from ap_cli.names import session_of
from ap_cli.render import EventRenderer, format_usage

_ROLE_NAMES = {session_pb2.Message.Role.USER: "user", session_pb2.Message.Role.ASSISTANT: "model"}


def state_name(state: run_pb2.Run.State.ValueType) -> str:
    """Return a run state's enum name, or its number when this client does not know it."""
    try:
        return run_pb2.Run.State.Name(state)
    except ValueError:
        return str(int(state))


def print_messages(ctx: Context, messages: Iterable[session_pb2.Message]) -> None:
    """Print transcript entries: `author · time`, then the text indented."""
    for i, message in enumerate(messages):
        if i:
            ctx.say()
        author = message.author_display_name or _ROLE_NAMES.get(message.role, "unknown")
        ctx.say(f"{author} · {format_time(message.create_time)}")
        for line in message.text.splitlines() or [""]:
            ctx.say(f"  {line}")


def sessions_create(ctx: Context, args: argparse.Namespace) -> int:
    """Create a session and print its name."""
    session = ctx.client.create_session(
        title=args.title or "", instructions=args.instructions or "", model=args.model or ""
    )
    if ctx.json:
        ctx.emit(session)
    else:
        ctx.say(session.name)
    return 0


def sessions_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print every session of the workspace as a table, or as JSON lines."""
    sessions = ctx.client.list_sessions(page_size=args.page_size)
    if ctx.json:
        ctx.emit_all(sessions)
        return 0
    rows = [(s.name, s.title or "-", format_time(s.create_time)) for s in sessions]
    ctx.say(format_table(("NAME", "TITLE", "CREATED"), rows) if rows else "no sessions")
    return 0


def sessions_rename(ctx: Context, args: argparse.Namespace) -> int:
    """Give a session a new title."""
    session = ctx.client.update_session(args.session, title=args.title)
    ctx.say(f"{session.name} is now titled {session.title!r}")
    return 0


def sessions_rm(ctx: Context, args: argparse.Namespace) -> int:
    """Delete a session with its transcript, runs and events; say how to force it if refused."""
    try:
        ctx.client.delete_session(args.session, force=args.force)
    except RunAlreadyActive as refused:
        ctx.error(refused)
        ctx.note(
            f"to cancel its runs and delete it anyway: {ctx.ap} sessions rm {args.session} --force"
        )
        return 1
    ctx.say(f"deleted {args.session}")
    return 0


def sessions_show(ctx: Context, args: argparse.Namespace) -> int:
    """Print a session and its whole transcript."""
    session = ctx.client.get_session(args.session)
    messages = list(ctx.client.list_messages(session.name))
    if ctx.json:
        ctx.emit_object({"session": session, "messages": messages})
        return 0
    pairs = [
        ("name", session.name),
        ("title", session.title or "-"),
        ("model", session.model or "-"),
        ("created", format_time(session.create_time)),
        ("updated", format_time(session.update_time)),
        ("active run", session.active_run or "-"),
    ]
    if session.instructions:
        pairs.append(("instructions", session.instructions))
    if session.metadata:
        pairs.append(
            ("metadata", ", ".join(f"{k}={v}" for k, v in sorted(session.metadata.items())))
        )
    ctx.say(format_fields(pairs))
    ctx.say()
    if not messages:
        ctx.say("(no messages yet)")
    print_messages(ctx, messages)
    return 0


def runs_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print every run of a session as a table, newest first."""
    runs = ctx.client.list_runs(args.session)
    if ctx.json:
        ctx.emit_all(runs)
        return 0
    rows = []
    for run in runs:
        took = seconds_between(run.create_time, run.end_time)
        rows.append(
            (
                run.name,
                state_name(run.state),
                str(run.attempt),
                format_time(run.create_time),
                format_seconds(took) if took is not None else "-",
                run.error_reason or "-",
            )
        )
    header = ("NAME", "STATE", "ATTEMPT", "CREATED", "DURATION", "ERROR")
    ctx.say(format_table(header, rows) if rows else "no runs")
    return 0


def runs_cancel(ctx: Context, args: argparse.Namespace) -> int:
    """Cancel a run and say what became of it."""
    run = ctx.client.cancel_run(args.run)
    if run.state == run_pb2.Run.CANCELLED:
        ctx.say(f"{run.name} is cancelled")
    elif run.state in (run_pb2.Run.COMPLETED, run_pb2.Run.FAILED):
        ctx.say(f"{run.name} had already ended ({state_name(run.state)}); nothing to cancel")
    else:
        ctx.say(
            f"{run.name}: cancel requested; its worker ends it within a heartbeat "
            "(run.cancelled in its events says it did)"
        )
    return 0


def run_messages(
    ctx: Context, run: run_pb2.Run
) -> tuple[session_pb2.Message | None, session_pb2.Message | None]:
    """Return the run's input and output messages from its session's transcript."""
    wanted = {run.input_message, run.output_message} - {""}
    found = {m.name: m for m in ctx.client.list_messages(session_of(run.name)) if m.name in wanted}
    return found.get(run.input_message), found.get(run.output_message)


def runs_show(ctx: Context, args: argparse.Namespace) -> int:
    """Print a run's input and output text, state, attempt, error, usage and timings."""
    run = ctx.client.get_run(args.run)
    given, produced = run_messages(ctx, run)
    if ctx.json:
        ctx.emit_object({"run": run, "inputMessage": given, "outputMessage": produced})
        return 0
    pairs = [
        ("name", run.name),
        ("state", state_name(run.state)),
        ("attempt", str(run.attempt)),
        ("input", given.text if given is not None else run.input_message or "-"),
        ("output", produced.text if produced is not None else run.output_message or "-"),
        ("last event", str(run.last_event_sequence)),
    ]
    if run.error_reason or run.error_message:
        pairs.append(("error", f"{run.error_message or '-'} ({run.error_reason or 'UNKNOWN'})"))
    if run.HasField("usage"):
        pairs.append(("usage", format_usage(run.usage)))
    pairs.append(("created", format_time(run.create_time)))
    queued = seconds_between(run.create_time, run.start_time)
    pairs.append(
        (
            "started",
            format_time(run.start_time)
            + (f" (queued {format_seconds(queued)})" if queued is not None else ""),
        )
    )
    ran = seconds_between(run.start_time, run.end_time)
    total = seconds_between(run.create_time, run.end_time)
    timing = [
        f"{label} {format_seconds(s)}"
        for label, s in (("ran", ran), ("total", total))
        if s is not None
    ]
    pairs.append(
        ("ended", format_time(run.end_time) + (f" ({', '.join(timing)})" if timing else ""))
    )
    ctx.say(format_fields(pairs))
    return 0


def follow(
    ctx: Context, stream: RunEventStream, renderer: EventRenderer | None, ask: Ask | None = None
) -> None:
    """Render (or, with `--json`, print) a stream's events; on Ctrl-C say how to resume.

    A call that waits for approval is asked about with `ask` (a terminal), or the commands
    that decide it are printed.
    """
    try:
        for event in stream:
            if renderer is None:
                ctx.emit(event)
                continue
            renderer.render(event)
            if event.HasField("tool_call_approval_requested"):
                asked = event.tool_call_approval_requested
                if asked.call_id in renderer.pending_approvals:
                    decide_at_prompt(ctx, stream.name, asked, ask)
    except KeyboardInterrupt:
        if renderer is not None:
            renderer.finish()
        ctx.note(
            "interrupted; the run continues on the server. Resume with: "
            + resume_command(ctx, stream.name, stream.last_sequence)
        )
        raise
    finally:
        if renderer is not None:
            renderer.finish()


def runs_watch(ctx: Context, args: argparse.Namespace) -> int:
    """Stream a run's events until its terminal one; exit 0 only if it completed."""
    renderer = None if ctx.json else EventRenderer(ctx.out, color=ctx.color, verbose=True)

    stream = ctx.client.stream_run_events(
        args.run,
        after_sequence=args.after,
        on_reconnect=ctx.reconnect_notices(renderer.finish if renderer else None),
    )
    follow(ctx, stream, renderer, input if sys.stdin.isatty() else None)
    if stream.terminal is not None:
        return 0 if stream.terminal.WhichOneof("payload") == "run_completed" else 1
    final = stream.final_run
    if final is None:
        return 1
    if not ctx.json:
        ctx.say(
            f"[run already {state_name(final.state).lower()}; its last event is "
            f"{final.last_event_sequence}]"
        )
    return 0 if final.state == run_pb2.Run.State.COMPLETED else 1


def resume_command(ctx: Context, run: str, last_sequence: int) -> str:
    """Return the command that resumes a run's event stream after `last_sequence`."""
    after = f" --after {last_sequence}" if last_sequence else ""
    return f"{ctx.ap} runs watch {run}{after}"
