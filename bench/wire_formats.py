"""Measure what each wire format's adapter costs a run: one model call, in process.

Everything else on a run's path (CreateRun, claim, appends, FinishRun, streaming to the
client) is the same whichever API the model speaks, so the platform's overhead per format
differs only here: shaping the request, reading the stream, mapping it onto the seam.

- "adapter": the platform's own work per call: the request body shaped, then the stream the
  dev model sent (recorded once per format) read into frames and mapped onto the seam.
- "call": `ModelClient.stream()` to its end against the dev model on loopback (includes the
  dev model's own time, which is not the platform's, and the loopback HTTP).

Formats are interleaved call by call so that machine noise falls on all of them alike; p50,
p99 and each format's p50 difference to Chat Completions' are printed.

    .venv/bin/python bench/wire_formats.py [--calls 300] [--tokens 20]

`bench/run_roundtrip.py --api FORMAT` measures the whole round trip against `make run`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx

from devtools.devmodel import DevModel
from devtools.measure import percentile
from services.rpc.hosted_models import API_KINDS, HostedModelConfig
from services.worker.model import ModelRequest, ModelSettings, UserMessage
from services.worker.providers import chat_completions, messages, open_model, responses
from services.worker.providers.sse import frames

ADAPTERS = {"chat_completions": chat_completions, "responses": responses, "messages": messages}


async def _lines(body: list[str]) -> AsyncIterator[str]:
    for line in body:
        yield line


async def adapter_timings(
    calls: int, recorded: dict[str, list[str]], request: ModelRequest
) -> dict[str, list[float]]:
    """Time shaping the request and parsing the recorded stream, per format."""
    timings: dict[str, list[float]] = {api: [] for api in recorded}
    for n in range(calls + 10):
        for api, body in recorded.items():
            module = ADAPTERS[api]
            started = time.perf_counter()
            json.dumps(module.request_body(request))
            async for _ in module._parse_stream(frames(_lines(body))):
                pass
            if n >= 10:
                timings[api].append(time.perf_counter() - started)
    return timings


async def measure(calls: int, tokens: int) -> dict[str, dict[str, list[float]]]:
    """Time `calls` model calls per format; return the seconds of each, by kind and format."""
    devmodel = DevModel()
    base_url = await devmodel.start()
    timings: dict[str, list[float]] = {api: [] for api in API_KINDS}
    recorded: dict[str, list[str]] = {}
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            models = {
                api: open_model(
                    HostedModelConfig(id=api, api=api, base_url=base_url, model="dev-model"), http
                )
                for api in API_KINDS
            }
            request = ModelRequest(
                "You are a benchmark.",
                (UserMessage(f"[[tokens={tokens}]] [[reasoning=0]] bench"),),
                ModelSettings("dev-model"),
            )
            for api in API_KINDS:
                module = ADAPTERS[api]
                headers = {"anthropic-version": "2023-06-01"} if api == "messages" else {}
                path = {"chat_completions": "chat/completions"}.get(api, api)
                response = await http.post(
                    f"{base_url}/{path}", json=module.request_body(request), headers=headers
                )
                recorded[api] = response.text.splitlines()
            for n in range(calls + 10):
                for api, model in models.items():
                    started = time.perf_counter()
                    async for _ in model.client.stream(request):
                        pass
                    if n >= 10:  # the first ten of each warm up connections and caches
                        timings[api].append(time.perf_counter() - started)
    finally:
        await devmodel.stop()
    return {"adapter": await adapter_timings(calls, recorded, request), "call": timings}


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300, help="measured calls per format")
    parser.add_argument("--tokens", type=int, default=20, help="content tokens per reply")
    args = parser.parse_args()
    measured = asyncio.run(measure(args.calls, args.tokens))
    print(f"one streamed model call of {args.tokens} tokens, {args.calls} calls per format:")
    for kind, timings in measured.items():
        base = percentile(timings["chat_completions"], 50)
        for api, values in timings.items():
            p50, p99 = percentile(values, 50), percentile(values, 99)
            print(
                f"  {kind:<8} {api:<17} p50 {p50 * 1000:7.3f} ms   p99 {p99 * 1000:7.3f} ms   "
                f"p50 vs chat_completions {(p50 - base) * 1000:+.3f} ms"
            )


if __name__ == "__main__":
    main()
