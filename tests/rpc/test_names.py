"""Tool and MCP-server names parse through rpc/names.py, with INVALID_ARGUMENT on bad ones."""

from __future__ import annotations

import uuid

import grpc
import pytest

from services.rpc import names
from services.rpc.errors import ApiError


def test_public_and_internal_tool_names_round_trip() -> None:
    """A public name's id goes into the workspace's internal name and comes back out."""
    workspace = uuid.uuid4()
    tool = names.parse_tool_name(names.tool_name("get_weather"))
    internal = names.workspace_tool_name(workspace, tool)
    assert names.parse_workspace_tool_name(internal) == (workspace, "get_weather")
    server = names.parse_mcp_server_name(names.mcp_server_name("docs"))
    internal = names.workspace_mcp_server_name(workspace, server)
    assert names.parse_workspace_mcp_server_name(internal) == (workspace, "docs")


@pytest.mark.parametrize(
    ("parse", "name"),
    [
        (names.parse_tool_name, ""),
        (names.parse_tool_name, "tools/"),
        (names.parse_tool_name, "tools/a/b"),
        (names.parse_tool_name, "mcpServers/a"),
        (names.parse_mcp_server_name, "mcpServers/"),
        (names.parse_mcp_server_name, "tools/a"),
        (names.parse_workspace_tool_name, "workspaces/not-a-uuid/tools/a"),
        (names.parse_workspace_mcp_server_name, f"workspaces/{uuid.uuid4()}/tools/a"),
    ],
)
def test_malformed_names_are_invalid_argument(parse: object, name: str) -> None:
    """Each malformed name is refused as bad input of the field it came in."""
    with pytest.raises(ApiError) as refused:
        parse(name, "tool.name")  # type: ignore[operator]
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == "tool.name"
