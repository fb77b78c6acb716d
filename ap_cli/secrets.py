"""Implement `ap secrets put|list|rm` and `ap vault status|rotate`.

A secret's value is read from a no-echo prompt or from stdin, never from the command line,
where it would land in shell history and in every process listing.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import BinaryIO

from agentplatform.v1 import master_key_pb2

from ap_cli.context import Context, json_option
from ap_cli.format import format_table, format_time

_ROTATION_POLL_S = 0.5


class ValueUnreadable(Exception):
    """The value to store could not be read."""


def secret_name(value: str) -> str:
    """Return `secrets/{id}` for a full secret name or a bare id."""
    value = value.strip()
    bare = value.removeprefix("secrets/")
    if not bare or "/" in bare:
        raise argparse.ArgumentTypeError(f"{value!r} is not a secret: give NAME or secrets/NAME")
    return f"secrets/{bare}"


def read_value(name: str, stdin: BinaryIO, *, interactive: bool) -> bytes:
    """Read a value: twice at a no-echo prompt on a terminal, else all of stdin.

    One trailing newline is dropped from stdin, so `echo "$TOKEN" | ap secrets put` stores
    the token itself.
    """
    if interactive:
        first = getpass.getpass(f"value of {name}: ")
        if getpass.getpass(f"value of {name} (again): ") != first:
            raise ValueUnreadable("the two values differ; nothing was stored")
        value = first.encode()
    else:
        value = stdin.read()
        value = value.removesuffix(b"\n").removesuffix(b"\r")
    if not value:
        raise ValueUnreadable("no value given; nothing was stored")
    return value


def secrets_put(ctx: Context, args: argparse.Namespace) -> int:
    """Store a new version of a secret; print its name and version."""
    try:
        value = read_value(args.name, sys.stdin.buffer, interactive=sys.stdin.isatty())
    except ValueUnreadable as err:
        ctx.error(str(err))
        return 1
    stored = ctx.client.put_secret(args.name, value, expected_version=args.expected_version)
    ctx.say(f"{stored.name} version {stored.version}")
    return 0


def secrets_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print the workspace's secrets (metadata only) as a table."""
    listed = ctx.client.list_secrets(page_size=args.page_size)
    if ctx.json:
        ctx.emit_all(listed)
        return 0
    rows = [(s.name, str(s.version), format_time(s.update_time)) for s in listed]
    ctx.say(format_table(("NAME", "VERSION", "UPDATED"), rows) if rows else "no secrets")
    return 0


def secrets_rm(ctx: Context, args: argparse.Namespace) -> int:
    """Delete a secret and every version of its value."""
    ctx.client.delete_secret(args.name)
    ctx.say(f"deleted {args.name} and all its versions")
    return 0


_STATE_NAMES = {
    master_key_pb2.MasterKeyVersion.ACTIVE: "active",
    master_key_pb2.MasterKeyVersion.DECRYPT_ONLY: "decrypt-only",
    master_key_pb2.MasterKeyVersion.RETIRED: "retired",
}


def _rewrap_pending(status: master_key_pb2.MasterKeyStatus) -> int:
    """Count the data keys still wrapped under a version other than the active one."""
    return sum(v.data_key_count for v in status.versions if v.version != status.active_version)


def print_status(ctx: Context, status: master_key_pb2.MasterKeyStatus) -> None:
    """Print the master-key versions and the re-wrap progress."""
    rows = [
        (
            str(v.version),
            _STATE_NAMES.get(v.state, "unknown"),
            str(v.data_key_count),
            "yes" if v.in_key_file else "no",
            format_time(v.create_time),
            format_time(v.retire_time),
        )
        for v in status.versions
    ]
    ctx.say(
        format_table(("VERSION", "STATE", "DATA KEYS", "IN KEY FILE", "ADDED", "RETIRED"), rows)
    )
    pending = _rewrap_pending(status)
    if status.rewrap_running or pending:
        state = "running" if status.rewrap_running else "waiting to resume"
        ctx.say(f"re-wrap {state}: {pending} data keys still under older versions")
    else:
        ctx.say(f"every data key is wrapped under the active version {status.active_version}")


def vault_status(ctx: Context, args: argparse.Namespace) -> int:
    """Print the vault's master-key status (workspace owners only)."""
    status = ctx.client.get_master_key_status()
    if ctx.json:
        ctx.emit(status)
    else:
        print_status(ctx, status)
    return 0


def vault_rotate(ctx: Context, args: argparse.Namespace) -> int:
    """Add a master-key version and start the re-wrap; with --wait, follow it to the end."""
    status = ctx.client.rotate_master_key()
    ctx.say(f"master-key version {status.active_version} is active; re-wrapping data keys")
    # Waiting on a server-side background job: polling is the only signal it offers.
    while args.wait and (status.rewrap_running or _rewrap_pending(status)):
        time.sleep(_ROTATION_POLL_S)
        status = ctx.client.get_master_key_status()
    print_status(ctx, status)
    return 0


def add_commands(groups: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `secrets` and `vault` command groups to the parser."""
    json_flag = json_option()
    secrets = groups.add_parser(
        "secrets", help="store, list and delete integration secrets (values are write-only)"
    )
    cmds = secrets.add_subparsers(dest="command", required=True, metavar="COMMAND")
    put = cmds.add_parser(
        "put", help="store a new version; the value comes from a prompt or stdin, never an arg"
    )
    put.add_argument("name", type=secret_name, help="NAME or secrets/NAME, e.g. GITHUB_TOKEN")
    put.add_argument(
        "--expected-version",
        type=int,
        metavar="N",
        help="store only if the newest version is N (0: only if the secret is new)",
    )
    put.set_defaults(handler=secrets_put)
    listing = cmds.add_parser(
        "list", parents=[json_flag], help="list the workspace's secrets (never their values)"
    )
    listing.add_argument("--page-size", type=int, default=0, help="secrets per request")
    listing.set_defaults(handler=secrets_list)
    rm = cmds.add_parser("rm", help="delete a secret and destroy every version of its value")
    rm.add_argument("name", type=secret_name, help="NAME or secrets/NAME")
    rm.set_defaults(handler=secrets_rm)

    vault = groups.add_parser("vault", help="the vault's master key (workspace owners only)")
    vault_cmds = vault.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = vault_cmds.add_parser(
        "status", parents=[json_flag], help="show master-key versions and re-wrap progress"
    )
    status.set_defaults(handler=vault_status)
    rotate = vault_cmds.add_parser(
        "rotate", help="add a master-key version and re-wrap every data key under it"
    )
    rotate.add_argument(
        "--wait", action="store_true", help="follow the re-wrap until every data key has moved"
    )
    rotate.set_defaults(handler=vault_rotate)
