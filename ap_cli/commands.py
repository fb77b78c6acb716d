"""Implement the `sessions` and `runs` commands."""

from __future__ import annotations

import argparse
import asyncio
from contextlib import aclosing

from agentplatform.v1 import run_pb2, session_pb2

from ap_cli.context import Context
from ap_cli.format import format_seconds, format_table, format_time, seconds_between
from ap_cli.render import EventRenderer, format_usage

_ROLE_NAMES = {session_pb2.Message.Role.USER: "user", session_pb2.Message.Role.ASSISTANT: "model"}


def state_name(state: run_pb2.Run.State.ValueType) -> str:
    """Return a run state's enum name, or its number when this client does not know it."""
    try:
        return run_pb2.Run.State.Name(state)
    except ValueError:
        return str(int(state))


def _fields(pairs: list[tuple[str, str]]) -> str:
    """Lay out `label: value` lines with the values aligned; multi-line values are indented."""
    width = max(len(label) for label, _ in pairs) + 2
    lines = []
    for label, value in pairs:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{label + ':':<{width}}{first}")
        lines.extend(" " * width + line for line in rest)
    return "\n".join(lines)


def sessions_create(ctx: Context, args: argparse.Namespace) -> int:
    """Create a session and print its name."""
    session = ctx.run(
        ctx.client.create_session(title=args.title or "", instructions=args.instructions or "")
    )
    ctx.say(session.name)
    return 0


def sessions_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print every session of the workspace as a table."""

    async def collect() -> list[session_pb2.Session]:
        return [s async for s in ctx.client.list_sessions(page_size=args.page_size)]

    sessions = ctx.run(collect())
    if not sessions:
        ctx.say("no sessions")
        return 0
    rows = [(s.name, s.title or "-", format_time(s.create_time)) for s in sessions]
    ctx.say(format_table(("NAME", "TITLE", "CREATED"), rows))
    return 0


def sessions_show(ctx: Context, args: argparse.Namespace) -> int:
    """Print a session and its whole transcript."""

    async def fetch() -> tuple[session_pb2.Session, list[session_pb2.Message]]:
        session = await ctx.client.get_session(args.session)
        messages = [m async for m in ctx.client.list_messages(session.name)]
        return session, messages

    session, messages = ctx.run(fetch())
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
    ctx.say(_fields(pairs))
    ctx.say()
    if not messages:
        ctx.say("(no messages yet)")
        return 0
    for i, message in enumerate(messages):
        if i:
            ctx.say()
        author = message.author_display_name or _ROLE_NAMES.get(message.role, "unknown")
        ctx.say(f"{author} · {format_time(message.create_time)}")
        for line in message.text.splitlines() or [""]:
            ctx.say(f"  {line}")
    return 0


def runs_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print every run of a session as a table, newest first."""

    async def collect() -> list[run_pb2.Run]:
        return [r async for r in ctx.client.list_runs(args.session)]

    runs = ctx.run(collect())
    if not runs:
        ctx.say("no runs")
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
    ctx.say(format_table(("NAME", "STATE", "ATTEMPT", "CREATED", "DURATION", "ERROR"), rows))
    return 0


def runs_cancel(ctx: Context, args: argparse.Namespace) -> int:
    """Cancel a run and say what became of it."""
    run = ctx.run(ctx.client.cancel_run(args.run))
    if run.state == run_pb2.Run.CANCELLED:
        ctx.say(f"{run.name} is cancelled")
    elif run.state in (run_pb2.Run.COMPLETED, run_pb2.Run.FAILED):
        ctx.say(f"{run.name} had already ended ({state_name(run.state)}); nothing to cancel")
    else:
        ctx.say(f"{run.name} is stopping; its worker ends it within a heartbeat")
    return 0


def runs_show(ctx: Context, args: argparse.Namespace) -> int:
    """Print a run's state, attempt, error, usage and timings."""
    run = ctx.run(ctx.client.get_run(args.run))
    pairs = [
        ("name", run.name),
        ("state", state_name(run.state)),
        ("attempt", str(run.attempt)),
        ("input", run.input_message or "-"),
        ("output", run.output_message or "-"),
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
    ctx.say(_fields(pairs))
    return 0


def runs_watch(ctx: Context, args: argparse.Namespace) -> int:
    """Stream a run's events until its terminal one; exit 0 only if it completed."""
    renderer = EventRenderer(ctx.out, color=ctx.color, verbose=True)

    stream = ctx.client.stream_run_events(
        args.run, after_sequence=args.after, on_reconnect=ctx.reconnect_notices(renderer.finish)
    )

    async def watch() -> None:
        try:
            async with aclosing(stream.events()) as events:
                async for event in events:
                    renderer.render(event)
        except asyncio.CancelledError:
            renderer.finish()
            ctx.note(
                "interrupted; the run continues on the server. Resume with: "
                + resume_command(args.run, stream.last_sequence)
            )
            raise
        except BaseException:
            renderer.finish()
            raise
        renderer.finish()

    ctx.run(watch())
    if renderer.outcome is None:
        final = stream.final_run
        if final is None:
            return 1
        ctx.say(
            f"[run already {state_name(final.state).lower()}; its last event is "
            f"{final.last_event_sequence}]"
        )
        return 0 if final.state == run_pb2.Run.State.COMPLETED else 1
    return 0 if renderer.outcome == "completed" else 1


def resume_command(run: str, last_sequence: int) -> str:
    """Return the command that resumes a run's event stream after `last_sequence`."""
    after = f" --after {last_sequence}" if last_sequence else ""
    return f"ap runs watch {run}{after}"
