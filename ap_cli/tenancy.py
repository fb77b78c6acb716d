"""Implement `ap whoami`, `ap keys …`, `ap members …`, `ap invitations …`, `ap admin bootstrap`.

Invitation tokens are read from a no-echo prompt or stdin, never from the command line,
where they would land in shell history and in every process listing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import subprocess
import sys
from typing import TextIO

from ap_cli.context import Context, json_option
from ap_cli.format import format_table, format_time

ROLES = ("owner", "admin", "member", "viewer")


def member_name(value: str) -> str:
    """Return `members/{user}` for a member name, a user name or a bare user id."""
    bare = value.strip().removeprefix("members/").removeprefix("users/")
    if not bare or "/" in bare:
        raise argparse.ArgumentTypeError(f"{value!r} is not a member: give users/ID or ID")
    return f"members/{bare}"


def invitation_name(value: str) -> str:
    """Return `invitations/{id}` for an invitation name or a bare id."""
    bare = value.strip().removeprefix("invitations/")
    if not bare or "/" in bare:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an invitation: give invitations/ID or ID"
        )
    return f"invitations/{bare}"


_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(value: str) -> dt.timedelta:
    """Parse a duration such as 30m, 12h or 7d."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration: give e.g. 30m, 12h or 7d")
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def api_key_name(value: str) -> str:
    """Return `apiKeys/{id}` for a key name or a bare id."""
    bare = value.strip().removeprefix("apiKeys/")
    if not bare or "/" in bare:
        raise argparse.ArgumentTypeError(f"{value!r} is not an API key: give apiKeys/ID or ID")
    return f"apiKeys/{bare}"


def whoami(ctx: Context, args: argparse.Namespace) -> int:
    """Print the caller's profile: display name, user, workspace and role."""
    profile = ctx.client.get_profile()
    if ctx.json:
        ctx.emit(profile)
        return 0
    ctx.say(f"{profile.display_name} ({profile.name.removesuffix('/profile')})")
    ctx.say(f"{profile.role} of {profile.workspace}")
    return 0


def keys_create(ctx: Context, args: argparse.Namespace) -> int:
    """Create an API key and print it; it is shown this once."""
    made = ctx.client.create_api_key(args.name, user=args.user or "")
    ctx.note(f"{made.api_key.name} for {made.api_key.user} ({made.api_key.role}); shown once:")
    ctx.say(made.key)
    return 0


def keys_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print the workspace's live API keys (never the keys themselves)."""
    listed = ctx.client.list_api_keys()
    if ctx.json:
        ctx.emit_all(listed)
        return 0
    rows = [
        (
            k.name,
            k.prefix,
            k.display_name,
            k.role,
            k.user,
            "personal" if k.personal else "delegated",
            format_time(k.last_use_time),
        )
        for k in listed
    ]
    header = ("NAME", "PREFIX", "LABEL", "ROLE", "USER", "KIND", "LAST USED")
    ctx.say(format_table(header, rows) if rows else "no API keys")
    return 0


def keys_revoke(ctx: Context, args: argparse.Namespace) -> int:
    """Revoke an API key; every replica refuses it from the next call on."""
    ctx.client.delete_api_key(args.key)
    ctx.say(f"revoked {args.key}")
    return 0


def members_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print the workspace's members and their roles."""
    listed = ctx.client.list_members()
    if ctx.json:
        ctx.emit_all(listed)
        return 0
    rows = [(m.user, m.display_name, m.role, format_time(m.create_time)) for m in listed]
    ctx.say(format_table(("USER", "NAME", "ROLE", "JOINED"), rows))
    return 0


def members_add(ctx: Context, args: argparse.Namespace) -> int:
    """Create a new user with a role; print the member."""
    member = ctx.client.create_member(args.role, display_name=args.name)
    ctx.say(f"{member.user} ({member.display_name}) is now {member.role}")
    return 0


def members_invite(ctx: Context, args: argparse.Namespace) -> int:
    """Create an invitation for a role and print its token; it is shown this once."""
    made = ctx.client.create_invitation(args.role, display_name=args.label or "", ttl=args.ttl)
    invitation = made.invitation
    ctx.note(
        f"{invitation.name} for {invitation.role}, until {format_time(invitation.expire_time)};"
        " hand the token over, shown once:"
    )
    ctx.say(made.token)
    return 0


def invitations_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print the workspace's invitations that can still be accepted (never their tokens)."""
    listed = ctx.client.list_invitations()
    if ctx.json:
        ctx.emit_all(listed)
        return 0
    rows = [(i.name, i.role, i.display_name, i.inviter, format_time(i.expire_time)) for i in listed]
    header = ("NAME", "ROLE", "LABEL", "INVITER", "EXPIRES")
    ctx.say(format_table(header, rows) if rows else "no invitations")
    return 0


def invitations_revoke(ctx: Context, args: argparse.Namespace) -> int:
    """Revoke an invitation; its token stops working at once."""
    ctx.client.delete_invitation(args.invitation)
    ctx.say(f"revoked {args.invitation}")
    return 0


def read_token(stdin: TextIO, *, interactive: bool) -> str:
    """Read an invitation token from a no-echo prompt on a terminal, else from stdin."""
    if interactive:
        return getpass.getpass("invitation token: ").strip()
    return stdin.read().strip()


def invitations_accept(ctx: Context, args: argparse.Namespace) -> int:
    """Join a workspace with an invitation's token; print the new key, shown this once."""
    token = read_token(sys.stdin, interactive=sys.stdin.isatty())
    if not token:
        ctx.error("no invitation token given (type it at the prompt, or pipe it to stdin)")
        return 2
    joined = ctx.client.accept_invitation(token, api_key_display_name=args.label or "")
    workspace = joined.workspace
    ctx.note(
        f"joined {workspace.name} ({workspace.display_name}) as {workspace.role};"
        f" {joined.api_key.name} acts there, shown once:"
    )
    ctx.say(joined.key)
    return 0


def members_set_role(ctx: Context, args: argparse.Namespace) -> int:
    """Change a member's role."""
    member = ctx.client.update_member(args.member, role=args.role)
    ctx.say(f"{member.user} is now {member.role}")
    return 0


def members_remove(ctx: Context, args: argparse.Namespace) -> int:
    """Remove a member; their API keys of this workspace stop working at once."""
    ctx.client.delete_member(args.member)
    ctx.say(f"removed {args.member} and revoked their keys here")
    return 0


def admin_bootstrap(args: argparse.Namespace) -> int:
    """Create the first workspace, its owner and an owner key, straight in the database.

    Needs AP_DATABASE_URL (the control plane's role) and no running server; refuses (exit 3)
    once any workspace exists. Prints the key, or the JSON result with --json.
    """
    if not os.environ.get("AP_DATABASE_URL"):
        print(
            "error: AP_DATABASE_URL must be set (the control plane's database URL)", file=sys.stderr
        )
        return 2
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.control_plane.bootstrap",
            "--workspace",
            args.workspace,
            "--display-name",
            args.display_name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return done.returncode
    if args.json:
        sys.stdout.write(done.stdout)
        return 0
    made = json.loads(done.stdout)
    print(f"created {made['workspace']} with owner {made['user']}; API key (shown once):")
    print(made["api_key"])
    return 0


def add_commands(groups: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `whoami`, `keys`, `members`, `invitations` and `admin` command groups."""
    json_flag = json_option()
    groups.add_parser(
        "whoami", parents=[json_flag], help="show who the API key acts as, and where"
    ).set_defaults(handler=whoami)

    keys = groups.add_parser("keys", help="create, list and revoke API keys (owners only)")
    key_cmds = keys.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = key_cmds.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("name", help="a label, e.g. laptop or ci")
    create.add_argument("--user", help="the member it acts as, users/ID (default: you)")
    create.set_defaults(handler=keys_create)
    key_cmds.add_parser(
        "list", parents=[json_flag], help="list live keys: prefix, label, role, last use"
    ).set_defaults(handler=keys_list)
    revoke = key_cmds.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key", type=api_key_name, help="apiKeys/ID or ID")
    revoke.set_defaults(handler=keys_revoke)

    members = groups.add_parser("members", help="list and manage the workspace's members")
    member_cmds = members.add_subparsers(dest="command", required=True, metavar="COMMAND")
    member_cmds.add_parser("list", parents=[json_flag], help="list members and roles").set_defaults(
        handler=members_list
    )
    add = member_cmds.add_parser("add", help="create a new user with a role")
    add.add_argument("role", choices=ROLES)
    add.add_argument("--name", required=True, help="display name of the new user")
    add.set_defaults(handler=members_add)
    invite = member_cmds.add_parser(
        "invite", help="invite someone with a user already; prints a token (shown once)"
    )
    invite.add_argument("role", choices=ROLES)
    invite.add_argument("--label", help="a note for admins, e.g. whom it is for")
    invite.add_argument("--ttl", type=duration, help="how long it works, e.g. 12h (default 7d)")
    invite.set_defaults(handler=members_invite)
    set_role = member_cmds.add_parser("set-role", help="change a member's role")
    set_role.add_argument("member", type=member_name, help="users/ID or ID")
    set_role.add_argument("role", choices=ROLES)
    set_role.set_defaults(handler=members_set_role)
    remove = member_cmds.add_parser("remove", help="remove a member and revoke their keys here")
    remove.add_argument("member", type=member_name, help="users/ID or ID")
    remove.set_defaults(handler=members_remove)

    invitations = groups.add_parser(
        "invitations", help="list, revoke and accept invitations to workspaces"
    )
    invitation_cmds = invitations.add_subparsers(dest="command", required=True, metavar="COMMAND")
    invitation_cmds.add_parser(
        "list", parents=[json_flag], help="list invitations that can still be accepted (admins)"
    ).set_defaults(handler=invitations_list)
    revoke_invitation = invitation_cmds.add_parser("revoke", help="revoke an invitation (admins)")
    revoke_invitation.add_argument("invitation", type=invitation_name, help="invitations/ID or ID")
    revoke_invitation.set_defaults(handler=invitations_revoke)
    accept = invitation_cmds.add_parser(
        "accept",
        help="join a workspace with a token (read from a prompt or stdin) and a personal key",
    )
    accept.add_argument("--label", help="a label for the new key (default: invitation)")
    accept.set_defaults(handler=invitations_accept)

    admin = groups.add_parser("admin", help="operator commands that talk to the database")
    admin_cmds = admin.add_subparsers(dest="command", required=True, metavar="COMMAND")
    boot = admin_cmds.add_parser(
        "bootstrap",
        help="create the first workspace, owner and key (AP_DATABASE_URL; refuses a second time)",
    )
    boot.add_argument("--workspace", default="Default workspace", help="the workspace's name")
    boot.add_argument("--display-name", default="Owner", help="the owner's display name")
    boot.add_argument("--json", action="store_true", help="print the result as JSON")
    boot.set_defaults(offline_handler=admin_bootstrap)
