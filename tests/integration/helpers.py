"""Small helpers shared by the integration tests."""

from __future__ import annotations

from agentplatform.v1 import run_pb2, run_service_pb2, session_pb2, session_service_pb2

from tests.harness import Client


async def new_session(client: Client, title: str = "t") -> session_pb2.Session:
    """Create a session."""
    return await client.sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title=title)),
        metadata=client.auth,
        timeout=10,
    )


async def new_run(client: Client, session: str, text: str, request_id: str = "") -> run_pb2.Run:
    """Create a run."""
    return await client.runs.CreateRun(
        run_service_pb2.CreateRunRequest(parent=session, input_text=text, request_id=request_id),
        metadata=client.auth,
        timeout=10,
    )


async def get_run(client: Client, name: str) -> run_pb2.Run:
    """Get a run."""
    return await client.runs.GetRun(
        run_service_pb2.GetRunRequest(name=name), metadata=client.auth, timeout=10
    )
