"""Build what the model is told: the system prompt, the conversation and the tools on offer."""

from __future__ import annotations

from collections.abc import Sequence

from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.gateway.v1 import gateway_service_pb2 as gw
from google.protobuf import json_format

from services.worker.model import AssistantMessage, Message, ToolSpec, UserMessage

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


def conversation(claim: pb.RunClaim) -> list[Message]:
    """Return the session's transcript followed by the run's input, oldest first."""
    messages: list[Message] = [
        AssistantMessage(entry.content) if entry.role == "assistant" else UserMessage(entry.content)
        for entry in claim.transcript
    ]
    messages.append(UserMessage(claim.input_text))
    return messages


def tool_specs(tools: Sequence[gw.Tool]) -> list[ToolSpec]:
    """Describe the gateway's tools to the model by their short names."""
    return [
        ToolSpec(
            name=tool.name.rsplit("/", 1)[-1],
            description=tool.description,
            parameters=json_format.MessageToDict(tool.parameters),
        )
        for tool in tools
    ]
