"""Parse the `ap` command line and run the chosen command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

import grpc
from agentplatform import Client, ClientError, describe_rpc_error

from ap_cli import chat, commands, secrets, tenancy, tools
from ap_cli.config import ClientConfig, ConfigError, load_client_config
from ap_cli.context import Context
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


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="ap",
        description="Talk to an Agent Platform control plane.",
        epilog="Configuration: AP_ENDPOINT and AP_API_KEY, or the JSON file $AP_CLIENT_CONFIG "
        "(default ~/.config/agentplatform/client.json, written by `make run`).",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    sessions = groups.add_parser("sessions", help="create, list and show sessions")
    session_cmds = sessions.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = session_cmds.add_parser("create", help="create a session and print its name")
    create.add_argument("--title", help="a human-readable title")
    create.add_argument("--instructions", help="added to the system prompt of every run")
    create.set_defaults(handler=commands.sessions_create)
    listing = session_cmds.add_parser("list", help="list the workspace's sessions, newest first")
    listing.add_argument(
        "--page-size", type=_page_size, default=0, help="sessions per request (all are listed)"
    )
    listing.set_defaults(handler=commands.sessions_list)
    show = session_cmds.add_parser("show", help="show a session and its transcript")
    show.add_argument("session", type=session_name, help="sessions/{id} or the bare id")
    show.set_defaults(handler=commands.sessions_show)

    runs = groups.add_parser("runs", help="list, show and watch runs")
    run_cmds = runs.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs_list = run_cmds.add_parser("list", help="list a session's runs, newest first")
    runs_list.add_argument("session", type=session_name, help="sessions/{id} or the bare id")
    runs_list.set_defaults(handler=commands.runs_list)
    runs_show = run_cmds.add_parser("show", help="show a run's state, error, usage and timings")
    runs_show.add_argument("run", type=run_name, help="sessions/{session}/runs/{run}")
    runs_show.set_defaults(handler=commands.runs_show)
    runs_cancel = run_cmds.add_parser("cancel", help="cancel a run (a finished run stays as it is)")
    runs_cancel.add_argument("run", type=run_name, help="sessions/{session}/runs/{run}")
    runs_cancel.set_defaults(handler=commands.runs_cancel)
    watch = run_cmds.add_parser(
        "watch", help="stream a run's events until it ends (exit 0 only if it completed)"
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
    chat_cmd.add_argument("--title", help="title of the new session")
    chat_cmd.add_argument("--instructions", help="instructions of the new session")
    chat_cmd.set_defaults(handler=chat.chat)
    secrets.add_commands(groups)
    tools.add_commands(groups)
    tenancy.add_commands(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ap` with `argv` (default: the process arguments) and return its exit code."""
    args = build_parser().parse_args(argv)
    # Commands that set up the platform itself run before any client config exists.
    offline: Callable[[argparse.Namespace], int] | None = getattr(args, "offline_handler", None)
    return offline(args) if offline is not None else _run_online(args)


def _run_online(args: argparse.Namespace) -> int:
    """Load the client config, connect and run the command's handler."""
    try:
        config = load_client_config()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    handler: Handler = args.handler
    with asyncio.Runner() as runner:
        client = runner.run(_connect(config))
        ctx = Context(runner=runner, client=client, out=sys.stdout, err=sys.stderr)
        try:
            return handler(ctx, args)
        except grpc.aio.AioRpcError as err:
            ctx.error(describe_rpc_error(err))
            return 1
        except ClientError as err:
            ctx.error(err.failure)
            return 1
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`ap sessions list | head`); stop quietly like other tools.
            _silence_stdout()
            return 1
        finally:
            runner.run(client.close())


async def _connect(config: ClientConfig) -> Client:
    """Open the client inside the running loop, which grpc.aio channels bind to."""
    return Client(config.endpoint, config.api_key)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so flushing it at exit cannot raise again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
