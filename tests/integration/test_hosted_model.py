"""HOSTED_MODEL_UNAVAILABLE: on session creation and on run execution."""

from __future__ import annotations

import secrets

import grpc
from agentplatform.v1 import run_pb2, session_pb2, session_service_pb2

from tests.harness import expect_error, start_stack
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
