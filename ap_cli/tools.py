"""Implement `ap tools add-http|add-mcp|list|show|policy|rm|calls`."""

from __future__ import annotations

import argparse
import json
import re
import urllib.parse

from agentplatform.v1 import tool_pb2
from google.protobuf import json_format, struct_pb2

from ap_cli.context import Context, json_option
from ap_cli.format import format_fields, format_table, format_time
from ap_cli.names import run_name

TIMEOUT_S = 150.0  # registering an MCP server connects to it and lists its tools


def parameters_schema(text: str) -> struct_pb2.Struct:
    """Parse a JSON Schema object given on the command line (or @FILE)."""
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as source:
            text = source.read()
    try:
        schema = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--parameters is not JSON: {err}") from None
    if not isinstance(schema, dict):
        raise argparse.ArgumentTypeError("--parameters must be a JSON object")
    out = struct_pb2.Struct()
    out.update(schema)
    return out


_POLICIES = {
    "always_allow": tool_pb2.ALWAYS_ALLOW,
    "always_ask": tool_pb2.ALWAYS_ASK,
    "never": tool_pb2.NEVER,
}


def _policy_name(policy: int) -> str:
    return next((k for k, v in _POLICIES.items() if v == policy), "always_allow")


def tools_policy(ctx: Context, args: argparse.Namespace) -> int:
    """Set the approval policy of a tool, or of an MCP server and all its tools."""
    name: str = args.name
    if name.startswith("mcpServers/"):
        ctx.client.update_mcp_server(name, approval_policy=args.policy)
    else:
        ctx.client.update_tool(tool_name(name), approval_policy=args.policy)
    ctx.say(f"{name}: approval policy {args.policy}")
    return 0


def tools_add_http(ctx: Context, args: argparse.Namespace) -> int:
    """Register an HTTP tool; print its name."""
    credential = args.credential or ""
    if credential and not credential.startswith("secrets/"):
        credential = f"secrets/{credential}"
    created = ctx.client.with_options(timeout=TIMEOUT_S).create_tool(
        args.name,
        tool_pb2.Tool(
            description=args.description,
            parameters=args.parameters,
            timeout_ms=args.timeout_ms,
            approval_policy=_POLICIES[args.approval],
            http=tool_pb2.HttpEndpoint(
                method=args.method,
                url_template=args.url,
                credential=credential,
                credential_injection=args.inject,
            ),
        ),
    )
    ctx.say(f"registered {created.name}")
    return 0


def server_id_for(url: str) -> str:
    """Derive a server id from a URL's host: "mcp.github.com" → "mcp-github-com"."""
    host = (urllib.parse.urlsplit(url).hostname or "server").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", host).strip("-")
    slug = slug if slug[:1].isalpha() else f"s-{slug}"
    return slug[:20].rstrip("-")


def tools_add_mcp(ctx: Context, args: argparse.Namespace) -> int:
    """Register an MCP server and print the tools discovered on it."""
    created = ctx.client.with_options(timeout=TIMEOUT_S).create_mcp_server(
        args.id or server_id_for(args.url),
        tool_pb2.McpServer(
            url=args.url, timeout_ms=args.timeout_ms, approval_policy=_POLICIES[args.approval]
        ),
    )
    ctx.say(f"registered {created.name} with {len(created.tools)} tools")
    for tool in created.tools:
        ctx.say(f"  {tool.name}  {tool.description}")
    return 0


def tools_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print the workspace's tools as a table."""
    listed = ctx.client.list_tools()
    if ctx.json:
        ctx.emit_all(listed)
        return 0
    rows = [
        (
            t.name,
            t.mcp_server or f"{t.http.method} {t.http.url_template}",
            t.http.credential or "-",
            format_time(t.create_time),
        )
        for t in listed
    ]
    header = ("NAME", "ENDPOINT", "CREDENTIAL", "REGISTERED")
    ctx.say(format_table(header, rows) if rows else "no tools")
    return 0


def tool_name(value: str) -> str:
    """Return `tools/{name}` for a full tool name or a bare one."""
    return value if value.startswith("tools/") else f"tools/{value}"


def tools_show(ctx: Context, args: argparse.Namespace) -> int:
    """Print one tool: its endpoint, credential, timeout and parameter schema."""
    tool = ctx.client.get_tool(args.name)
    if ctx.json:
        ctx.emit(tool)
        return 0
    if tool.mcp_server:
        endpoint = f"MCP server {tool.mcp_server}"
    else:
        endpoint = f"{tool.http.method} {tool.http.url_template}"
    credential = "-"
    if tool.http.credential:
        credential = f"{tool.http.credential} ({tool.http.credential_injection or 'bearer'})"
    pairs = [
        ("name", tool.name),
        ("description", tool.description or "-"),
        ("endpoint", endpoint),
        ("credential", credential),
        ("timeout", f"{tool.timeout_ms} ms" if tool.timeout_ms else "the platform's default"),
        ("approval", _policy_name(tool.approval_policy)),
        ("registered", format_time(tool.create_time)),
        ("parameters", json.dumps(json_format.MessageToDict(tool.parameters), indent=2)),
    ]
    ctx.say(format_fields(pairs))
    return 0


def tools_rm(ctx: Context, args: argparse.Namespace) -> int:
    """Remove an HTTP tool, or an MCP server with all its tools."""
    name: str = args.name
    if name.startswith("mcpServers/"):
        ctx.client.delete_mcp_server(name)
    else:
        name = name if name.startswith("tools/") else f"tools/{name}"
        ctx.client.delete_tool(name)
    ctx.say(f"removed {name}")
    return 0


def tools_calls(ctx: Context, args: argparse.Namespace) -> int:
    """Print a run's tool call records."""
    listed = ctx.client.list_tool_calls(args.run)
    if ctx.json:
        ctx.emit_all(listed)
        return 0
    rows = [
        (
            c.name.rsplit("/", 1)[-1],
            c.tool,
            tool_pb2.ToolCall.State.Name(c.state).lower(),
            c.error_code or "-",
            f"{c.duration_ms} ms",
        )
        for c in listed
    ]
    ctx.say(format_table(("CALL", "TOOL", "STATE", "ERROR", "DURATION"), rows) if rows else "none")
    return 0


def add_commands(groups: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `tools` command group to the parser."""
    json_flag = json_option()
    tools = groups.add_parser("tools", help="register, list and remove the workspace's tools")
    cmds = tools.add_subparsers(dest="command", required=True, metavar="COMMAND")
    http = cmds.add_parser("add-http", help="register an HTTP tool")
    http.add_argument("name", help="the tool's name as the model sees it ([a-zA-Z0-9_-]{1,64})")
    http.add_argument("url", help="URL template; {arg} in the path takes that argument")
    http.add_argument("--method", default="GET", help="GET (default), POST, PUT, PATCH, DELETE")
    http.add_argument("--description", default="", help="what the tool does, for the model")
    http.add_argument(
        "--parameters",
        type=parameters_schema,
        default=parameters_schema('{"type": "object"}'),
        help="JSON Schema of the arguments (or @FILE); default: any object",
    )
    http.add_argument("--credential", help="a secret to inject: NAME or secrets/NAME")
    http.add_argument(
        "--inject", default="bearer", help='"bearer" (default), "header:NAME" or "query:NAME"'
    )
    http.add_argument("--timeout-ms", type=int, default=0, help="per-call timeout")
    http.add_argument(
        "--approval",
        choices=sorted(_POLICIES),
        default="always_allow",
        help="whether a person approves each call (default always_allow)",
    )
    http.set_defaults(handler=tools_add_http)
    mcp = cmds.add_parser("add-mcp", help="register an MCP server (streamable HTTP)")
    mcp.add_argument("url", help="the server's MCP endpoint, e.g. https://host/mcp")
    mcp.add_argument(
        "--id", help="server id; its tools are named ID__TOOL (default: from the URL's host)"
    )
    mcp.add_argument("--timeout-ms", type=int, default=0, help="per-call timeout")
    mcp.add_argument(
        "--approval",
        choices=sorted(_POLICIES),
        default="always_allow",
        help="the approval policy of all its tools (default always_allow)",
    )
    mcp.set_defaults(handler=tools_add_mcp)
    listing = cmds.add_parser("list", parents=[json_flag], help="list the workspace's tools")
    listing.set_defaults(handler=tools_list)
    show = cmds.add_parser(
        "show", parents=[json_flag], help="show a tool: endpoint, credential, parameter schema"
    )
    show.add_argument("name", type=tool_name, help="tools/NAME or the bare NAME")
    show.set_defaults(handler=tools_show)
    policy = cmds.add_parser(
        "policy", help="set the approval policy of tools/NAME, or of mcpServers/ID and its tools"
    )
    policy.add_argument("name", help="tools/NAME, the bare NAME, or mcpServers/ID")
    policy.add_argument("policy", choices=sorted(_POLICIES))
    policy.set_defaults(handler=tools_policy)
    rm = cmds.add_parser("rm", help="remove tools/NAME, or mcpServers/ID with its tools")
    rm.add_argument("name")
    rm.set_defaults(handler=tools_rm)
    calls = cmds.add_parser("calls", parents=[json_flag], help="list a run's tool calls")
    calls.add_argument("run", type=run_name, help="sessions/S/runs/R")
    calls.set_defaults(handler=tools_calls)
