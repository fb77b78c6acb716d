"""Malformed requests are INVALID_ARGUMENT with the field named, never INTERNAL."""

from __future__ import annotations

import uuid

import agentplatform
import grpc
import pytest
from agentplatform.v1 import (
    profile_pb2,
    profile_service_pb2,
    run_service_pb2,
    session_pb2,
    session_service_pb2,
)

from tests.harness import Stack, expect_error
from tests.integration.helpers import new_run, new_session

BAD_NAMES = [
    "",
    "sessions",
    "sessions/",
    "sessions/not-a-uuid",
    "sessions/" + str(uuid.uuid4()).upper(),
    "workspaces/" + str(uuid.uuid4()),
    "sessions/" + str(uuid.uuid4()) + "/extra",
    "x" * 10_000,
    "sessions/\x00",
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_malformed_session_names_are_invalid_arguments(stack: Stack, name: str) -> None:
    """Bad session ids are refused before any lookup."""
    client = stack.owner
    await expect_error(
        client.sessions.GetSession(
            session_service_pb2.GetSessionRequest(name=name), metadata=client.auth, timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await expect_error(
        new_run(client, name, "hi"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )


@pytest.mark.parametrize(
    "name",
    ["", "sessions/x/runs/y", f"sessions/{uuid.uuid4()}", f"sessions/{uuid.uuid4()}/runs/"],
)
async def test_malformed_run_names_are_invalid_arguments(stack: Stack, name: str) -> None:
    """Bad run names are refused on Get, List events and Stream."""
    client = stack.owner
    await expect_error(
        client.runs.GetRun(
            run_service_pb2.GetRunRequest(name=name), metadata=client.auth, timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await expect_error(
        client.runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=name), metadata=client.auth, timeout=10
        ).read(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "INVALID_ARGUMENT"),
        ("   \n\t ", "INVALID_ARGUMENT"),
        ("nul \x00 inside", "INVALID_ARGUMENT"),
        ("x" * (64 * 1024 + 1), "LIMIT_EXCEEDED"),
        ("é" * (32 * 1024 + 1), "LIMIT_EXCEEDED"),
    ],
)
async def test_empty_or_oversized_input_is_refused(stack: Stack, text: str, reason: str) -> None:
    """Input text must be present, within 64 KiB and free of NUL characters."""
    client = stack.owner
    session = await new_session(client)
    info = await expect_error(
        new_run(client, session.name, text), grpc.StatusCode.INVALID_ARGUMENT, reason
    )
    assert info.metadata["field"] == "input_text"


async def test_bad_session_fields_and_paging_are_refused(stack: Stack) -> None:
    """Oversized titles, too many metadata keys, bad page sizes and tokens are refused."""
    client = stack.owner
    for session, reason in [
        (session_pb2.Session(title="t" * 201), "LIMIT_EXCEEDED"),
        (session_pb2.Session(metadata={f"k{i}": "v" for i in range(33)}), "LIMIT_EXCEEDED"),
        (session_pb2.Session(metadata={"": "v"}), "INVALID_ARGUMENT"),
    ]:
        await expect_error(
            client.sessions.CreateSession(
                session_service_pb2.CreateSessionRequest(session=session),
                metadata=client.auth,
                timeout=10,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            reason,
        )
    for request in [
        session_service_pb2.ListSessionsRequest(page_size=-1),
        session_service_pb2.ListSessionsRequest(page_token="garbage!"),
        session_service_pb2.ListSessionsRequest(page_token="eyJzIjoieCIsImMiOnt9fQ"),
    ]:
        await expect_error(
            client.sessions.ListSessions(request, metadata=client.auth, timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
    await expect_error(
        client.runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(
                name=f"sessions/{uuid.uuid4()}/runs/{uuid.uuid4()}", after_sequence=-1
            ),
            metadata=client.auth,
            timeout=10,
        ).read(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_list_sessions_pages_through_everything_once(stack: Stack) -> None:
    """Paging with a small page size returns every session exactly once, newest first."""
    client = await stack.new_workspace("Pager")
    made = [await new_session(client, f"s{i}") for i in range(7)]
    seen: list[str] = []
    token = ""
    while True:
        page = await client.sessions.ListSessions(
            session_service_pb2.ListSessionsRequest(page_size=3, page_token=token),
            metadata=client.auth,
            timeout=10,
        )
        seen += [s.name for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [s.name for s in reversed(made)]


async def test_the_sdk_client_follows_every_page(stack: Stack) -> None:
    """Client.list_sessions / list_messages / list_runs walk all pages of their List RPC."""
    owner = await stack.new_workspace("SDK pager")
    made = [await new_session(owner, f"s{i}") for i in range(5)]
    run = await new_run(owner, made[0].name, "r0 [[tokens=1]]")
    await owner.stream(run.name)
    async with agentplatform.AsyncClient(stack.address, owner.api_key) as sdk:
        sessions = [s.name async for s in sdk.list_sessions(page_size=2)]
        messages = [m.text async for m in sdk.list_messages(made[0].name, page_size=1)]
        listed_runs = [r.name async for r in sdk.list_runs(made[0].name, page_size=1)]
    assert sessions == [s.name for s in reversed(made)]
    assert messages[0] == "r0 [[tokens=1]]" and len(messages) == 2
    assert listed_runs == [run.name]


async def test_profile_is_readable_and_editable(stack: Stack) -> None:
    """The caller reads and renames their own profile; a blank name is refused."""
    client = await stack.new_workspace("Profiled")
    me = await client.profiles.GetProfile(
        profile_service_pb2.GetProfileRequest(name="users/me/profile"),
        metadata=client.auth,
        timeout=10,
    )
    assert me.display_name == "Profiled user"
    assert me.role == "owner"
    renamed = await client.profiles.UpdateProfile(
        profile_service_pb2.UpdateProfileRequest(
            profile=profile_pb2.Profile(name="users/me/profile", display_name="Ada")
        ),
        metadata=client.auth,
        timeout=10,
    )
    assert renamed.display_name == "Ada"
    await expect_error(
        client.profiles.UpdateProfile(
            profile_service_pb2.UpdateProfileRequest(
                profile=profile_pb2.Profile(name="users/me/profile", display_name="  ")
            ),
            metadata=client.auth,
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await expect_error(
        client.profiles.GetProfile(
            profile_service_pb2.GetProfileRequest(name=f"users/{uuid.uuid4()}/profile"),
            metadata=client.auth,
            timeout=10,
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
