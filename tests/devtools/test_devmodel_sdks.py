"""Prove the official OpenAI and Anthropic SDKs accept the dev model's streams and errors.

The SDKs' stream accumulators check the order and identity of events (an item's deltas
after its ``added``, a block's deltas by index, ``response.completed`` last), so a wire
format the dev model got wrong fails here even where the shape tests pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from devtools.devmodel import DevModel

RESPONSES_TOOLS: Any = [
    {"type": "function", "name": "lookup", "parameters": {"type": "object"}, "strict": False}
]
ANTHROPIC_TOOLS: Any = [{"name": "lookup", "input_schema": {"type": "object"}}]


@pytest.fixture
async def model() -> AsyncIterator[DevModel]:
    """Run a dev model on a free port for one test."""
    dev = DevModel()
    await dev.start()
    yield dev
    await dev.stop()


@pytest.fixture
async def openai_client(model: DevModel) -> AsyncIterator[openai.AsyncOpenAI]:
    """Provide an OpenAI client for the dev model that retries nothing unless told to."""
    async with openai.AsyncOpenAI(
        base_url=model.base_url, api_key="sk-dev", max_retries=0, timeout=5
    ) as client:
        yield client


@pytest.fixture
async def anthropic_client(model: DevModel) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """Provide an Anthropic client for the dev model (its base URL has no /v1)."""
    async with anthropic.AsyncAnthropic(
        base_url=model.base_url.removesuffix("/v1"), api_key="sk-ant-dev", max_retries=0, timeout=5
    ) as client:
        yield client


async def test_openai_chat_stream_accumulates_text_tool_calls_and_usage(
    openai_client: openai.AsyncOpenAI,
) -> None:
    """The SDK's chat stream helper assembles the reply, the tool call and the usage."""
    messages: Any = [{"role": "user", "content": "hi there [[cached=1]]"}]
    async with openai_client.chat.completions.stream(
        model="dev-model", messages=messages, stream_options={"include_usage": True}
    ) as stream:
        completion = await stream.get_final_completion()
    assert completion.choices[0].message.content == "You said: hi there"
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 3
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 1

    messages = [{"role": "user", "content": '[[tool=lookup args={"item": "a"}]]'}]
    async with openai_client.chat.completions.stream(model="dev-model", messages=messages) as s:
        completion = await s.get_final_completion()
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_1_1",
        "lookup",
        '{"item": "a"}',
    )


async def test_openai_responses_stream_round_trips_a_tool_call(
    openai_client: openai.AsyncOpenAI,
) -> None:
    """The SDK's Responses stream gives a function call; its output gets the documented reply."""
    text = '[[tool=lookup args={"item": "a"}]] [[reasoning=2]]'
    async with openai_client.responses.stream(
        model="dev-model", input=text, tools=RESPONSES_TOOLS
    ) as stream:
        kinds = [event.type async for event in stream]
        response = await stream.get_final_response()
    assert kinds[-1] == "response.completed"
    reasoning, call = response.output
    assert reasoning.type == "reasoning"
    assert reasoning.summary[0].text == "Reading the"
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_1_1", "lookup", '{"item": "a"}')

    conversation: Any = [
        {"role": "user", "content": text},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": "{}"},
        {"type": "function_call_output", "call_id": call.call_id, "output": "42"},
    ]
    async with openai_client.responses.stream(model="dev-model", input=conversation) as stream:
        response = await stream.get_final_response()
    assert response.output_text == "Tool lookup returned: 42"
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 2
    assert response.usage.output_tokens == 4 + 2  # "Tool lookup returned: 42" and the reasoning


async def test_openai_responses_non_streaming_parses(openai_client: openai.AsyncOpenAI) -> None:
    """responses.create without streaming parses into a Response with its usage."""
    response = await openai_client.responses.create(model="dev-model", input="ping [[cached=1]]")
    assert response.output_text == "You said: ping"
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 1


async def test_openai_responses_failure_mid_stream_arrives_as_failed_events(
    openai_client: openai.AsyncOpenAI,
) -> None:
    """[[fail_after=1]] reaches the SDK as an error event and response.failed."""
    async with openai_client.responses.stream(model="dev-model", input="[[fail_after=1]]") as s:
        events = [event async for event in s]
    error, failed = events[-2:]
    assert error.type == "error"
    assert error.code == "server_error"
    assert failed.type == "response.failed"
    assert failed.response.error is not None
    assert failed.response.error.code == "server_error"


async def test_openai_sdk_retries_a_rate_limit_as_retry_after_ms_says(
    model: DevModel,
) -> None:
    """The SDK's own retries get past [[rate_limit=2]]: two 429s, then the answer."""
    async with openai.AsyncOpenAI(
        base_url=model.base_url, api_key="sk-dev", max_retries=2
    ) as client:
        response = await client.responses.create(
            model="dev-model", input="[[rate_limit=2]] [[retry_after_ms=10]] go"
        )
    assert response.output_text == "You said: go"
    assert len(model.requests) == 3


async def test_openai_sdk_reports_errors_by_kind(openai_client: openai.AsyncOpenAI) -> None:
    """HTTP errors, mid-stream errors and bad frames surface as the SDK's own errors."""
    with pytest.raises(openai.RateLimitError) as rate_limited:
        await openai_client.responses.create(model="m", input="[[rate_limit=1]] x")
    assert rate_limited.value.response.headers["retry-after-ms"] == "1000"
    with pytest.raises(openai.InternalServerError):
        await openai_client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[[fail=500]]"}]
        )
    stream = await openai_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "[[fail_after=1]]"}], stream=True
    )
    with pytest.raises(openai.APIError, match=r"fail_after=1"):
        async for _ in stream:
            pass
    with pytest.raises(ValueError, match="Expecting property name"):
        async with openai_client.responses.stream(model="m", input="[[malformed]]") as s:
            async for _ in s:
                pass


async def test_openai_sdk_times_out_on_a_hang(model: DevModel) -> None:
    """A stream that goes silent ends in the SDK's timeout error."""
    async with openai.AsyncOpenAI(
        base_url=model.base_url, api_key="k", max_retries=0, timeout=0.5
    ) as client:
        with pytest.raises(openai.APITimeoutError):
            async with client.responses.stream(model="m", input="[[hang_after=1]]") as stream:
                async for _ in stream:
                    pass


async def test_anthropic_stream_round_trips_a_tool_use(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    """The SDK's message stream assembles thinking and tool_use; the result gets the reply."""
    text = '[[tool=lookup args={"item": "a"}]] [[reasoning=2]] [[cached=2]]'
    messages: Any = [{"role": "user", "content": text}]
    async with anthropic_client.messages.stream(
        model="dev-model", max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS
    ) as stream:
        message = await stream.get_final_message()
    thinking, tool_use = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "Reading the"
    assert thinking.signature
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == ("toolu_1_1", "lookup", {"item": "a"})
    assert message.stop_reason == "tool_use"
    assert message.usage.cache_read_input_tokens == 2
    assert message.usage.input_tokens == len(text.split()) - 2
    assert message.usage.output_tokens == 2

    messages = [
        *messages,
        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "42"}],
        },
    ]
    async with anthropic_client.messages.stream(
        model="dev-model", max_tokens=256, messages=messages
    ) as stream:
        streamed_text = "".join([delta async for delta in stream.text_stream])
        message = await stream.get_final_message()
    assert streamed_text == "Tool lookup returned: 42"
    assert message.stop_reason == "end_turn"


async def test_anthropic_non_streaming_and_models_parse(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    """messages.create and models.list parse into the SDK's types."""
    message = await anthropic_client.messages.create(
        model="dev-model", max_tokens=16, messages=[{"role": "user", "content": "ping"}]
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    models = await anthropic_client.models.list()
    assert [m.id for m in models.data] == ["dev-model"]


async def test_anthropic_sdk_reports_errors_by_kind(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    """HTTP errors, mid-stream error events and bad frames surface as the SDK's own errors."""
    messages: Any = [{"role": "user", "content": "[[rate_limit=1]] [[retry_after_ms=0]] go"}]
    with pytest.raises(anthropic.RateLimitError) as rate_limited:
        await anthropic_client.messages.create(model="m", max_tokens=8, messages=messages)
    assert rate_limited.value.response.headers["retry-after"] == "0"
    retried = await anthropic_client.messages.create(model="m", max_tokens=8, messages=messages)
    assert retried.content[-1].type == "text"

    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        await anthropic_client.messages.create(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "[[fail=529]]"}]
        )
    with pytest.raises(anthropic.APIStatusError, match="fail_after=1"):
        async with anthropic_client.messages.stream(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "[[fail_after=1]]"}]
        ) as stream:
            await stream.get_final_message()
    with pytest.raises(ValueError, match="Expecting property name"):
        async with anthropic_client.messages.stream(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "[[malformed]]"}]
        ) as stream:
            await stream.get_final_message()


async def test_sdks_report_a_wrong_key_and_an_unknown_model() -> None:
    """Both SDKs raise their authentication and not-found errors, as start-up checks need."""
    dev = DevModel(models=["served"], api_key="sk-right")
    await dev.start()
    base_url = dev.base_url.removesuffix("/v1")
    try:
        async with openai.AsyncOpenAI(
            base_url=dev.base_url, api_key="sk-wrong", max_retries=0
        ) as wrong_openai:
            with pytest.raises(openai.AuthenticationError):
                await wrong_openai.models.list()
        async with openai.AsyncOpenAI(
            base_url=dev.base_url, api_key="sk-right", max_retries=0
        ) as right_openai:
            with pytest.raises(openai.NotFoundError):
                await right_openai.models.retrieve("other")
            assert (await right_openai.models.retrieve("served")).id == "served"
        async with anthropic.AsyncAnthropic(
            base_url=base_url, api_key="sk-wrong", max_retries=0
        ) as wrong:
            with pytest.raises(anthropic.AuthenticationError):
                await wrong.models.list()
        async with anthropic.AsyncAnthropic(
            base_url=base_url, api_key="sk-right", max_retries=0
        ) as right:
            with pytest.raises(anthropic.NotFoundError):
                await right.messages.create(
                    model="other", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
                )
            assert (await right.models.retrieve("served")).id == "served"
    finally:
        await dev.stop()
