"""Each wire format end to end: a real control plane and worker against the dev model.

Chat Completions, Responses and Messages each stream text and reasoning, record usage and
cost, retry a 429 (with `model.retry` events) and end a failing, hanging or malformed call
as documented: `run.failed` with MODEL_ERROR or MODEL_TIMEOUT, never duplicated output.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from agentplatform.v1 import run_pb2

from tests.conftest import clone_database
from tests.gateway.helpers import start_gateway_stack
from tests.harness import Client, Stack, start_stack
from tests.integration.helpers import get_run, new_run, new_session

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

APIS = ("chat_completions", "responses", "messages")
PRICES = {"price_input": 2.0, "price_cached_input": 0.5, "price_output": 8.0}


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=APIS)
async def api_stack(
    request: pytest.FixtureRequest, pg_admin_dsn: str, template_dsn: str
) -> AsyncIterator[Stack]:
    """One stack per wire format, its worker speaking that format to the dev model."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_stack(
        dsn,
        internal_token=secrets.token_urlsafe(24),
        model_idle_timeout=1.0,
        model_settings={"api": request.param, "max_retries": 2, **PRICES},
    ) as running:
        yield running


async def run_events(client: Client, text: str) -> tuple[str, list[run_pb2.RunEvent]]:
    """Start a run of `text` in a new session; return its name and every event to the end."""
    session = await new_session(client)
    run = await new_run(client, session.name, text)
    return run.name, await client.stream(run.name)


def joined(events: list[run_pb2.RunEvent], payload: str) -> str:
    """Join the text of every delta event of one payload kind."""
    return "".join(getattr(e, payload).text for e in events if e.WhichOneof("payload") == payload)


async def test_text_reasoning_and_usage_stream_and_are_recorded(api_stack: Stack) -> None:
    """Text and reasoning stream as deltas; usage, cached tokens and cost reach the run."""
    name, events = await run_events(
        api_stack.owner, "hello there [[tokens=4]] [[reasoning=2]] [[cached=3]]"
    )
    types = [e.type for e in events]
    assert types == [
        "run.queued",
        "run.started",
        *["reasoning.summary.delta"] * 2,
        *["output_text.delta"] * 4,
        "usage",
        "run.completed",
    ]
    assert joined(events, "output_text_delta") == "alpha bravo charlie delta"
    assert joined(events, "reasoning_summary_delta") == "Reading the"
    usage = next(e.usage for e in events if e.type == "usage")
    assert usage.output_tokens == 6 and usage.reasoning_tokens == 2
    assert usage.cached_input_tokens == 3 and usage.input_tokens > 3
    cost = (usage.input_tokens - 3) * 2.0 + 3 * 0.5 + usage.output_tokens * 8.0
    assert usage.cost_micros == round(cost)
    run = await get_run(api_stack.owner, name)
    assert run.state == run_pb2.Run.COMPLETED
    # The run row keeps the three original counts; storing cached tokens and cost with the
    # run is the usage rollups' work.
    assert (run.usage.input_tokens, run.usage.output_tokens, run.usage.reasoning_tokens) == (
        usage.input_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
    )


async def test_http_error_fails_the_run_without_retrying(api_stack: Stack) -> None:
    """A 400 is not retried: the run fails with MODEL_ERROR naming the status."""
    before = len(api_stack.devmodel.requests)
    _, events = await run_events(api_stack.owner, "hello [[fail=400]]")
    assert [e.type for e in events] == ["run.queued", "run.started", "run.failed"]
    failed = events[-1].run_failed
    assert failed.reason == "MODEL_ERROR" and "HTTP 400" in failed.message
    assert len(api_stack.devmodel.requests) == before + 1


async def test_rate_limit_then_success_is_retried_with_events(api_stack: Stack) -> None:
    """Two 429s, then an answer: two model.retry events, then the reply, once."""
    before = len(api_stack.devmodel.requests)
    _, events = await run_events(
        api_stack.owner, "hello [[rate_limit=2]] [[retry_after_ms=0]] [[reasoning=0]]"
    )
    types = [e.type for e in events]
    assert types[:4] == ["run.queued", "run.started", "model.retry", "model.retry"]
    assert types[-1] == "run.completed"
    retries = [e.model_retry for e in events if e.type == "model.retry"]
    assert [r.retry for r in retries] == [1, 2]
    assert all(r.status_code == 429 and "rate limit" in r.message for r in retries)
    assert joined(events, "output_text_delta") == "You said: hello"
    assert len(api_stack.devmodel.requests) == before + 3


async def test_server_errors_are_retried_until_the_limit_then_fail(api_stack: Stack) -> None:
    """A model that keeps answering 503 is asked AP_MODEL_MAX_RETRIES more times, then fails."""
    before = len(api_stack.devmodel.requests)
    _, events = await run_events(api_stack.owner, "hello [[fail=503]]")
    retries = [e.model_retry for e in events if e.type == "model.retry"]
    assert [r.retry for r in retries] == [1, 2]
    assert all(r.status_code == 503 and r.delay_ms > 0 for r in retries)
    assert events[-1].run_failed.reason == "MODEL_ERROR"
    assert "HTTP 503" in events[-1].run_failed.message
    assert len(api_stack.devmodel.requests) == before + 3


async def test_failure_after_output_is_not_retried(api_stack: Stack) -> None:
    """Once tokens are out, an in-stream error fails the run: nothing is said twice."""
    before = len(api_stack.devmodel.requests)
    _, events = await run_events(api_stack.owner, "hello [[tokens=5]] [[fail_after=2]]")
    assert joined(events, "output_text_delta") == "alpha bravo "
    assert "model.retry" not in [e.type for e in events]
    assert events[-1].run_failed.reason == "MODEL_ERROR"
    assert len(api_stack.devmodel.requests) == before + 1


async def test_silent_stream_times_out(api_stack: Stack) -> None:
    """A stream that goes silent past the idle timeout fails with MODEL_TIMEOUT, not retried."""
    _, events = await run_events(api_stack.owner, "hello [[tokens=5]] [[hang_after=1]]")
    assert joined(events, "output_text_delta") == "alpha "
    assert events[-1].run_failed.reason == "MODEL_TIMEOUT"
    assert "model.retry" not in [e.type for e in events]


async def test_malformed_stream_fails_the_run(api_stack: Stack) -> None:
    """A frame that is not JSON fails the run with MODEL_ERROR."""
    _, events = await run_events(api_stack.owner, "hello [[tokens=3]] [[malformed]]")
    assert joined(events, "output_text_delta") == "alpha "
    failed = events[-1].run_failed
    assert failed.reason == "MODEL_ERROR" and "malformed" in failed.message


async def test_requests_are_shaped_for_the_format(api_stack: Stack) -> None:
    """The worker streams, and sends what the format requires."""
    await run_events(api_stack.owner, "hello")
    body = api_stack.devmodel.requests[-1]
    assert body["stream"] is True and body["model"] == "ap-dev-model"
    api = api_stack.worker.model.offered[0].api if api_stack.worker else ""
    match api:
        case "chat_completions":
            assert body["messages"][0]["role"] == "system"
        case "responses":
            assert body["instructions"] and body["store"] is False
        case "messages":
            assert body["system"] and body["max_tokens"] == 4096


@pytest.mark.parametrize("api", APIS)
async def test_tool_call_round_trip(
    api: str, pg_admin_dsn: str, template_dsn: str, tmp_path: Path
) -> None:
    """The model calls a tool through the gateway and answers with its result."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_gateway_stack(dsn, tmp_path, model_settings={"api": api}) as gw_stack:
        await gw_stack.add_http_tool(
            gw_stack.owner,
            "lookup",
            gw_stack.tools.base + "/echo/{item}",
            parameters={
                "type": "object",
                "properties": {"item": {"type": "string"}},
                "required": ["item"],
            },
        )
        _, events = await gw_stack.run(
            gw_stack.owner, 'Look it up [[tool=lookup args={"item": "a-b"}]] [[reasoning=1]]'
        )
        types = [e.type for e in events]
        assert types[-1] == "run.completed", events[-1]
        started = next(e.tool_call_started for e in events if e.type == "tool_call.started")
        assert started.tool == "lookup" and '"a-b"' in started.arguments_json
        completed = next(e.tool_call_completed for e in events if e.type == "tool_call.completed")
        assert completed.call_id == started.call_id and not completed.is_error
        reply = joined(events, "output_text_delta")
        assert reply.startswith("Tool lookup returned:") and "a-b" in reply
        assert types.count("usage") == 2  # one per model call


async def test_retry_after_is_waited_in_full(api_stack: Stack) -> None:
    """The wait a 429 asks for (Retry-After / retry-after-ms) is the least the retry waits."""
    _, events = await run_events(
        api_stack.owner, "hello [[rate_limit=1]] [[retry_after_ms=300]] [[reasoning=0]]"
    )
    (retry,) = [e.model_retry for e in events if e.type == "model.retry"]
    assert 300 <= retry.delay_ms <= 1100  # retry-after-ms (OpenAI) or whole seconds (Anthropic)
    assert events[-1].type == "run.completed"


@pytest.mark.parametrize(
    ("api", "reasoning"),
    [
        ("chat_completions", {"reasoning_effort": "low"}),
        ("responses", {"reasoning_effort": "low"}),
        ("messages", {"thinking_budget_tokens": 2048}),
    ],
)
async def test_requested_reasoning_through_a_tool_call_round_trip(
    api: str, reasoning: dict[str, object], pg_admin_dsn: str, template_dsn: str, tmp_path: Path
) -> None:
    """Reasoning configured per model is asked for; Anthropic's signed thinking goes back.

    With extended thinking the dev model, like Anthropic, refuses a follow-up whose tool-use
    turn lacks its thinking block with the signature unchanged: the run completing proves the
    worker sent it back, and the turn's blocks are recorded as "reasoning.state".
    """
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    settings = {"api": api, **reasoning}
    async with start_gateway_stack(dsn, tmp_path, model_settings=settings) as gw_stack:
        await gw_stack.add_http_tool(
            gw_stack.owner,
            "lookup",
            gw_stack.tools.base + "/echo/{item}",
            parameters={
                "type": "object",
                "properties": {"item": {"type": "string"}},
                "required": ["item"],
            },
        )
        _, events = await gw_stack.run(
            gw_stack.owner, 'Look it up [[tool=lookup args={"item": "a"}]] [[reasoning=2]]'
        )
        assert events[-1].type == "run.completed", events[-1]
        assert joined(events, "reasoning_summary_delta")
        first, follow_up = gw_stack.stack.devmodel.requests[-2:]
        match api:
            case "chat_completions":
                assert first["reasoning_effort"] == "low"
            case "responses":
                assert first["reasoning"] == {"effort": "low", "summary": "auto"}
            case "messages":
                assert first["thinking"] == {"type": "enabled", "budget_tokens": 2048}
                (state,) = [e.reasoning_state for e in events if e.type == "reasoning.state"]
                (block,) = state.blocks
                assert block.signature and block.thinking
                turn = follow_up["messages"][-2]
                assert turn["role"] == "assistant"
                assert turn["content"][0] == {
                    "type": "thinking",
                    "thinking": block.thinking,
                    "signature": block.signature,
                }
                assert turn["content"][-1]["type"] == "tool_use"
