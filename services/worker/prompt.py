"""Build the model's messages: the system prompt, the transcript and the new input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.gateway.v1 import gateway_service_pb2 as gw
from google.protobuf import json_format

PLATFORM_PROMPT = (
    "You are a helpful assistant running on Agent Platform. Answer the user's latest message, "
    "using the conversation so far."
)


def system_prompt(claim: pb.RunClaim, tool_names: Sequence[str] = ()) -> str:
    """Compose the system prompt from platform, workspace, caller, tools and session context."""
    parts = [
        PLATFORM_PROMPT,
        f"Workspace: {claim.workspace_display_name} ({claim.workspace}).",
        f"You are talking with {claim.caller_display_name or 'a user'}, whose role in this "
        f"workspace is {claim.caller_role or 'unknown'}.",
        (
            f"Available tools: {', '.join(tool_names)}. Call them when they help; their "
            "results come back as tool messages."
            if tool_names
            else "Available tools: none."
        ),
    ]
    if claim.session_instructions:
        parts.append(f"Session instructions:\n{claim.session_instructions}")
    return "\n\n".join(parts)


def model_messages(claim: pb.RunClaim, tool_names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Return the Chat Completions messages for a claimed run."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt(claim, tool_names)}
    ]
    messages += [{"role": m.role, "content": m.content} for m in claim.transcript]
    messages.append({"role": "user", "content": claim.input_text})
    return messages


def function_tools(tools: Sequence[gw.Tool]) -> list[dict[str, Any]]:
    """Offer tools to the model in the OpenAI function-calling format."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name.rsplit("/", 1)[-1],
                "description": tool.description,
                "parameters": json_format.MessageToDict(tool.parameters),
            },
        }
        for tool in tools
    ]
