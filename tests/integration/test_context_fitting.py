"""Context fitting: whole turns go, oldest first; a tool call never loses its result."""

from __future__ import annotations

from services.worker.model import (
    AssistantMessage,
    ModelRequest,
    ModelSettings,
    ToolCallRequest,
    ToolResult,
    UserMessage,
)
from services.worker.model_calls import fit_context, request_tokens

WORDS = "word " * 100  # about 125 estimated tokens


def conversation() -> tuple[UserMessage | AssistantMessage | ToolResult, ...]:
    """Two old turns, one of them with a tool round, then the current one with a tool round."""
    call = ToolCallRequest("c1", "lookup", '{"q": "x"}')
    current = ToolCallRequest("c2", "lookup", '{"q": "y"}')
    return (
        UserMessage("old " + WORDS),
        AssistantMessage("", (call,)),
        ToolResult("c1", "lookup", WORDS),
        AssistantMessage("old answer " + WORDS),
        UserMessage("middle " + WORDS),
        AssistantMessage("middle answer"),
        UserMessage("now"),
        AssistantMessage("", (current,)),
        ToolResult("c2", "lookup", "result"),
    )


def request(messages: tuple[UserMessage | AssistantMessage | ToolResult, ...]) -> ModelRequest:
    """A request of these messages with a short system prompt and 100 tokens of reply."""
    return ModelRequest("system", messages, ModelSettings("m", max_output_tokens=100))


def test_without_a_window_or_within_it_nothing_is_left_out() -> None:
    """No window configured, or a request that fits: sent as it is."""
    whole = request(conversation())
    assert fit_context(whole, None).omitted == 0
    fitted = fit_context(whole, request_tokens(whole) + 100)
    assert fitted.omitted == 0 and fitted.request.messages == whole.messages


def test_oldest_whole_turns_go_first_and_tool_rounds_stay_whole() -> None:
    """Dropping stops at a turn boundary: a tool call is never sent without its result."""
    whole = request(conversation())
    fitted = fit_context(whole, 400)  # room for about 300 tokens of request
    assert fitted.omitted == 4  # the old turn: its question, tool call, result and answer
    kept = fitted.request.messages
    assert kept == conversation()[4:]
    assert fitted.estimated_tokens == request_tokens(fitted.request) <= 300


def test_the_current_turn_always_stays() -> None:
    """Even when only the current turn remains and it does not fit, it is sent."""
    fitted = fit_context(request(conversation()), 50)
    assert fitted.request.messages == conversation()[6:]
    assert fitted.omitted == 6
