"""Open streams end when their caller loses the right to them, on every replica, at once.

Revoking a key ends its streams with UNAUTHENTICATED; removing a member, or lowering their
role below what a stream takes, ends theirs with PERMISSION_DENIED. The second replica polls
every 30 s here, so only the principal notification can end its streams in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
from agentplatform.v1 import (
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
    workspace_pb2,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.control_plane import policy
from services.control_plane.app import ControlPlane
from services.control_plane.auth import Principal
from tests.harness import Client, Stack, start_control_plane
from tests.integration.helpers import new_key, new_member, new_run, new_session

# A revoked principal's streams end within this long of the change's commit.
PROMPTLY = 1.0


@dataclass
class Follower:
    """A stream read in the background: the events it delivered and how it ended."""

    call: grpc.aio.UnaryStreamCall  # type: ignore[type-arg]
    events: list[run_pb2.RunEvent] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> Follower:
        """Start reading."""
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.events.append(response.event)
                self._arrived.set()
        except grpc.aio.AioRpcError as err:
            self.error = err

    async def until(self, condition: Callable[[list[run_pb2.RunEvent]], bool]) -> None:
        """Wait (10 s at most) until the delivered events satisfy `condition`."""
        async with asyncio.timeout(10):
            while not condition(self.events):
                assert self.task is not None and not self.task.done(), self.error
                self._arrived.clear()
                await self._arrived.wait()

    async def ended(self) -> grpc.aio.AioRpcError:
        """Wait PROMPTLY at most for the stream to end with an error; return it."""
        assert self.task is not None
        async with asyncio.timeout(PROMPTLY):
            await asyncio.shield(self.task)
        assert self.error is not None, "the stream ended without an error"
        return self.error


def reason(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Return an error's code, ErrorInfo reason and metadata."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return err.code(), info.reason, dict(info.metadata)
    raise AssertionError("no ErrorInfo")


def completed(run: str) -> Callable[[list[run_pb2.RunEvent]], bool]:
    """Return the condition: the run's terminal event was delivered."""
    return lambda events: any(e.name.startswith(run) and e.type == "run.completed" for e in events)


@pytest.fixture
async def replica(stack: Stack) -> AsyncIterator[ControlPlane]:
    """Run a second control plane on the stack's database; its poller barely ever runs."""
    other = await start_control_plane(
        stack.admin_dsn, stack.internal_token, stack.control_plane.model, poll_interval_seconds=30
    )
    try:
        await asyncio.wait_for(other.listener.connected.wait(), 10)
        yield other
    finally:
        await other.stop()


@contextlib.asynccontextmanager
async def channel_to(address: str) -> AsyncIterator[grpc.aio.Channel]:
    """Open a channel to a replica."""
    channel = grpc.aio.insecure_channel(address)
    try:
        yield channel
    finally:
        await channel.close(None)


def session_stream(channel: grpc.aio.Channel, key: str, session: str) -> Follower:
    """Follow a session's events with a key."""
    call = run_service_pb2_grpc.RunServiceStub(channel).StreamSessionEvents(
        run_service_pb2.StreamSessionEventsRequest(name=session),
        metadata=(("authorization", f"Bearer {key}"),),
        timeout=60,
    )
    return Follower(call).start()


def run_stream(channel: grpc.aio.Channel, key: str, run: str) -> Follower:
    """Follow a run's events with a key."""
    call = run_service_pb2_grpc.RunServiceStub(channel).StreamRunEvents(
        run_service_pb2.StreamRunEventsRequest(name=run),
        metadata=(("authorization", f"Bearer {key}"),),
        timeout=60,
    )
    return Follower(call).start()


async def set_role(owner: Client, member: str, role: str) -> None:
    """Change a member's role."""
    await workspace_service_pb2_grpc.WorkspaceServiceStub(owner.channel).UpdateMember(
        workspace_service_pb2.UpdateMemberRequest(
            member=workspace_pb2.Member(name=member, role=role),
            update_mask=field_mask_pb2.FieldMask(paths=["role"]),
        ),
        metadata=owner.auth,
        timeout=10,
    )


async def test_revoking_a_key_ends_its_session_streams_on_every_replica(
    stack: Stack, replica: ControlPlane
) -> None:
    """Both replicas end the key's streams with UNAUTHENTICATED; another key's stream goes on."""
    owner = stack.owner
    made = await new_key(owner)
    session = (await new_session(owner)).name
    async with channel_to(replica.address) as remote:
        doomed = [
            session_stream(owner.channel, made.key, session),
            session_stream(remote, made.key, session),
        ]
        bystander = session_stream(remote, owner.api_key, session)
        first = (await new_run(owner, session, "before [[tokens=2]]")).name
        for follower in (*doomed, bystander):
            await follower.until(completed(first))
        await api_key_service_pb2_grpc.ApiKeyServiceStub(owner.channel).DeleteApiKey(
            api_key_service_pb2.DeleteApiKeyRequest(name=made.api_key.name), metadata=owner.auth
        )
        for follower in doomed:
            code, why, _ = reason(await follower.ended())
            assert (code, why) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        second = (await new_run(owner, session, "after [[tokens=2]]")).name
        await bystander.until(completed(second))
        bystander.call.cancel()


async def test_revoking_a_key_ends_a_run_stream_mid_run(
    stack: Stack, replica: ControlPlane
) -> None:
    """A run still streaming stops reaching a revoked key at once; the run itself goes on."""
    owner = stack.owner
    made = await new_key(owner)
    session = (await new_session(owner)).name
    run = (await new_run(owner, session, "long [[tokens=400]] [[delay_ms=10]]")).name
    async with channel_to(replica.address) as remote:
        here, there = run_stream(owner.channel, made.key, run), run_stream(remote, made.key, run)
        for follower in (here, there):
            await follower.until(lambda events: len(events) >= 5)
        await api_key_service_pb2_grpc.ApiKeyServiceStub(owner.channel).DeleteApiKey(
            api_key_service_pb2.DeleteApiKeyRequest(name=made.api_key.name), metadata=owner.auth
        )
        for follower in (here, there):
            code, why, _ = reason(await follower.ended())
            assert (code, why) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
            assert not any(e.type == "run.completed" for e in follower.events)
    assert (await owner.stream(run))[-1].type == "run.completed"


async def test_removing_a_member_ends_their_streams_on_every_replica(
    stack: Stack, replica: ControlPlane
) -> None:
    """DeleteMember ends the member's streams with PERMISSION_DENIED on both replicas."""
    owner = stack.owner
    member, key = await new_member(owner, "member")
    session = (await new_session(owner)).name
    run = (await new_run(owner, session, "long [[tokens=400]] [[delay_ms=10]]")).name
    async with channel_to(replica.address) as remote:
        streams = [session_stream(remote, key, session), run_stream(owner.channel, key, run)]
        for follower in streams:
            await follower.until(lambda events: len(events) >= 3)
        await workspace_service_pb2_grpc.WorkspaceServiceStub(owner.channel).DeleteMember(
            workspace_service_pb2.DeleteMemberRequest(name=member), metadata=owner.auth
        )
        for follower in streams:
            code, why, _ = reason(await follower.ended())
            assert (code, why) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


async def test_lowering_a_role_below_the_streams_need_ends_it(
    stack: Stack, replica: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With streams taking member, a member lowered to viewer is cut off on both replicas."""
    path = "/agentplatform.v1.RunService/StreamSessionEvents"
    monkeypatch.setitem(policy.POLICY, path, "member")
    owner = stack.owner
    member, key = await new_member(owner, "member")
    session = (await new_session(owner)).name
    async with channel_to(replica.address) as remote:
        streams = [
            session_stream(owner.channel, key, session),
            session_stream(remote, key, session),
        ]
        run = (await new_run(owner, session, "hi [[tokens=2]]")).name
        for follower in streams:
            await follower.until(completed(run))
        await set_role(owner, member, "viewer")
        for follower in streams:
            code, why, metadata = reason(await follower.ended())
            assert (code, why) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
            assert metadata == {"role": "viewer", "required_role": "member"}


async def test_a_role_lowered_to_what_the_stream_needs_keeps_it(
    stack: Stack, replica: ControlPlane
) -> None:
    """Viewers may stream: an admin lowered to viewer keeps their streams on both replicas."""
    owner = stack.owner
    member, key = await new_member(owner, "admin")
    session = (await new_session(owner)).name
    async with channel_to(replica.address) as remote:
        streams = [
            session_stream(owner.channel, key, session),
            session_stream(remote, key, session),
        ]
        first = (await new_run(owner, session, "hi [[tokens=2]]")).name
        for follower in streams:
            await follower.until(completed(first))
        heard = [cp.runtime.revocations.heard for cp in (stack.control_plane, replica)]
        await set_role(owner, member, "viewer")
        for cp, before in zip((stack.control_plane, replica), heard, strict=True):
            await asyncio.wait_for(cp.runtime.revocations.wait_heard(after=before), 10)
        second = (await new_run(owner, session, "hi again [[tokens=2]]")).name
        for follower in streams:
            await follower.until(completed(second))
            follower.call.cancel()


async def test_a_change_missed_while_listen_was_down_is_found_on_reconnect(
    stack: Stack, replica: ControlPlane
) -> None:
    """A revocation the replica never heard of ends its streams once its listener reconnects."""
    owner = stack.owner
    made = await new_key(owner)
    session = (await new_session(owner)).name
    admin = await asyncpg.connect(stack.admin_dsn)
    try:
        async with channel_to(replica.address) as remote:
            follower = session_stream(remote, made.key, session)
            run = (await new_run(owner, session, "hi [[tokens=2]]")).name
            await follower.until(completed(run))
            # Revoked behind the control plane's back: no notification is ever sent.
            await admin.execute(
                "UPDATE control_plane.api_keys SET revoke_time = now() WHERE id = $1",
                uuid.UUID(made.api_key.name.removeprefix("apiKeys/")),
            )
            reconnects = replica.listener.reconnects
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'ap-listener' AND datname = current_database()"
            )
            await asyncio.wait_for(replica.listener.wait_reconnected(after=reconnects), 10)
            code, why, _ = reason(await follower.ended())
            assert (code, why) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    finally:
        await admin.close()


async def test_a_revocation_heard_before_a_stream_registers_still_ends_it(stack: Stack) -> None:
    """A change heard after a stream's key lookup but before it registered applies at once."""
    revocations = stack.control_plane.runtime.revocations
    now = asyncio.get_running_loop().time
    workspace_id, user_id = uuid.uuid4(), uuid.uuid4()
    revoked, other = uuid.uuid4(), uuid.uuid4()

    def looked_up(key_id: uuid.UUID, at: float) -> Principal:
        return Principal(workspace_id, user_id, "owner", "x", key_id, authenticated_at=at)

    before = now()
    revocations.hear(f"key:{revoked}")
    with revocations.watch(looked_up(revoked, before), "viewer") as watch:
        assert watch.ended is not None and watch.ended.reason_name == "UNAUTHENTICATED"
    # A lookup that began after the change was heard saw the change itself.
    with revocations.watch(looked_up(revoked, now() + 1.0), "viewer") as watch:
        assert watch.ended is None
    before = now()
    revocations.hear(f"member:{workspace_id}:{user_id}:viewer")
    with revocations.watch(looked_up(other, before), "viewer") as watch:
        assert watch.ended is None  # viewers may stream
    with revocations.watch(looked_up(other, before), "member") as watch:
        assert watch.ended is not None and watch.ended.metadata["role"] == "viewer"


# ── the API-key cache (auth.KeyCache): unary calls see a change at once too ──────────────


async def list_sessions(channel: grpc.aio.Channel, key: str) -> grpc.StatusCode:
    """Make one unary call with a key; return its status code."""
    try:
        await session_service_pb2_grpc.SessionServiceStub(channel).ListSessions(
            session_service_pb2.ListSessionsRequest(),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=10,
        )
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def create_session_with(channel: grpc.aio.Channel, key: str) -> grpc.StatusCode:
    """Create a session with a key; return the status code."""
    try:
        await session_service_pb2_grpc.SessionServiceStub(channel).CreateSession(
            session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="c")),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=10,
        )
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def warm(replicas: list[ControlPlane], channels: list[grpc.aio.Channel], key: str) -> None:
    """Use a key on every replica until each serves it from its cache."""
    for cp, channel in zip(replicas, channels, strict=True):
        hits = cp.runtime.revocations.keys.hits
        assert await list_sessions(channel, key) == grpc.StatusCode.OK
        assert await list_sessions(channel, key) == grpc.StatusCode.OK
        assert cp.runtime.revocations.keys.hits > hits, "the second call was not a cache hit"


async def test_a_cached_key_revoked_on_either_replica_is_refused_at_once_on_both(
    stack: Stack, replica: ControlPlane
) -> None:
    """No waiting: the first call after DeleteApiKey answered is refused on every replica."""
    owner = stack.owner
    replicas = [stack.control_plane, replica]
    async with channel_to(replica.address) as remote:
        channels = [owner.channel, remote]
        for attempt in range(6):
            made = await new_key(owner)
            await warm(replicas, channels, made.key)
            via = channels[attempt % 2]  # revoked through this replica, then the other
            await api_key_service_pb2_grpc.ApiKeyServiceStub(via).DeleteApiKey(
                api_key_service_pb2.DeleteApiKeyRequest(name=made.api_key.name),
                metadata=owner.auth,
                timeout=10,
            )
            for channel in (channels[(attempt + 1) % 2], via):
                assert await list_sessions(channel, made.key) == grpc.StatusCode.UNAUTHENTICATED
        # The owner's own key, cached all along, still works.
        for channel in channels:
            assert await list_sessions(channel, owner.api_key) == grpc.StatusCode.OK


async def test_a_cached_members_lowered_role_and_removal_apply_at_once_on_both(
    stack: Stack, replica: ControlPlane
) -> None:
    """A member lowered to viewer cannot create at once; removed, their key is refused."""
    owner = stack.owner
    replicas = [stack.control_plane, replica]
    async with channel_to(replica.address) as remote:
        channels = [owner.channel, remote]
        member, key = await new_member(owner, "member")
        await warm(replicas, channels, key)
        for channel in channels:
            assert await create_session_with(channel, key) == grpc.StatusCode.OK
        await set_role(owner, member, "viewer")
        for channel in (remote, owner.channel):
            assert await create_session_with(channel, key) == grpc.StatusCode.PERMISSION_DENIED
        await warm(replicas, channels, key)
        await workspace_service_pb2_grpc.WorkspaceServiceStub(remote).DeleteMember(
            workspace_service_pb2.DeleteMemberRequest(name=member),
            metadata=owner.auth,
            timeout=10,
        )
        for channel in (owner.channel, remote):
            assert await list_sessions(channel, key) == grpc.StatusCode.UNAUTHENTICATED


async def test_the_key_cache_starts_empty_when_listen_reconnects(
    stack: Stack, replica: ControlPlane
) -> None:
    """A change no notification reported (made behind the API) is seen after a reconnect."""
    owner = stack.owner
    made = await new_key(owner)
    admin = await asyncpg.connect(stack.admin_dsn)
    try:
        async with channel_to(replica.address) as remote:
            await warm([replica], [remote], made.key)
            await admin.execute(
                "UPDATE control_plane.api_keys SET revoke_time = now() WHERE id = $1",
                uuid.UUID(made.api_key.name.removeprefix("apiKeys/")),
            )
            reconnects = replica.listener.reconnects
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'ap-listener' AND datname = current_database()"
            )
            await asyncio.wait_for(replica.listener.wait_reconnected(after=reconnects), 10)
            assert await list_sessions(remote, made.key) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await admin.close()
