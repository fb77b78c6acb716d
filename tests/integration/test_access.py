"""Authentication and workspace isolation on the public API, service identity on dispatch."""

from __future__ import annotations

import secrets
import uuid

import asyncpg
import grpc
import pytest
from agentplatform.dispatch.v1 import dispatch_service_pb2, dispatch_service_pb2_grpc
from agentplatform.v1 import run_service_pb2, session_service_pb2

from services.rpc.db import role_dsn
from tests.harness import Stack, expect_error
from tests.integration.helpers import new_run, new_session


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-key",
        "Bearer ap_000000000000_" + "x" * 43,
        "Bearer ap_short_secret",
    ],
)
async def test_calls_without_a_valid_key_are_unauthenticated(
    stack: Stack, authorization: str | None
) -> None:
    """Missing, malformed and unknown keys are refused with UNAUTHENTICATED."""
    metadata = () if authorization is None else (("authorization", authorization),)
    await expect_error(
        stack.owner.sessions.ListSessions(
            session_service_pb2.ListSessionsRequest(), metadata=metadata, timeout=10
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )
    await expect_error(
        stack.owner.runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=f"sessions/{uuid.uuid4()}/runs/x"),
            metadata=metadata,
            timeout=10,
        ).read(),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


async def test_a_key_with_the_right_prefix_but_wrong_secret_is_refused(stack: Stack) -> None:
    """Only the hash of the whole secret admits a caller, not the public prefix."""
    prefix = stack.owner.api_key[: len("ap_") + 12]
    forged = f"{prefix}_{secrets.token_urlsafe(32)}"
    await expect_error(
        stack.owner.sessions.ListSessions(
            session_service_pb2.ListSessionsRequest(),
            metadata=(("authorization", f"Bearer {forged}"),),
            timeout=10,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


async def test_api_keys_are_stored_only_as_hashes(stack: Stack) -> None:
    """The database never holds the key's secret part."""
    conn = await asyncpg.connect(role_dsn(stack.admin_dsn, "ap_control_plane"))
    try:
        rows = await conn.fetch("SELECT * FROM api_keys")
    finally:
        await conn.close()
    secret = stack.owner.api_key.rsplit("_", 1)[1]
    for row in rows:
        for value in row.values():
            assert secret not in str(value)
            assert stack.owner.api_key not in str(value)


async def test_another_workspaces_resources_read_as_not_found(stack: Stack) -> None:
    """Sessions and runs of workspace A do not exist for a key of workspace B."""
    owner = stack.owner
    session = await new_session(owner)
    run = await new_run(owner, session.name, "private [[tokens=1]]")
    await owner.stream(run.name)
    stranger = await stack.new_workspace("Stranger")

    async def not_found(call: object) -> None:
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "NOT_FOUND")  # type: ignore[arg-type]

    auth = stranger.auth
    await not_found(
        stranger.sessions.GetSession(
            session_service_pb2.GetSessionRequest(name=session.name), metadata=auth, timeout=10
        )
    )
    await not_found(
        stranger.sessions.ListMessages(
            session_service_pb2.ListMessagesRequest(parent=session.name), metadata=auth, timeout=10
        )
    )
    await not_found(new_run(stranger, session.name, "intrude"))
    await not_found(
        stranger.runs.GetRun(
            run_service_pb2.GetRunRequest(name=run.name), metadata=auth, timeout=10
        )
    )
    await not_found(
        stranger.runs.ListRuns(
            run_service_pb2.ListRunsRequest(parent=session.name), metadata=auth, timeout=10
        )
    )
    await not_found(
        stranger.runs.ListRunEvents(
            run_service_pb2.ListRunEventsRequest(parent=run.name), metadata=auth, timeout=10
        )
    )
    await not_found(
        stranger.runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=auth, timeout=10
        ).read()
    )
    listed = await stranger.sessions.ListSessions(
        session_service_pb2.ListSessionsRequest(), metadata=auth, timeout=10
    )
    assert session.name not in [s.name for s in listed.sessions]


async def test_dispatch_refuses_api_keys_and_wrong_tokens(stack: Stack) -> None:
    """The internal dispatch API admits only the internal token, never a user's API key."""
    channel = grpc.aio.insecure_channel(stack.address)
    try:
        dispatch = dispatch_service_pb2_grpc.DispatchServiceStub(channel)
        for metadata in [
            stack.owner.auth,
            (("x-ap-internal-token", "wrong"),),
            (),
        ]:
            await expect_error(
                dispatch.ClaimRun(
                    dispatch_service_pb2.ClaimRunRequest(worker_id="intruder"),
                    metadata=metadata,
                    timeout=10,
                ),
                grpc.StatusCode.UNAUTHENTICATED,
                "SERVICE_IDENTITY_REQUIRED",
            )
    finally:
        await channel.close(None)


async def test_the_internal_token_does_not_open_the_public_api(stack: Stack) -> None:
    """A worker's token is not an API key."""
    await expect_error(
        stack.owner.sessions.ListSessions(
            session_service_pb2.ListSessionsRequest(),
            metadata=(("x-ap-internal-token", stack.internal_token),),
            timeout=10,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


@pytest.mark.parametrize(
    ("role", "foreign_schema"),
    [
        ("ap_control_plane", "vault"),
        ("ap_control_plane", "gateway"),
        ("ap_vault", "control_plane"),
        ("ap_vault", "gateway"),
        ("ap_gateway", "control_plane"),
        ("ap_gateway", "vault"),
    ],
)
async def test_service_roles_cannot_touch_other_schemas(
    stack: Stack, role: str, foreign_schema: str
) -> None:
    """Each service's database role is refused on every other service's schema."""
    table = {"control_plane": "runs", "vault": "master_key_versions", "gateway": "tools"}[
        foreign_schema
    ]
    conn = await asyncpg.connect(role_dsn(stack.admin_dsn, role))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(f"SELECT * FROM {foreign_schema}.{table}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"CREATE TABLE {foreign_schema}.intruder (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE public.intruder (id int)")
        # Its own schema works.
        own = role.removeprefix("ap_")
        assert await conn.fetchval(f"SELECT count(*) FROM {own}.schema_migrations") >= 1
    finally:
        await conn.close()
