"""Small helpers shared by the integration tests."""

from __future__ import annotations

from agentplatform.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    session_pb2,
    session_service_pb2,
    workspace_pb2,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)

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


async def new_key(owner: Client, user: str = "") -> api_key_service_pb2.CreateApiKeyResponse:
    """Have the owner make a key (for `user`, default themselves)."""
    return await api_key_service_pb2_grpc.ApiKeyServiceStub(owner.channel).CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(
            api_key=api_key_pb2.ApiKey(display_name="streams", user=user)
        ),
        metadata=owner.auth,
        timeout=10,
    )


async def new_member(owner: Client, role: str) -> tuple[str, str]:
    """Add a member; return their member name and a key for them."""
    member = await workspace_service_pb2_grpc.WorkspaceServiceStub(owner.channel).CreateMember(
        workspace_service_pb2.CreateMemberRequest(
            member=workspace_pb2.Member(role=role, display_name=f"{role} streamer")
        ),
        metadata=owner.auth,
        timeout=10,
    )
    return member.name, (await new_key(owner, member.user)).key
