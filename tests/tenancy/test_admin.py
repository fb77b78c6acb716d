"""API keys, members and workspaces through the public API; the run rate limit."""

from __future__ import annotations

import hashlib
import secrets

import asyncpg
import grpc
from agentplatform.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    invitation_pb2,
    invitation_service_pb2,
    invitation_service_pb2_grpc,
    profile_service_pb2,
    session_service_pb2,
    workspace_pb2,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.rpc.db import role_dsn
from tests.harness import Client, Stack, expect_error, start_stack
from tests.integration.helpers import new_run, new_session


def _keys(client: Client) -> api_key_service_pb2_grpc.ApiKeyServiceAsyncStub:
    return api_key_service_pb2_grpc.ApiKeyServiceStub(client.channel)


def _workspaces(client: Client) -> workspace_service_pb2_grpc.WorkspaceServiceAsyncStub:
    return workspace_service_pb2_grpc.WorkspaceServiceStub(client.channel)


async def _create_key(client: Client, name: str, user: str = "") -> str:
    made = await _keys(client).CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(
            api_key=api_key_pb2.ApiKey(display_name=name, user=user)
        ),
        metadata=client.auth,
        timeout=10,
    )
    assert made.key.startswith(made.api_key.prefix + "_")
    return made.key


async def _add_member(client: Client, role: str) -> workspace_pb2.Member:
    return await _workspaces(client).CreateMember(
        workspace_service_pb2.CreateMemberRequest(
            member=workspace_pb2.Member(role=role, display_name=f"New {role}")
        ),
        metadata=client.auth,
        timeout=10,
    )


async def test_a_key_is_shown_once_and_stored_as_a_hash(stack: Stack) -> None:
    """CreateApiKey returns the key; the table holds only its prefix and hash; List omits it."""
    owner = await stack.new_workspace("Keys")
    key = await _create_key(owner, "laptop")
    listed = await _keys(owner).ListApiKeys(
        api_key_service_pb2.ListApiKeysRequest(), metadata=owner.auth, timeout=10
    )
    mine = [k for k in listed.api_keys if key.startswith(k.prefix + "_")]
    assert [(k.display_name, k.role) for k in mine] == [("laptop", "owner")]
    assert key not in str(listed)
    conn = await asyncpg.connect(role_dsn(stack.admin_dsn, "ap_control_plane"))
    try:
        rows = await conn.fetch("SELECT prefix, secret_sha256 FROM api_keys")
    finally:
        await conn.close()
    prefix, _, secret = key.removeprefix("ap_").partition("_")
    assert (prefix, hashlib.sha256(secret.encode()).digest()) in {tuple(r) for r in rows}
    assert all(secret.encode() not in bytes(r["secret_sha256"]) for r in rows)


async def test_a_new_key_works_and_records_its_last_use(stack: Stack) -> None:
    """A key made through the API authenticates as its user; listings show it was used."""
    owner = await stack.new_workspace("Last use")
    client = stack.client(await _create_key(owner, "ci"))
    profile = await client.profiles.GetProfile(
        profile_service_pb2.GetProfileRequest(name="users/me/profile"),
        metadata=client.auth,
        timeout=10,
    )
    assert profile.role == "owner"
    listed = await _keys(owner).ListApiKeys(
        api_key_service_pb2.ListApiKeysRequest(), metadata=owner.auth, timeout=10
    )
    ci = next(k for k in listed.api_keys if k.display_name == "ci")
    assert ci.HasField("last_use_time")


async def test_a_revoked_key_is_refused_by_every_replica_at_once(stack: Stack) -> None:
    """After DeleteApiKey, the next call on this and on another replica is UNAUTHENTICATED."""
    owner = await stack.new_workspace("Revoke")
    key = await _create_key(owner, "doomed")
    listed = await _keys(owner).ListApiKeys(
        api_key_service_pb2.ListApiKeysRequest(), metadata=owner.auth, timeout=10
    )
    doomed = next(k for k in listed.api_keys if k.display_name == "doomed")
    here = stack.client(key)
    async with start_stack(
        stack.admin_dsn, internal_token=secrets.token_urlsafe(16), with_worker=False
    ) as other:
        there = other.client(key)
        for client in (here, there):
            await new_session(client)
        await _keys(owner).DeleteApiKey(
            api_key_service_pb2.DeleteApiKeyRequest(name=doomed.name), metadata=owner.auth
        )
        for client in (here, there):
            await expect_error(
                new_session(client), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
            )


async def test_a_user_of_two_workspaces_acts_in_the_workspace_of_each_key(stack: Stack) -> None:
    """One user in two workspaces (by invitation); each key acts in its own workspace only."""
    first = await stack.new_workspace("First")
    second = await stack.new_workspace("Second")
    invitations = invitation_service_pb2_grpc.InvitationServiceStub(first.channel)
    made = await invitation_service_pb2_grpc.InvitationServiceStub(second.channel).CreateInvitation(
        invitation_service_pb2.CreateInvitationRequest(
            invitation=invitation_pb2.Invitation(role="viewer")
        ),
        metadata=second.auth,
    )
    joined = await invitations.AcceptInvitation(
        invitation_service_pb2.AcceptInvitationRequest(invitation_token=made.token),
        metadata=first.auth,
    )
    viewer_key = stack.client(joined.key)
    listed = await _workspaces(viewer_key).ListWorkspaces(
        workspace_service_pb2.ListWorkspacesRequest(), metadata=viewer_key.auth
    )
    assert {(w.name, w.role) for w in listed.workspaces} == {
        (first.workspace, "owner"),
        (second.workspace, "viewer"),
    }
    session = await new_session(first)
    await expect_error(
        viewer_key.sessions.GetSession(
            session_service_pb2.GetSessionRequest(name=session.name),
            metadata=viewer_key.auth,
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    await expect_error(
        new_session(viewer_key), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
    )


async def test_admins_manage_members_below_owner_only(stack: Stack) -> None:
    """An admin adds, changes and removes members and admins, but never touches an owner."""
    owner = await stack.new_workspace("Admins")
    admin_member = await _add_member(owner, "admin")
    admin = stack.client(await _create_key(owner, "admin", user=admin_member.user))
    member = await _add_member(admin, "member")
    updated = await _workspaces(admin).UpdateMember(
        workspace_service_pb2.UpdateMemberRequest(
            member=workspace_pb2.Member(name=member.name, role="admin"),
            update_mask=field_mask_pb2.FieldMask(paths=["role"]),
        ),
        metadata=admin.auth,
    )
    assert updated.role == "admin"
    await expect_error(
        _add_member(admin, "owner"), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
    )
    members = await _workspaces(admin).ListMembers(
        workspace_service_pb2.ListMembersRequest(), metadata=admin.auth
    )
    the_owner = next(m for m in members.members if m.role == "owner")
    await expect_error(
        _workspaces(admin).DeleteMember(
            workspace_service_pb2.DeleteMemberRequest(name=the_owner.name), metadata=admin.auth
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    await _workspaces(admin).DeleteMember(
        workspace_service_pb2.DeleteMemberRequest(name=member.name), metadata=admin.auth
    )


async def test_the_last_owner_cannot_leave_and_removal_revokes_keys(stack: Stack) -> None:
    """The last owner is kept; a removed member's keys stop working at once."""
    owner = await stack.new_workspace("Owners")
    members = await _workspaces(owner).ListMembers(
        workspace_service_pb2.ListMembersRequest(), metadata=owner.auth
    )
    (me,) = members.members
    await expect_error(
        _workspaces(owner).DeleteMember(
            workspace_service_pb2.DeleteMemberRequest(name=me.name), metadata=owner.auth
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "LAST_OWNER",
    )
    await expect_error(
        _workspaces(owner).UpdateMember(
            workspace_service_pb2.UpdateMemberRequest(
                member=workspace_pb2.Member(name=me.name, role="admin")
            ),
            metadata=owner.auth,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "LAST_OWNER",
    )
    leaving = await _add_member(owner, "member")
    their_key = stack.client(await _create_key(owner, "leaving", user=leaving.user))
    await new_session(their_key)
    await _workspaces(owner).DeleteMember(
        workspace_service_pb2.DeleteMemberRequest(name=leaving.name), metadata=owner.auth
    )
    await expect_error(new_session(their_key), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


async def test_run_creation_is_rate_limited_per_key(database: str) -> None:
    """Past the burst, CreateRun is RESOURCE_EXHAUSTED with RetryInfo; other keys go on."""
    async with start_stack(
        database,
        internal_token=secrets.token_urlsafe(16),
        with_worker=False,
        run_rate_per_minute=6,
        run_rate_burst=2,
    ) as stack:
        other = await stack.new_workspace("Unthrottled")
        for _ in range(2):
            await new_run(stack.owner, (await new_session(stack.owner)).name, "hi")
        session = await new_session(stack.owner)
        try:
            await new_run(stack.owner, session.name, "hi")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(err)  # type: ignore[arg-type]
            assert status is not None
            retry, info = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
            assert any(d.Unpack(retry) for d in status.details)
            assert any(d.Unpack(info) for d in status.details)
            assert info.reason == "RATE_LIMITED" and info.metadata["limit"] == "6"
            assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 10
        else:
            raise AssertionError("the third run in a burst of two was accepted")
        await new_run(other, (await new_session(other)).name, "hi")
