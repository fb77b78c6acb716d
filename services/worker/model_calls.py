"""One model call as a run makes it: fitted to the context window, retried while that is safe.

fit_context(request, window) ─► the request without its oldest turns, and what was left out
call_with_retries(model, request, on_retry) ─► the model's events; a failure before the
    first of them (no connection, 429, 5xx) is asked again after a backoff with jitter that
    honours Retry-After, each retry announced through `on_retry`; after it, never
add_usage(usage, report, prices) ─► the run's token counts and cost so far
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from agentplatform.v1 import run_pb2

from services.rpc.hosted_models import ModelPrices
from services.worker.model import (
    AssistantMessage,
    HostedModel,
    Message,
    ModelError,
    ModelEvent,
    ModelRequest,
    ToolResult,
    UsageReport,
    UserMessage,
)

# -- retries --------------------------------------------------------------------------------

RETRY_BASE_SECONDS = 0.5


def retry_delay(error: ModelError, retry: int, *, base: float = RETRY_BASE_SECONDS) -> float:
    """Return the wait before retry number `retry` (1, 2, …): Retry-After, else backoff.

    Exponential backoff with jitter (half to all of base × 2^(retry-1)), so that workers
    refused together do not come back together; what the endpoint asked for is waited in
    full, with up to a tenth more.
    """
    if error.retry_after is not None:
        return error.retry_after * random.uniform(1.0, 1.1)  # noqa: S311 - not a secret
    return float(base * 2 ** (retry - 1) * random.uniform(0.5, 1.0))  # noqa: S311


async def call_with_retries(
    model: HostedModel,
    request: ModelRequest,
    on_retry: Callable[[run_pb2.ModelRetry], None],
    *,
    base: float = RETRY_BASE_SECONDS,
) -> AsyncIterator[ModelEvent]:
    """Stream one model call, asking again while nothing of it has been passed on."""
    config = model.config
    retry = 0
    while True:
        started = False
        try:
            async for item in model.client.stream(request):
                if not isinstance(item, UsageReport):
                    started = True
                yield item
            return
        except ModelError as err:
            # Once a token is out, asking again would repeat it: the run fails instead.
            if started or not err.retryable or retry >= config.max_retries:
                raise
            retry += 1
            delay = retry_delay(err, retry, base=base)
            if delay > config.retry_max_wait_seconds:
                raise ModelError(
                    err.reason,
                    f"{err.message} (the endpoint asked to wait {delay:.0f} s, more than "
                    f"AP_MODEL_RETRY_MAX_WAIT_SECONDS, {config.retry_max_wait_seconds:g} s)",
                ) from None
            on_retry(
                run_pb2.ModelRetry(
                    retry=retry,
                    delay_ms=round(delay * 1000),
                    status_code=err.status or 0,
                    message=err.message[:500],
                )
            )
            await asyncio.sleep(delay)


# -- usage and cost -------------------------------------------------------------------------


def add_usage(usage: run_pb2.Usage, report: UsageReport, prices: ModelPrices) -> None:
    """Add one model call's counts, and their cost by the model's price table, to the run's."""
    usage.input_tokens += report.input_tokens
    usage.output_tokens += report.output_tokens
    usage.reasoning_tokens += report.reasoning_tokens
    usage.cached_input_tokens += report.cached_input_tokens
    usage.cost_micros += prices.cost_micros(
        report.input_tokens, report.cached_input_tokens, report.output_tokens
    )


# -- context fitting ------------------------------------------------------------------------

# Without the model's tokenizer, a conservative estimate: about four characters a token, and
# a few tokens of framing per message.
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    """Estimate the tokens of a text, erring high."""
    return -(-len(text) // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS


def _message_tokens(message: Message) -> int:
    match message:
        case UserMessage(text=text):
            return estimate_tokens(text)
        case AssistantMessage(text=text, tool_calls=calls):
            return estimate_tokens(text) + sum(
                estimate_tokens(c.name + c.arguments_json) for c in calls
            )
        case ToolResult(text=text):
            return estimate_tokens(text)


def request_tokens(request: ModelRequest) -> int:
    """Estimate the tokens a request sends: system prompt, tools and messages."""
    tools = sum(
        estimate_tokens(t.name + t.description + str(dict(t.parameters))) for t in request.tools
    )
    return (
        estimate_tokens(request.system) + tools + sum(_message_tokens(m) for m in request.messages)
    )


def _turns(messages: Sequence[Message]) -> list[list[Message]]:
    """Split a conversation into turns: a user message and everything answering it.

    A tool call and its result always share a turn, so dropping whole turns never separates
    them.
    """
    turns: list[list[Message]] = []
    for message in messages:
        if isinstance(message, UserMessage) or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


@dataclass(frozen=True)
class Fitted:
    """A request fitted to the window, and how many of the oldest messages it leaves out."""

    request: ModelRequest
    omitted: int
    estimated_tokens: int


def fit_context(request: ModelRequest, context_window: int | None) -> Fitted:
    """Leave out the oldest whole turns until the request and its reply fit the window.

    The latest turn (the input this run answers, and its tool rounds) always stays; if it
    alone is too big, the model is asked anyway and says so.
    """
    estimate = request_tokens(request)
    if context_window is None:
        return Fitted(request, 0, estimate)
    reserve = min(request.settings.max_output_tokens, context_window // 2)
    budget = context_window - reserve
    if estimate <= budget:
        return Fitted(request, 0, estimate)
    turns = _turns(request.messages)
    omitted = 0
    while len(turns) > 1 and estimate > budget:
        dropped = turns.pop(0)
        omitted += len(dropped)
        estimate -= sum(_message_tokens(m) for m in dropped)
    kept = tuple(m for turn in turns for m in turn)
    return Fitted(replace(request, messages=kept), omitted, estimate)
