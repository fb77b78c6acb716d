"""/metrics: every listed metric is served, and the values move as runs go through.

The in-process stack shares one registry (one per process, as in production), scraped here
through the same MetricsServer each service process runs; tests/e2e/test_stack.py scrapes
the four real processes.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from agentplatform.v1 import run_service_pb2
from prometheus_client.parser import text_string_to_metric_families

# The registry holds the metrics of whatever the process imported: here, every service's.
import services.control_plane.metrics
import services.vault.metrics
import services.worker.metrics  # noqa: F401
from services.rpc.metrics import MetricsServer
from tests.harness import Stack, start_stack
from tests.integration.helpers import new_run, new_session

# Name → type of every metric docs/operations.md describes.
LISTED = {
    "ap_runs_created": "counter",
    "ap_runs_finished": "counter",
    "ap_run_duration_seconds": "histogram",
    "ap_run_time_to_first_event_seconds": "histogram",
    "ap_run_queue_depth": "gauge",
    "ap_run_claim_latency_seconds": "histogram",
    "ap_run_events_appended": "counter",
    "ap_stream_subscribers": "gauge",
    "ap_lease_rescues": "counter",
    "ap_tool_calls": "counter",
    "ap_hosted_model_up": "gauge",
    "ap_vault_resolves": "counter",
    "ap_grpc_requests": "counter",
    "ap_grpc_request_duration_seconds": "histogram",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def metrics_url() -> AsyncIterator[str]:
    """Serve this process's registry on a free port."""
    server = MetricsServer("127.0.0.1", 0)
    await server.start()
    yield server.url
    await server.stop()


async def scrape(url: str) -> tuple[dict[str, str], Samples]:
    """Return the metric families (name → type) and every sample of one scrape."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        reply = await http.get(url)
    reply.raise_for_status()
    assert reply.headers["content-type"].startswith("text/plain; version=")
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value, 0 when it is absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def fresh_stack(database: str) -> AsyncIterator[Stack]:
    """Run a stack of its own, so the queue-depth gauge reads only this test's database."""
    async with start_stack(database, internal_token=secrets.token_urlsafe(24)) as running:
        yield running


async def test_every_listed_metric_is_served_with_its_type(metrics_url: str) -> None:
    """The names and types the operations page documents are all in a scrape."""
    types, _ = await scrape(metrics_url)
    assert {name: types.get(name) for name in LISTED} == LISTED


async def test_a_completed_run_moves_the_run_event_and_rpc_metrics(
    fresh_stack: Stack, metrics_url: str
) -> None:
    """Create → claim → first output → finish each leave their mark."""
    _, before = await scrape(metrics_url)
    client = fresh_stack.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "hello [[tokens=4]]")
    events = await client.stream(run.name)
    assert events[-1].type == "run.completed"
    _, after = await scrape(metrics_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ap_runs_created_total") == 1
    assert moved("ap_runs_finished_total", status="completed") == 1
    assert moved("ap_run_duration_seconds_count", status="completed") == 1
    assert moved("ap_run_claim_latency_seconds_count") == 1
    assert moved("ap_run_time_to_first_event_seconds_count") == 1
    assert moved("ap_run_events_appended_total") == len(events)
    create_run = "/agentplatform.v1.RunService/CreateRun"
    assert moved("ap_grpc_requests_total", method=create_run, code="OK") == 1
    assert moved("ap_grpc_request_duration_seconds_count", method=create_run) == 1
    finish = "/agentplatform.dispatch.v1.DispatchService/FinishRun"
    assert moved("ap_grpc_requests_total", method=finish, code="OK") == 1


async def test_refused_calls_are_counted_by_status_code(
    fresh_stack: Stack, metrics_url: str
) -> None:
    """A call the server refuses is counted under its status code."""
    _, before = await scrape(metrics_url)
    with contextlib.suppress(Exception):
        await new_run(fresh_stack.owner, "sessions/not-a-uuid", "hello")
    _, after = await scrape(metrics_url)
    labels = {"method": "/agentplatform.v1.RunService/CreateRun", "code": "INVALID_ARGUMENT"}
    assert (
        value(after, "ap_grpc_requests_total", **labels)
        - value(before, "ap_grpc_requests_total", **labels)
        == 1
    )


async def test_queue_depth_counts_queued_runs_at_scrape_time(
    database: str, metrics_url: str
) -> None:
    """Without a worker, each created run waits in the queue and the gauge says so."""
    async with start_stack(
        database, internal_token=secrets.token_urlsafe(24), with_worker=False
    ) as stack:
        _, samples = await scrape(metrics_url)
        assert value(samples, "ap_run_queue_depth") == 0
        for i in range(2):
            session = await new_session(stack.owner, f"queued {i}")
            await new_run(stack.owner, session.name, "wait for a worker")
        _, samples = await scrape(metrics_url)
        assert value(samples, "ap_run_queue_depth") == 2


async def test_stream_subscribers_count_open_streams(fresh_stack: Stack, metrics_url: str) -> None:
    """The gauge rises while a stream is open and falls back when it ends."""
    _, before = await scrape(metrics_url)
    client = fresh_stack.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "[[tokens=20]] [[delay_ms=10]]")
    call = client.runs.StreamRunEvents(
        run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=client.auth, timeout=30
    )
    responses = aiter(call)
    await anext(responses)  # the server has subscribed once it sends anything
    _, during = await scrape(metrics_url)
    rest = [response.event async for response in responses]
    assert rest[-1].type == "run.completed"
    _, after = await scrape(metrics_url)
    assert value(during, "ap_stream_subscribers") == value(before, "ap_stream_subscribers") + 1
    assert value(after, "ap_stream_subscribers") == value(before, "ap_stream_subscribers")
