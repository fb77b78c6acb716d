"""Joining a workspace: only by invitation, never by naming a user; what a delegated key can't do.

The defects these guard against: workspace A added workspace B's owner by user id
(CreateMember), learnt from the answer which ids exist, minted a key for them, listed their
workspaces with it and renamed their profile, which B then saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass

import asyncpg
import grpc
from agentplatform.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    invitation_pb2,
    invitation_service_pb2,
    invitation_service_pb2_grpc,
    profile_pb2,
    profile_service_pb2,
    session_service_pb2,
    workspace_pb2,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from google.protobuf import duration_pb2, field_mask_pb2

from services.rpc.db import role_dsn
from services.rpc.errors import reason_of
from tests.harness import Client, Stack, expect_error
from tests.integration.helpers import new_session


@dataclass
class Person:
    """A client and the user behind it."""

    client: Client
    user: str

    @property
    def workspaces(self) -> workspace_service_pb2_grpc.WorkspaceServiceAsyncStub:
        """Return the WorkspaceService stub on the client's channel."""
        return workspace_service_pb2_grpc.WorkspaceServiceStub(self.client.channel)

    @property
    def invitations(self) -> invitation_service_pb2_grpc.InvitationServiceAsyncStub:
        """Return the InvitationService stub on the client's channel."""
        return invitation_service_pb2_grpc.InvitationServiceStub(self.client.channel)

    @property
    def keys(self) -> api_key_service_pb2_grpc.ApiKeyServiceAsyncStub:
        """Return the ApiKeyService stub on the client's channel."""
        return api_key_service_pb2_grpc.ApiKeyServiceStub(self.client.channel)


async def owner_of(stack: Stack, name: str) -> Person:
    """Create a workspace; return its owner, who holds its personal bootstrap key."""
    client = await stack.new_workspace(name)
    me = await client.profiles.GetProfile(
        profile_service_pb2.GetProfileRequest(name="users/me/profile"), metadata=client.auth
    )
    return Person(client, me.name.removesuffix("/profile"))


async def invite(inviter: Person, role: str = "member", **expiration: object) -> str:
    """Create an invitation; return its token."""
    made = await inviter.invitations.CreateInvitation(
        invitation_service_pb2.CreateInvitationRequest(
            invitation=invitation_pb2.Invitation(role=role, **expiration)  # type: ignore[arg-type]
        ),
        metadata=inviter.client.auth,
        timeout=10,
    )
    return made.token


async def accept(person: Person, token: str) -> invitation_service_pb2.AcceptInvitationResponse:
    """Accept an invitation with the person's key."""
    return await person.invitations.AcceptInvitation(
        invitation_service_pb2.AcceptInvitationRequest(invitation_token=token),
        metadata=person.client.auth,
        timeout=10,
    )


async def joined(stack: Stack, host: Person, guest: Person, role: str = "member") -> Person:
    """Have `guest` join `host`'s workspace by invitation; return them with the new key."""
    answer = await accept(guest, await invite(host, role))
    return Person(stack.client(answer.key, answer.workspace.name), guest.user)


async def delegated_key(stack: Stack, owner: Person, user: str) -> Person:
    """Have the owner mint a key for `user` in the owner's workspace (a delegated key)."""
    made = await owner.keys.CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(
            api_key=api_key_pb2.ApiKey(display_name="made by the owner", user=user)
        ),
        metadata=owner.client.auth,
        timeout=10,
    )
    assert not made.api_key.personal
    return Person(stack.client(made.key, owner.client.workspace), user)


async def list_workspaces(person: Person) -> set[tuple[str, str]]:
    """Return (name, role) of every workspace the person's key lists."""
    listed = await person.workspaces.ListWorkspaces(
        workspace_service_pb2.ListWorkspacesRequest(), metadata=person.client.auth
    )
    return {(w.name, w.role) for w in listed.workspaces}


async def display_name(person: Person, member: str) -> str:
    """Return the display name `person`'s workspace shows for a member."""
    got = await person.workspaces.GetMember(
        workspace_service_pb2.GetMemberRequest(name=member.replace("users/", "members/")),
        metadata=person.client.auth,
    )
    return got.display_name


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, str]:
    """Await a call that must fail; return its code, reason and message."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), reason_of(err) or "", err.details() or ""
    raise AssertionError("the call succeeded")


# -- a workspace cannot reach a user it does not share ---------------------------------------


async def test_create_member_cannot_add_another_workspaces_user(stack: Stack) -> None:
    """Naming B's owner in A's CreateMember is refused, and B's owner stays out of A."""
    a, b = await owner_of(stack, "A"), await owner_of(stack, "B")
    await expect_error(
        a.workspaces.CreateMember(
            workspace_service_pb2.CreateMemberRequest(
                member=workspace_pb2.Member(user=b.user, role="admin", display_name="x")
            ),
            metadata=a.client.auth,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    members = await a.workspaces.ListMembers(
        workspace_service_pb2.ListMembersRequest(), metadata=a.client.auth
    )
    assert b.user not in {m.user for m in members.members}
    assert "B user" not in {m.display_name for m in members.members}


async def test_a_foreign_user_reads_exactly_like_an_unknown_one(stack: Stack) -> None:
    """CreateMember and CreateApiKey answer a real foreign user id as they answer a random one."""
    a, b = await owner_of(stack, "A"), await owner_of(stack, "B")
    random_user = f"users/{uuid.uuid4()}"

    def create_member(user: str) -> Awaitable[object]:
        return a.workspaces.CreateMember(
            workspace_service_pb2.CreateMemberRequest(
                member=workspace_pb2.Member(user=user, role="viewer", display_name="x")
            ),
            metadata=a.client.auth,
        )

    def create_key(user: str) -> Awaitable[object]:
        return a.keys.CreateApiKey(
            api_key_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(display_name="x", user=user)
            ),
            metadata=a.client.auth,
        )

    for call in (create_member, create_key):
        foreign = await refusal(call(b.user))
        unknown = await refusal(call(random_user))
        # Only the id the caller typed may differ.
        assert foreign[:2] == unknown[:2]
        assert foreign[2].replace(b.user, "?") == unknown[2].replace(random_user, "?")
        assert "B user" not in foreign[2]
    assert (await refusal(create_key(b.user)))[:2] == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


async def test_no_key_is_minted_for_a_user_the_workspace_does_not_share(stack: Stack) -> None:
    """After A tries to add B's owner, CreateApiKey in A for them is still NOT_FOUND."""
    a, b = await owner_of(stack, "A"), await owner_of(stack, "B")
    await refusal(
        a.workspaces.CreateMember(
            workspace_service_pb2.CreateMemberRequest(
                member=workspace_pb2.Member(user=b.user, role="owner", display_name="x")
            ),
            metadata=a.client.auth,
        )
    )
    await expect_error(
        a.keys.CreateApiKey(
            api_key_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(display_name="theirs", user=b.user)
            ),
            metadata=a.client.auth,
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    listed = await a.keys.ListApiKeys(
        api_key_service_pb2.ListApiKeysRequest(), metadata=a.client.auth
    )
    assert b.user not in {k.user for k in listed.api_keys}


async def test_a_key_the_owner_made_for_a_member_lists_only_its_workspace(stack: Stack) -> None:
    """A delegated key never reveals its user's other workspaces; their personal keys do."""
    a, b = await owner_of(stack, "A"), await owner_of(stack, "B")
    b_in_a = await joined(stack, a, b, "member")
    by_a = await delegated_key(stack, a, b.user)
    assert await list_workspaces(by_a) == {(a.client.workspace, "member")}
    both = {(a.client.workspace, "member"), (b.client.workspace, "owner")}
    assert await list_workspaces(b_in_a) == both
    assert await list_workspaces(b) == both


async def test_a_key_the_owner_made_for_a_member_cannot_rename_them(stack: Stack) -> None:
    """A cannot rename B's owner through a key it made; B's owner can, and A sees it."""
    a, b = await owner_of(stack, "A"), await owner_of(stack, "B")
    await joined(stack, a, b, "admin")
    by_a = await delegated_key(stack, a, b.user)

    def rename(person: Person, name: str) -> Awaitable[profile_pb2.Profile]:
        return person.client.profiles.UpdateProfile(
            profile_service_pb2.UpdateProfileRequest(
                profile=profile_pb2.Profile(name="users/me/profile", display_name=name),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=person.client.auth,
        )

    info = await expect_error(
        rename(by_a, "Renamed by A"), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
    )
    assert info.metadata["api_key"] == "delegated"
    assert await display_name(b, b.user) == "B user"
    await rename(b, "Chosen by B's owner")
    assert await display_name(a, b.user) == "Chosen by B's owner"


async def test_a_delegated_owner_key_cannot_mint_itself_a_personal_one(stack: Stack) -> None:
    """A key a co-owner made for an owner only makes delegated keys, even for that owner."""
    a, b = await owner_of(stack, "A"), await owner_of(stack, "B")
    await joined(stack, a, b, "owner")
    by_a = await delegated_key(stack, a, b.user)
    made = await by_a.keys.CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(api_key=api_key_pb2.ApiKey(display_name="me")),
        metadata=by_a.client.auth,
    )
    assert made.api_key.user == b.user and not made.api_key.personal
    mine = await b.keys.CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(api_key=api_key_pb2.ApiKey(display_name="me")),
        metadata=b.client.auth,
    )
    assert mine.api_key.personal


# -- invitations ----------------------------------------------------------------------------


async def test_an_accepted_invitation_makes_a_member_with_a_personal_key(stack: Stack) -> None:
    """The guest joins with the invitation's role and acts in A with the key they got."""
    a, b = await owner_of(stack, "A"), await owner_of(stack, "B")
    answer = await accept(b, await invite(a, "member"))
    assert (answer.workspace.name, answer.workspace.role) == (a.client.workspace, "member")
    assert answer.api_key.personal and answer.api_key.user == b.user
    guest = stack.client(answer.key, answer.workspace.name)
    session = await new_session(guest)
    await a.client.sessions.GetSession(
        session_service_pb2.GetSessionRequest(name=session.name), metadata=a.client.auth
    )
    member = await a.workspaces.GetMember(
        workspace_service_pb2.GetMemberRequest(name=b.user.replace("users/", "members/")),
        metadata=a.client.auth,
    )
    assert (member.role, member.display_name) == ("member", "B user")


async def test_a_token_is_shown_once_stored_as_a_hash_and_works_once(stack: Stack) -> None:
    """The table holds the token's SHA-256 only; a second accept finds nothing."""
    a, b, c = [await owner_of(stack, n) for n in "ABC"]
    token = await invite(a, "viewer")
    conn = await asyncpg.connect(role_dsn(stack.admin_dsn, "ap_control_plane"))
    try:
        rows = [bytes(r[0]) for r in await conn.fetch("SELECT token_sha256 FROM invitations")]
        dump = str(await conn.fetch("SELECT * FROM invitations"))
    finally:
        await conn.close()
    assert hashlib.sha256(token.encode()).digest() in rows
    assert token.removeprefix("apinv_") not in dump
    listed = await a.invitations.ListInvitations(
        invitation_service_pb2.ListInvitationsRequest(), metadata=a.client.auth
    )
    assert token not in str(listed) and [i.role for i in listed.invitations] == ["viewer"]
    await accept(b, token)
    await expect_error(accept(c, token), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    listed = await a.invitations.ListInvitations(
        invitation_service_pb2.ListInvitationsRequest(), metadata=a.client.auth
    )
    assert not listed.invitations


async def test_used_revoked_expired_and_unknown_tokens_read_the_same(stack: Stack) -> None:
    """Every token that does not work answers the same NOT_FOUND, word for word."""
    a, b, c = [await owner_of(stack, n) for n in "ABC"]
    used = await invite(a)
    await accept(c, used)
    revoked = await invite(a)
    listed = await a.invitations.ListInvitations(
        invitation_service_pb2.ListInvitationsRequest(), metadata=a.client.auth
    )
    await a.invitations.DeleteInvitation(
        invitation_service_pb2.DeleteInvitationRequest(name=listed.invitations[0].name),
        metadata=a.client.auth,
    )
    expired = await invite(a)
    conn = await asyncpg.connect(role_dsn(stack.admin_dsn, "ap_control_plane"))
    try:
        await conn.execute(
            "UPDATE invitations SET expire_time = now() - interval '1 second'"
            " WHERE token_sha256 = $1",
            hashlib.sha256(expired.encode()).digest(),
        )
    finally:
        await conn.close()
    unknown = "apinv_" + "x" * 43
    answers = {await refusal(accept(b, t)) for t in (used, revoked, expired, unknown)}
    assert len(answers) == 1
    ((code, reason, _),) = answers
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert await list_workspaces(b) == {(b.client.workspace, "owner")}


async def test_two_accepts_of_one_token_make_one_member(stack: Stack) -> None:
    """Racing accepts of one token: exactly one joins."""
    a, b, c = [await owner_of(stack, n) for n in "ABC"]
    token = await invite(a)
    outcomes = await asyncio.gather(accept(b, token), accept(c, token), return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(failures) == 1 and failures[0].code() == grpc.StatusCode.NOT_FOUND
    members = await a.workspaces.ListMembers(
        workspace_service_pb2.ListMembersRequest(), metadata=a.client.auth
    )
    assert len(members.members) == 2


async def test_a_delegated_key_cannot_accept_and_leaves_the_invitation(stack: Stack) -> None:
    """A's owner cannot push B's owner into C with a key A made; B's owner still can join."""
    a, b, c = [await owner_of(stack, n) for n in "ABC"]
    await joined(stack, a, b)
    by_a = await delegated_key(stack, a, b.user)
    token = await invite(c)
    await expect_error(accept(by_a, token), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert (c.client.workspace, "member") not in await list_workspaces(b)
    await accept(b, token)
    assert (c.client.workspace, "member") in await list_workspaces(b)


async def test_a_member_already_gets_already_exists_and_the_token_still_works(
    stack: Stack,
) -> None:
    """Accepting into a workspace one belongs to changes nothing and spends nothing."""
    a, b = await owner_of(stack, "A"), await owner_of(stack, "B")
    token = await invite(a, "admin")
    await expect_error(accept(a, token), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")
    answer = await accept(b, token)
    assert answer.workspace.role == "admin"


async def test_owner_invitations_are_for_owners_to_make_and_revoke(stack: Stack) -> None:
    """An admin invites members and admins but neither creates nor revokes owner invitations."""
    a, b = await owner_of(stack, "A"), await owner_of(stack, "B")
    admin = await joined(stack, a, b, "admin")
    await invite(admin, "admin")
    await expect_error(
        invite(admin, "owner"), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
    )
    await invite(a, "owner")
    listed = await admin.invitations.ListInvitations(
        invitation_service_pb2.ListInvitationsRequest(), metadata=admin.client.auth
    )
    owners = [i for i in listed.invitations if i.role == "owner"]
    assert len(owners) == 1 and owners[0].inviter == a.user
    await expect_error(
        admin.invitations.DeleteInvitation(
            invitation_service_pb2.DeleteInvitationRequest(name=owners[0].name),
            metadata=admin.client.auth,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    got = await a.invitations.GetInvitation(
        invitation_service_pb2.GetInvitationRequest(name=owners[0].name), metadata=a.client.auth
    )
    assert got == owners[0]


async def test_an_invitation_lasts_seven_days_at_most_thirty(stack: Stack) -> None:
    """Neither expire_time nor ttl means 7 days; more than 30 days is INVALID_ARGUMENT."""
    a = await owner_of(stack, "A")
    made = await a.invitations.CreateInvitation(
        invitation_service_pb2.CreateInvitationRequest(
            invitation=invitation_pb2.Invitation(role="viewer")
        ),
        metadata=a.client.auth,
    )
    lasts = made.invitation.expire_time.ToDatetime() - made.invitation.create_time.ToDatetime()
    assert abs(lasts.total_seconds() - 7 * 86400) < 60
    hour = await a.invitations.CreateInvitation(
        invitation_service_pb2.CreateInvitationRequest(
            invitation=invitation_pb2.Invitation(
                role="viewer", ttl=duration_pb2.Duration(seconds=3600)
            )
        ),
        metadata=a.client.auth,
    )
    lasts = hour.invitation.expire_time.ToDatetime() - hour.invitation.create_time.ToDatetime()
    assert abs(lasts.total_seconds() - 3600) < 60
    for too_long in (31 * 86400, -1):
        info = await expect_error(
            invite(a, "viewer", ttl=duration_pb2.Duration(seconds=too_long)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert info.metadata["field"] == "invitation.ttl"
