"""The model-provider seam: neutral requests in, a stream of neutral `ModelEvent`s out.

    ModelRequest(system, messages, tools, settings)
        └─► ModelClient.stream() ─► TextDelta | ReasoningDelta | UsageReport | ToolCallRequest
                                    (ModelError with an ErrorReason when the call fails)

Each wire format (services/worker/providers/) is one `ModelClient`: it shapes the request
for its API and maps what the API streams back onto these types. Nothing outside an adapter
knows a provider's JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.rpc.errors import Reason

# -- what the model is asked ----------------------------------------------------------------


@dataclass(frozen=True)
class UserMessage:
    """A message from the person the run talks with."""

    text: str


@dataclass(frozen=True)
class ToolCallRequest:
    """A function call the model asked for, complete (its arguments a JSON object's text)."""

    call_id: str
    name: str
    arguments_json: str


@dataclass(frozen=True)
class AssistantMessage:
    """What the model said earlier: its text, and the tool calls it asked for."""

    text: str
    tool_calls: tuple[ToolCallRequest, ...] = ()


@dataclass(frozen=True)
class ToolResult:
    """The answer to one tool call, given back to the model."""

    call_id: str
    name: str
    text: str
    is_error: bool = False


Message = UserMessage | AssistantMessage | ToolResult


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: its name, what it does, and its parameters' JSON Schema."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ModelSettings:
    """What a call asks of the model besides the conversation."""

    model: str


@dataclass(frozen=True)
class ModelRequest:
    """One model call: the system prompt, the conversation in order, the tools on offer."""

    system: str
    messages: Sequence[Message]
    settings: ModelSettings
    tools: Sequence[ToolSpec] = field(default_factory=tuple)


# -- what the model streams back ------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """A piece of reply text."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning summary."""

    text: str


@dataclass(frozen=True)
class UsageReport:
    """Token counts of one model call."""

    input_tokens: int
    output_tokens: int
    reasoning_tokens: int


ModelEvent = TextDelta | ReasoningDelta | UsageReport | ToolCallRequest


class ModelError(Exception):
    """The model call failed; `reason` says how (MODEL_ERROR, MODEL_TIMEOUT, …)."""

    def __init__(self, reason: Reason.ValueType, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ModelClient(Protocol):
    """One model API behind one method."""

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Call the model and yield what it streams, as it streams.

        Text and reasoning come as they arrive; each tool call comes once, complete; usage
        may come at any point. A failure of the call raises ModelError.
        """
        ...


@dataclass(frozen=True)
class HostedModel:
    """The model runs call: its API's client, and what to ask of it."""

    client: ModelClient
    settings: ModelSettings
