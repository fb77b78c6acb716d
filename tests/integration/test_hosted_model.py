"""HOSTED_MODEL_UNAVAILABLE: on session creation and on run execution."""

from __future__ import annotations

import json
import secrets

import grpc
from agentplatform.v1 import run_pb2, session_pb2, session_service_pb2

from devtools.processes import free_port
from tests.harness import Stack, expect_error, start_stack
from tests.integration.helpers import get_run, new_run, new_session


async def test_session_creation_fails_without_a_hosted_model(database: str) -> None:
    """A control plane without a model refuses CreateSession, telling the operator what to do."""
    async with start_stack(
        database, internal_token=secrets.token_urlsafe(16), control_plane_model=False
    ) as stack:
        info = await expect_error(
            stack.owner.sessions.CreateSession(
                session_service_pb2.CreateSessionRequest(session=session_pb2.Session()),
                metadata=stack.owner.auth,
                timeout=10,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "HOSTED_MODEL_UNAVAILABLE",
        )
        assert info.domain == "agentplatform.dev"


async def test_run_fails_when_the_worker_has_no_hosted_model(database: str) -> None:
    """A worker without a model ends the run as run.failed / HOSTED_MODEL_UNAVAILABLE."""
    async with start_stack(
        database, internal_token=secrets.token_urlsafe(16), worker_model=False
    ) as stack:
        client = stack.owner
        session = await new_session(client)
        run = await new_run(client, session.name, "anyone there?")
        events = await client.stream(run.name)
        assert [e.type for e in events] == ["run.queued", "run.failed"]
        failed = events[-1].run_failed
        assert failed.reason == "HOSTED_MODEL_UNAVAILABLE"
        assert "AP_MODEL_BASE_URL" in failed.message
        assert "secrets" in failed.message
        assert (await get_run(client, run.name)).state == run_pb2.Run.FAILED
        assert stack.devmodel.requests == []


TWO_MODELS = json.dumps(
    [
        {"id": "chat", "base_url": "{base_url}", "model": "ap-dev-model"},
        {"id": "claude", "api": "messages", "base_url": "{base_url}", "model": "dev-claude"},
    ]
)


async def test_a_session_picks_an_offered_model_and_its_runs_use_it(database: str) -> None:
    """session.model chooses among AP_MODELS; unset gets the default; runs speak its API."""
    async with start_stack(
        database,
        internal_token=secrets.token_urlsafe(16),
        model_settings={"models": TWO_MODELS, "default": "chat"},
    ) as stack:
        client = stack.owner
        default = await new_session(client)
        assert default.model == "chat"
        chosen = await client.sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(session=session_pb2.Session(model="claude")),
            metadata=client.auth,
            timeout=10,
        )
        assert chosen.model == "claude"
        run = await new_run(client, chosen.name, "hello")
        events = await client.stream(run.name)
        assert events[1].run_started.model == "claude"
        assert events[-1].type == "run.completed"
        body = stack.devmodel.requests[-1]
        assert body["model"] == "dev-claude" and "max_tokens" in body  # Anthropic Messages


async def test_a_session_cannot_pick_a_model_that_is_not_offered(stack: Stack) -> None:
    """A model the platform does not offer is refused, naming the field and the offer."""
    info = await expect_error(
        stack.owner.sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(
                session=session_pb2.Session(model="gpt-9-turbo")
            ),
            metadata=stack.owner.auth,
            timeout=10,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOSTED_MODEL_UNAVAILABLE",
    )
    assert info.metadata["field"] == "session.model"


async def test_a_long_transcript_is_compacted_to_the_context_window(database: str) -> None:
    """Past the window the oldest whole turns are left out, said by transcript.compacted."""
    async with start_stack(
        database,
        internal_token=secrets.token_urlsafe(16),
        model_settings={"context_window": 500, "max_output_tokens": 100},
    ) as stack:
        client = stack.owner
        session = await new_session(client)
        for n in range(3):
            run = await new_run(client, session.name, f"turn {n} " + "words " * 60)
            assert (await client.stream(run.name))[-1].type == "run.completed"
        run = await new_run(client, session.name, "and now?")
        events = await client.stream(run.name)
        assert events[-1].type == "run.completed"
        (compacted,) = [e.transcript_compacted for e in events if e.type == "transcript.compacted"]
        assert compacted.omitted_messages > 0 and compacted.omitted_messages % 2 == 0
        assert compacted.context_window == 500 and 0 < compacted.estimated_tokens <= 400
        sent = stack.devmodel.requests[-1]["messages"]
        assert len(sent) == 1 + compacted.kept_messages  # the system prompt, then the kept
        assert sent[1]["role"] == "user" and sent[-1]["content"] == "and now?"
        assert 6 - compacted.omitted_messages + 1 == compacted.kept_messages
        listed = await client.sessions.ListMessages(
            session_service_pb2.ListMessagesRequest(parent=session.name),
            metadata=client.auth,
            timeout=10,
        )
        assert len(listed.messages) == 8  # the stored transcript keeps everything


async def test_an_unreachable_model_is_retried_then_fails_saying_so(database: str) -> None:
    """No connection: retried (model.retry without a status), then MODEL_ERROR."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with start_stack(
        database,
        internal_token=secrets.token_urlsafe(16),
        model_settings={"base_url": dead, "max_retries": 1},
    ) as stack:
        client = stack.owner
        session = await new_session(client)
        run = await new_run(client, session.name, "anyone there?")
        events = await client.stream(run.name)
        (retry,) = [e.model_retry for e in events if e.type == "model.retry"]
        assert retry.status_code == 0 and "could not be reached" in retry.message
        failed = events[-1].run_failed
        assert failed.reason == "MODEL_ERROR" and "could not be reached" in failed.message
