"""Parse the `ap` command line and run the chosen command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

import shtab
from agentplatform import APError, Client, ConfigError
from agentplatform import __version__ as sdk_version

from ap_cli import approvals, chat, commands, secrets, tenancy, tools, usage
from ap_cli.context import Context, invoked_as, json_option
from ap_cli.names import run_name, session_name

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[Context, argparse.Namespace], int]


def _page_size(value: str) -> int:
    """Parse a positive page size."""
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if size < 1:
        raise argparse.ArgumentTypeError("page size must be at least 1")
    return size


def _sequence(value: str) -> int:
    """Parse a non-negative event sequence."""
    try:
        sequence = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if sequence < 0:
        raise argparse.ArgumentTypeError("sequence must be 0 or more")
    return sequence


def version_line() -> str:
    """Return `ap X (agentplatform-sdk Y)`."""
    try:
        cli = metadata.version("agentplatform")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        cli = "0+unknown"
    return f"ap {cli} (agentplatform-sdk {sdk_version})"


def _add_session_commands(
    groups: argparse._SubParsersAction,  # type: ignore[type-arg]
    json_flag: argparse.ArgumentParser,
) -> None:
    """Add the `sessions` command group to the parser."""
    sessions = groups.add_parser("sessions", help="create, list, show, rename and delete sessions")
    session_cmds = sessions.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = session_cmds.add_parser(
        "create", parents=[json_flag], help="create a session and print its name"
    )
    create.add_argument("--title", help="a human-readable title")
    create.add_argument("--instructions", help="added to the system prompt of every run")
    create.add_argument(
        "--model", help="one of the platform's offered models (default: its default model)"
    )
    create.set_defaults(handler=commands.sessions_create)
    listing = session_cmds.add_parser(
        "list", parents=[json_flag], help="list the workspace's sessions, newest first"
    )
    listing.add_argument(
        "--page-size", type=_page_size, default=0, help="sessions per request (all are listed)"
    )
    listing.set_defaults(handler=commands.sessions_list)
    show = session_cmds.add_parser(
        "show", parents=[json_flag], help="show a session and its transcript"
    )
    show.add_argument("session", type=session_name, help="sessions/{id} or the bare id")
    show.set_defaults(handler=commands.sessions_show)
    rename = session_cmds.add_parser("rename", help="give a session a new title")
    rename.add_argument("session", type=session_name, help="sessions/{id} or the bare id")
    rename.add_argument("title", help="the new title (an empty one clears it)")
    rename.set_defaults(handler=commands.sessions_rename)
    rm = session_cmds.add_parser(
        "rm", help="delete a session for good, with its transcript, runs and events"
    )
    rm.add_argument("session", type=session_name, help="sessions/{id} or the bare id")
    rm.add_argument("--force", action="store_true", help="cancel its queued and running runs first")
    rm.set_defaults(handler=commands.sessions_rm)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="ap",
        description="Talk to an Agent Platform control plane.",
        epilog="Configuration: AP_ENDPOINT and AP_API_KEY, or the JSON file $AP_CLIENT_CONFIG "
        "(default ~/.config/agentplatform/client.json, written by `make run`).",
    )
    parser.add_argument("--version", action="version", version=version_line())
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    json_flag = json_option()

    _add_session_commands(groups, json_flag)

    runs = groups.add_parser("runs", help="list, show and watch runs")
    run_cmds = runs.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs_list = run_cmds.add_parser(
        "list", parents=[json_flag], help="list a session's runs, newest first"
    )
    runs_list.add_argument("session", type=session_name, help="sessions/{id} or the bare id")
    runs_list.set_defaults(handler=commands.runs_list)
    runs_show = run_cmds.add_parser(
        "show",
        parents=[json_flag],
        help="show a run's input and output text, state, error, usage and timings",
    )
    runs_show.add_argument("run", type=run_name, help="sessions/{session}/runs/{run}")
    runs_show.set_defaults(handler=commands.runs_show)
    runs_cancel = run_cmds.add_parser("cancel", help="cancel a run (a finished run stays as it is)")
    runs_cancel.add_argument("run", type=run_name, help="sessions/{session}/runs/{run}")
    runs_cancel.set_defaults(handler=commands.runs_cancel)
    approve = run_cmds.add_parser("approve", help="approve a tool call that waits for approval")
    approve.add_argument("run", type=run_name, help="sessions/{session}/runs/{run}")
    approve.add_argument("call", help="the call id its tool_call.approval_requested names")
    approve.set_defaults(handler=approvals.runs_approve)
    deny = run_cmds.add_parser("deny", help="deny a tool call that waits for approval")
    deny.add_argument("run", type=run_name, help="sessions/{session}/runs/{run}")
    deny.add_argument("call", help="the call id its tool_call.approval_requested names")
    deny.add_argument("--message", default="", help="told to the model with the denial")
    deny.set_defaults(handler=approvals.runs_deny)
    watch = run_cmds.add_parser(
        "watch",
        parents=[json_flag],
        help="stream a run's events until it ends (exit 0 only if it completed)",
    )
    watch.add_argument("run", type=run_name, help="sessions/{session}/runs/{run}")
    watch.add_argument(
        "--after",
        type=_sequence,
        default=0,
        metavar="N",
        help="only show events after sequence N (default 0: all)",
    )
    watch.set_defaults(handler=commands.runs_watch)

    chat_cmd = groups.add_parser(
        "chat", help="chat in a session, one run per line of input (stdin may be a pipe)"
    )
    chat_cmd.add_argument(
        "session", nargs="?", type=session_name, help="continue this session (default: a new one)"
    )
    chat_cmd.add_argument(
        "--title", help="title of the new session (default: from the first message)"
    )
    chat_cmd.add_argument("--instructions", help="instructions of the new session")
    chat_cmd.set_defaults(handler=chat.chat)
    secrets.add_commands(groups)
    tools.add_commands(groups)
    tenancy.add_commands(groups)
    usage.add_commands(groups)

    completion = groups.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    completion.set_defaults(offline_handler=lambda args: _completion(parser, args.shell))
    return parser


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    """Print the completion script of every command for `shell`."""
    print(shtab.complete(parser, shell=shell))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ap` with `argv` (default: the process arguments) and return its exit code."""
    args = build_parser().parse_args(argv)
    # Commands that set up the platform itself run before any client config exists.
    offline: Callable[[argparse.Namespace], int] | None = getattr(args, "offline_handler", None)
    try:
        return offline(args) if offline is not None else _run_online(args)
    except BrokenPipeError:
        # The reader went away (`ap sessions list | head`); stop quietly like other tools.
        _silence_stdout()
        return 1


def _run_online(args: argparse.Namespace) -> int:
    """Load the client config, connect and run the command's handler."""
    try:
        client = Client()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    handler: Handler = args.handler
    ctx = Context(
        client, sys.stdout, sys.stderr, json=getattr(args, "json", False), ap=invoked_as()
    )
    with client:
        try:
            return handler(ctx, args)
        except APError as err:
            ctx.error(err)
            return 1
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """Point stdout at /dev/null so flushing it at exit cannot raise again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
