"""Build the model's messages: the system prompt, the transcript and the new input."""

from __future__ import annotations

from typing import Any

from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb

PLATFORM_PROMPT = (
    "You are a helpful assistant running on Agent Platform. Answer the user's latest message, "
    "using the conversation so far."
)


def system_prompt(claim: pb.RunClaim) -> str:
    """Compose the system prompt from platform, workspace, caller and session context."""
    parts = [
        PLATFORM_PROMPT,
        f"Workspace: {claim.workspace_display_name} ({claim.workspace}).",
        f"You are talking with {claim.caller_display_name or 'a user'}, whose role in this "
        f"workspace is {claim.caller_role or 'unknown'}.",
        "Available tools: none.",
    ]
    if claim.session_instructions:
        parts.append(f"Session instructions:\n{claim.session_instructions}")
    return "\n\n".join(parts)


def model_messages(claim: pb.RunClaim) -> list[dict[str, Any]]:
    """Return the Chat Completions messages for a claimed run."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt(claim)}]
    messages += [{"role": m.role, "content": m.content} for m in claim.transcript]
    messages.append({"role": "user", "content": claim.input_text})
    return messages
