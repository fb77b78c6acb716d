"""The model-provider seam: neutral requests in, a stream of neutral `ModelEvent`s out.

    ModelRequest(system, messages, tools, settings)
        └─► ModelClient.stream() ─► TextDelta | ReasoningDelta | ReasoningBlock | UsageReport
                                    | ToolCallRequest
                                    (ModelError with an ErrorReason when the call fails)

A `ReasoningBlock` is reasoning the provider wants back verbatim (Anthropic's signed
thinking): the run keeps it on the turn's `AssistantMessage`, and the adapter sends it with
the turn's tool calls on the next call.

Each wire format (services/worker/providers/) is one `ModelClient`: it shapes the request
for its API and maps what the API streams back onto these types. Nothing outside an adapter
knows a provider's JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.rpc.errors import Reason
from services.rpc.hosted_models import HostedModelConfig

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
class ReasoningBlock:
    """A block of reasoning to give back to the model unchanged, as its provider returned it.

    Anthropic's thinking block (its text and signature) or redacted thinking block (its
    encrypted `redacted_data`); its text has streamed already as ReasoningDelta.
    """

    thinking: str = ""
    signature: str = ""
    redacted_data: str = ""


@dataclass(frozen=True)
class AssistantMessage:
    """What the model said earlier: its text, the tool calls it asked for, its signed reasoning."""

    text: str
    tool_calls: tuple[ToolCallRequest, ...] = ()
    reasoning: tuple[ReasoningBlock, ...] = ()


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
    max_output_tokens: int = 4096
    # Reasoning asked of the model: an effort (OpenAI formats) or a thinking budget (Messages).
    reasoning_effort: str | None = None
    thinking_budget_tokens: int | None = None


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
    """Token counts of one model call, reported once, when its stream ends.

    `input_tokens` counts every prompt token, `cached_input_tokens` those among them the
    provider served from its prompt cache; `output_tokens` includes `reasoning_tokens`.
    """

    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cached_input_tokens: int = 0


ModelEvent = TextDelta | ReasoningDelta | ReasoningBlock | UsageReport | ToolCallRequest


class ModelError(Exception):
    """The model call failed; `reason` says how (MODEL_ERROR, MODEL_TIMEOUT, …).

    `retryable` marks a failure that asking again may cure (no connection, HTTP 429 or 5xx);
    `retry_after` is the wait in seconds the endpoint asked for, if it asked.
    """

    def __init__(
        self,
        reason: Reason.ValueType,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class ModelClient(Protocol):
    """One model API behind one method."""

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Call the model and yield what it streams, as it streams.

        Text and reasoning come as they arrive; each tool call comes once, complete; usage
        comes once, at the end. A failure of the call raises ModelError.
        """
        ...


@dataclass(frozen=True)
class HostedModel:
    """An offered model runs call: its API's client, what to ask of it, and its configuration."""

    client: ModelClient
    settings: ModelSettings
    config: HostedModelConfig
