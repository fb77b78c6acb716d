"""The SDK: both clients against a real stack, its tables, and its wheel in a clean venv."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import shutil
import sys
import threading
import typing
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import agentplatform
import grpc
import pytest
from agentplatform import (
    APError,
    AsyncClient,
    Client,
    ClientConfig,
    ConfigError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RunAlreadyActive,
    RunFailed,
    Unavailable,
)
from agentplatform._errors import REASON_ERRORS
from agentplatform._methods import Methods, PagedMethod, StreamMethod, UnaryMethod
from agentplatform.v1 import error_reason_pb2, run_pb2
from google.protobuf import descriptor_pool

from devtools.pki import issue_dev_pki
from services.rpc.hosted_models import HostedModelSettings
from tests.ecosystem.proxy import Proxy, tls_server_context
from tests.harness import Stack, start_control_plane

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "sdk" / "python"
GENERATED = SDK / "src" / "agentplatform"
SAMPLE = Path(__file__).with_name("sdk_sample.py")
# A failed connection otherwise waits about a second before the next attempt.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)
SLOW = "[[tokens=30]] [[delay_ms=20]] [[reasoning=0]]"
NO_SUCH_SESSION = "sessions/00000000-0000-4000-8000-000000000000"
T = TypeVar("T")


def payloads(events: list[run_pb2.RunEvent]) -> list[str | None]:
    """Return the payload kind of each event."""
    return [e.WhichOneof("payload") for e in events]


def gapless(events: list[run_pb2.RunEvent]) -> bool:
    """Say whether the events are sequences 1..n, each once."""
    return [e.sequence for e in events] == list(range(1, len(events) + 1))


async def blocking(call: Callable[[], T]) -> T:
    """Run blocking client code in a thread: the servers share this test's event loop."""
    return await asyncio.to_thread(call)


@pytest.fixture
def no_client_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Clear the client variables and point the config folder at an empty one; return it."""
    for name in ("AP_ENDPOINT", "AP_API_KEY", "AP_CA_FILE", "AP_CLIENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path


def write_client_file(config_home: Path, **entries: str) -> None:
    """Write client.json as `make run` does."""
    folder = config_home / "agentplatform"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "client.json").write_text(json.dumps(entries))


# -- the blocking and the asyncio client do the same things -------------------------------


async def test_send_message_returns_the_reply_text_with_both_clients(stack: Stack) -> None:
    """send_message runs the text and returns the reply, blocking and awaited alike."""

    def sync_reply() -> str:
        with Client(stack.address, stack.owner.api_key) as client:
            session = client.create_session(title="sync")
            return client.send_message(session.name, "hi [[tokens=3]]")

    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="async")
        async_reply = await client.send_message(session.name, "hi [[tokens=3]]")
    assert await blocking(sync_reply) == async_reply == "alpha bravo charlie"


async def test_send_message_raises_run_failed_with_the_reason(stack: Stack) -> None:
    """A run that fails raises RunFailed naming the run and its reason."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="fails")
        with pytest.raises(RunFailed) as failed:
            await client.send_message(session.name, "[[fail=400]]")
    assert failed.value.reason == "MODEL_ERROR"
    assert failed.value.run.startswith(session.name + "/runs/")
    assert failed.value.code is None


async def test_streams_yield_each_event_once_to_the_terminal_event(stack: Stack) -> None:
    """stream_run_events yields 1..n in order and ends after run.completed, in both clients."""

    def sync_events(run: str) -> list[run_pb2.RunEvent]:
        with Client(stack.address, stack.owner.api_key) as client:
            return list(client.stream_run_events(run))

    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="stream")
        run = await client.create_run(session.name, "hi [[tokens=3]] [[reasoning=0]]")
        stream = client.stream_run_events(run.name)
        events = [event async for event in stream]
    assert gapless(events)
    assert payloads(events).count("output_text_delta") == 3
    assert stream.terminal is not None and stream.terminal.type == "run.completed"
    assert await blocking(lambda: sync_events(run.name)) == events


async def test_a_stream_resumed_past_the_end_reports_the_final_run(stack: Stack) -> None:
    """Resuming after the last event of a finished run ends at once with final_run."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="past the end")
        await client.send_message(session.name, "[[tokens=2]]")
        (run,) = [r async for r in client.list_runs(session.name)]
        stream = client.stream_run_events(run.name, after_sequence=run.last_event_sequence)
        assert [e async for e in stream] == []
    assert stream.terminal is None
    assert stream.final_run is not None and stream.final_run.state == run_pb2.Run.COMPLETED


async def test_cancel_run_ends_the_stream_with_run_cancelled(stack: Stack) -> None:
    """cancel_run on a running run ends its stream with run.cancelled."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="sdk cancel")
        run = await client.create_run(session.name, "[[tokens=200]] [[delay_ms=50]]")
        stream = client.stream_run_events(run.name)
        async with contextlib.aclosing(aiter(stream)) as events:
            async for event in events:
                if event.WhichOneof("payload") == "output_text_delta":
                    await client.cancel_run(stream.name)
    assert stream.terminal is not None and stream.terminal.type == "run.cancelled"


async def test_session_stream_follows_every_run_by_session_sequence(stack: Stack) -> None:
    """stream_session_events yields both runs' events once each, by session_sequence."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="session stream")
        await client.send_message(session.name, "one [[tokens=2]]")
        await client.send_message(session.name, "two [[tokens=2]]")
        seen: list[run_pb2.RunEvent] = []
        async with contextlib.aclosing(aiter(client.stream_session_events(session.name))) as it:
            async for event in it:
                seen.append(event)
                if len([e for e in seen if agentplatform.is_terminal(e)]) == 2:
                    break
    assert [e.session_sequence for e in seen] == list(range(1, len(seen) + 1))
    assert len({e.name.rsplit("/events/", 1)[0] for e in seen}) == 2


async def test_list_methods_iterate_every_page(stack: Stack) -> None:
    """list_sessions(page_size=2) yields all sessions, fetching page after page."""
    owner = await stack.new_workspace("Pages")
    async with AsyncClient(stack.address, owner.api_key) as client:
        made = [(await client.create_session(title=f"s{i}")).name for i in range(5)]
        listed = [s.name async for s in client.list_sessions(page_size=2)]
    with Client(stack.address, owner.api_key) as sync_client:
        sync_listed = await blocking(
            lambda: [s.name for s in sync_client.list_sessions(page_size=2)]
        )
    assert sorted(listed) == sorted(made)
    assert listed == sync_listed == made[::-1]  # newest first


async def test_enqueue_runs_a_second_message_after_the_active_one(stack: Stack) -> None:
    """concurrency_policy="enqueue" queues behind an active run; "reject" names the active run."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="queue")
        first = await client.create_run(session.name, SLOW)
        with pytest.raises(RunAlreadyActive) as refused:
            await client.create_run(session.name, "refused")
        second = await client.create_run(session.name, "[[tokens=1]]", concurrency_policy="enqueue")
        events = [e async for e in client.stream_run_events(second.name)]
        done_first = await client.get_run(first.name)
    assert refused.value.active_run == first.name
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "RUN_ALREADY_ACTIVE"
    assert events[-1].type == "run.completed"
    assert done_first.state == run_pb2.Run.COMPLETED
    assert done_first.end_time.ToNanoseconds() <= events[1].create_time.ToNanoseconds()


async def test_sessions_are_renamed_and_deleted_through_both_clients(stack: Stack) -> None:
    """update_session changes only what it is given; delete_session refuses an active run."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="old", instructions="keep", metadata={"a": "1"})
        renamed = await client.update_session(session.name, title="new")
        cleared = await client.update_session(session.name, metadata={})
        active = await client.create_run(session.name, SLOW)
        with pytest.raises(RunAlreadyActive) as refused:
            await client.delete_session(session.name)
        await client.delete_session(session.name, force=True)
        with pytest.raises(NotFound):
            await client.get_session(session.name)
        with pytest.raises(ValueError, match="nothing to update"):
            await client.update_session(session.name)

    def sync_calls() -> tuple[str, bool]:
        with Client(stack.address, stack.owner.api_key) as blocking_client:
            made = blocking_client.create_session(title="blocking")
            title = blocking_client.update_session(made.name, title="renamed").title
            blocking_client.delete_session(made.name)
            blocking_client.delete_session(made.name, allow_missing=True)
            gone = made.name not in {s.name for s in blocking_client.list_sessions()}
            return title, gone

    assert (renamed.title, renamed.instructions, dict(renamed.metadata)) == (
        "new",
        "keep",
        {"a": "1"},
    )
    assert (cleared.title, dict(cleared.metadata)) == ("new", {})
    assert refused.value.active_run == active.name
    assert await blocking(sync_calls) == ("renamed", True)


async def test_create_run_with_a_request_id_returns_the_first_run(stack: Stack) -> None:
    """A repeated request_id answers with the run the first call created."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="request id")
        first = await client.create_run(session.name, "[[tokens=1]]", request_id="r-1")
        again = await client.create_run(session.name, "[[tokens=1]]", request_id="r-1")
    assert first.name == again.name


async def test_errors_are_typed_and_carry_the_error_info(stack: Stack) -> None:
    """NotFound names the resource; bad input is InvalidArgument naming the field."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        with pytest.raises(NotFound) as missing:
            await client.get_session(NO_SUCH_SESSION)
        with pytest.raises(InvalidArgument) as bad:
            await client.get_session("sessions/not-a-uuid")
    assert missing.value.reason == "NOT_FOUND"
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert missing.value.resource == NO_SUCH_SESSION
    assert str(missing.value).endswith("(NOT_FOUND)")
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and bad.value.field == "name"


async def test_every_other_rpc_family_answers_through_the_client(stack: Stack) -> None:
    """Profile, workspace, members, keys, tools and tool calls answer through both clients."""
    owner = await stack.new_workspace("Families")

    def sync_calls() -> tuple[str, int, int]:
        with Client(stack.address, owner.api_key) as client:
            profile = client.get_profile()
            members = list(client.list_members())
            keys = list(client.list_api_keys())
            return profile.role, len(members), len(keys)

    async with AsyncClient(stack.address, owner.api_key) as client:
        profile = await client.get_profile()
        workspace = await client.get_workspace(profile.workspace)
        renamed = await client.update_workspace(workspace.name, display_name="Renamed")
        made = await client.create_api_key("ci")
        keys = [k.name async for k in client.list_api_keys()]
        await client.delete_api_key(made.api_key.name)
        after = [k.name async for k in client.list_api_keys()]
    assert profile.role == "owner" and renamed.display_name == "Renamed"
    assert (
        made.key.startswith("ap_") and made.api_key.name in keys and made.api_key.name not in after
    )
    assert await blocking(sync_calls) == ("owner", 1, len(after))


# -- configuration -------------------------------------------------------------------------


async def test_the_client_file_configures_a_client_with_no_arguments(
    stack: Stack, no_client_env: Path
) -> None:
    """With no arguments and no variables, client.json (as `make run` writes it) is used."""
    write_client_file(no_client_env, endpoint=stack.address, api_key=stack.owner.api_key)
    with Client() as client:
        profile = await blocking(client.get_profile)
    assert profile.role == "owner"


async def test_arguments_override_variables_which_override_the_file(
    stack: Stack, no_client_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each setting comes from the arguments, else the environment, else the file."""
    write_client_file(no_client_env, endpoint="127.0.0.1:1", api_key="ap_file_key")
    monkeypatch.setenv("AP_ENDPOINT", stack.address)
    from_env = ClientConfig.resolve()
    assert (from_env.target, from_env.api_key) == (stack.address, "ap_file_key")
    monkeypatch.setenv("AP_API_KEY", stack.owner.api_key)
    assert ClientConfig.resolve().api_key == stack.owner.api_key
    given = ClientConfig.resolve("grpc://10.0.0.1:7", "ap_arg")
    assert (given.target, given.api_key, given.tls) == ("10.0.0.1:7", "ap_arg", False)
    with Client() as client:
        assert (await blocking(client.get_profile)).role == "owner"


def test_missing_configuration_names_every_place_to_put_it(no_client_env: Path) -> None:
    """Without an endpoint and key anywhere, ConfigError says where they could come from."""
    with pytest.raises(ConfigError) as missing:
        Client()
    text = str(missing.value)
    assert "AP_ENDPOINT" in text and "AP_API_KEY" in text and "client.json" in text


@pytest.mark.parametrize(
    ("endpoint", "target", "tls"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051", False),
        ("grpc://host:1", "host:1", False),
        ("http://host", "host:80", False),
        ("https://api.example.com", "api.example.com:443", True),
        ("grpcs://api.example.com:8443/", "api.example.com:8443", True),
    ],
)
def test_the_endpoint_scheme_chooses_tls(endpoint: str, target: str, tls: bool) -> None:
    """https:// and grpcs:// dial with TLS; HOST:PORT, grpc:// and http:// in plaintext."""
    config = ClientConfig.resolve(endpoint, "ap_key", environ={})
    assert (config.target, config.tls) == (target, tls)


@pytest.mark.parametrize("endpoint", ["ftp://host:1", "https://host/path", "grpc://host"])
def test_malformed_endpoints_are_refused(endpoint: str) -> None:
    """An unknown scheme, a path or a missing port is a ConfigError, not a dial error later."""
    with pytest.raises(ConfigError):
        ClientConfig.resolve(endpoint, "ap_key", environ={})


def test_the_api_key_stays_out_of_repr() -> None:
    """A logged config or client never shows the key."""
    config = ClientConfig.resolve("127.0.0.1:1", "ap_secret_value", environ={})
    with Client(config=config) as client:
        assert "ap_secret_value" not in repr(config) + repr(client)


# -- TLS, timeouts and retries, through a real proxy ---------------------------------------


@pytest.fixture
async def proxy(stack: Stack) -> AsyncIterator[Proxy]:
    """Run a cuttable proxy in front of the stack's control plane."""
    running = Proxy(int(stack.address.rsplit(":", 1)[1]))
    await running.start()
    yield running
    await running.stop()


async def test_an_https_endpoint_speaks_tls_verified_by_the_ca_file(
    stack: Stack, tmp_path: Path
) -> None:
    """https:// with ca_file= reaches a TLS endpoint; without the CA the server is untrusted."""
    pki = issue_dev_pki(tmp_path, ["ingress"])
    issued = pki.services["ingress"]
    ingress = Proxy(
        int(stack.address.rsplit(":", 1)[1]),
        tls=tls_server_context(str(issued.cert_file), str(issued.key_file)),
    )
    await ingress.start()
    try:
        endpoint = f"https://localhost:{ingress.port}"
        async with AsyncClient(endpoint, stack.owner.api_key, ca_file=pki.ca_file) as client:
            profile = await client.get_profile()
        async with AsyncClient(endpoint, stack.owner.api_key, max_retries=0) as untrusting:
            with pytest.raises(Unavailable):
                await untrusting.get_profile()
    finally:
        await ingress.stop()
    assert profile.role == "owner"


async def test_idempotent_calls_are_retried_while_unavailable(stack: Stack, proxy: Proxy) -> None:
    """A read retried past dropped connections succeeds; with retries off it raises."""
    options = (*FAST_RECONNECT, ("grpc.enable_retries", 0))
    async with AsyncClient(
        f"127.0.0.1:{proxy.port}", stack.owner.api_key, channel_options=options
    ) as client:
        proxy.refuse = 2
        profile = await client.get_profile()
        assert profile.role == "owner" and proxy.refuse == 0
        proxy.cut()
        proxy.refuse = 1
        with pytest.raises(Unavailable) as unavailable:
            await client.with_options(max_retries=0).get_profile()
    assert unavailable.value.code == grpc.StatusCode.UNAVAILABLE


async def test_a_create_without_request_id_is_not_retried(stack: Stack, proxy: Proxy) -> None:
    """create_api_key has no request_id, so a dropped connection raises instead of retrying."""
    owner = await stack.new_workspace("No retry")
    options = (*FAST_RECONNECT, ("grpc.enable_retries", 0))
    async with AsyncClient(
        f"127.0.0.1:{proxy.port}", owner.api_key, channel_options=options
    ) as client:
        before = [k async for k in client.list_api_keys()]
        proxy.cut()
        proxy.refuse = 1
        with pytest.raises(Unavailable):
            await client.create_api_key("once")
        after = [k async for k in client.list_api_keys()]
    assert len(after) == len(before)


async def test_a_wedged_server_hits_the_timeout(stack: Stack, proxy: Proxy) -> None:
    """with_options(timeout=) bounds a call the server never answers: DeadlineExceeded."""
    proxy.swallow = True
    client = Client(f"127.0.0.1:{proxy.port}", stack.owner.api_key)
    with client, pytest.raises(DeadlineExceeded) as late:
        await blocking(lambda: client.with_options(timeout=0.3).get_profile())
    assert late.value.reason == "DEADLINE_EXCEEDED"


async def test_stream_resumes_after_the_connection_breaks(stack: Stack, proxy: Proxy) -> None:
    """A cut connection mid-stream is resumed from the cursor: no event lost or repeated."""
    reconnects: list[tuple[APError | None, int]] = []
    client = AsyncClient(
        f"127.0.0.1:{proxy.port}", stack.owner.api_key, channel_options=FAST_RECONNECT
    )
    async with client:
        session = await client.create_session(title="sdk resume")
        run = await client.create_run(session.name, SLOW)
        stream = client.stream_run_events(
            run.name, on_reconnect=lambda failure, last: reconnects.append((failure, last))
        )
        events: list[run_pb2.RunEvent] = []
        async for event in stream:
            events.append(event)
            if payloads(events).count("output_text_delta") == 5 and not reconnects:
                proxy.cut()
    assert gapless(events) and payloads(events).count("output_text_delta") == 30
    assert stream.terminal is not None and stream.terminal.type == "run.completed"
    assert stream.reconnects >= 1 and reconnects[0][1] >= 5


async def test_blocking_stream_resumes_after_the_connection_breaks(
    stack: Stack, proxy: Proxy
) -> None:
    """The blocking stream resumes a cut connection the same way."""
    cut_once = threading.Event()

    def follow() -> list[run_pb2.RunEvent]:
        with Client(
            f"127.0.0.1:{proxy.port}", stack.owner.api_key, channel_options=FAST_RECONNECT
        ) as client:
            session = client.create_session(title="sync resume")
            run = client.create_run(session.name, SLOW)
            events = []
            for event in client.stream_run_events(run.name):
                events.append(event)
                if payloads(events).count("output_text_delta") == 5 and not cut_once.is_set():
                    cut_once.set()
                    loop.call_soon_threadsafe(proxy.cut)
            return events

    loop = asyncio.get_running_loop()
    events = await blocking(follow)
    assert cut_once.is_set()
    assert gapless(events) and payloads(events).count("output_text_delta") == 30
    assert events[-1].type == "run.completed"


async def test_stream_moves_to_another_replica_when_one_shuts_down(stack: Stack) -> None:
    """A replica draining (SERVER_SHUTTING_DOWN) hands the stream to another, gaplessly."""
    model = HostedModelSettings(base_url=stack.devmodel.base_url, name="ap-dev-model", api_key=None)
    replica = await start_control_plane(stack.admin_dsn, stack.internal_token, model)
    proxy = Proxy(int(replica.address.rsplit(":", 1)[1]))
    await proxy.start()
    reasons: list[str | None] = []
    stopping: asyncio.Task[None] | None = None
    try:
        async with AsyncClient(
            f"127.0.0.1:{proxy.port}", stack.owner.api_key, channel_options=FAST_RECONNECT
        ) as client:
            session = await client.create_session(title="drain")
            run = await client.create_run(session.name, SLOW)
            stream = client.stream_run_events(
                run.name, on_reconnect=lambda err, _: reasons.append(err.reason if err else None)
            )
            events: list[run_pb2.RunEvent] = []
            async for event in stream:
                events.append(event)
                if payloads(events).count("output_text_delta") == 5 and stopping is None:
                    proxy.target_port = int(stack.address.rsplit(":", 1)[1])
                    stopping = asyncio.create_task(replica.stop())
    finally:
        await proxy.stop()
        await (stopping if stopping is not None else replica.stop())
    assert reasons[:1] == ["SERVER_SHUTTING_DOWN"]
    assert gapless(events) and events[-1].type == "run.completed"


# -- the tables that must stay complete ----------------------------------------------------


def public_rpcs() -> set[str]:
    """Return every RPC of the public API, as Service/Method."""
    pool = descriptor_pool.Default()
    names = set()
    for module in GENERATED.joinpath("v1").glob("*_service_pb2.py"):
        file = pool.FindFileByName(f"agentplatform/v1/{module.name.removesuffix('_pb2.py')}.proto")
        for service in file.services_by_name.values():
            names |= {f"{service.name}/{m.name}" for m in service.methods}
    return names


class _Recorder:
    """A stand-in stub that records which method a descriptor picks."""

    def __getattr__(self, name: str) -> str:
        return name


def rpc_name(method: UnaryMethod[..., Any] | PagedMethod[..., Any]) -> str:
    """Return the name of the RPC a client method sends."""
    return str(method.rpc.select(_Recorder()))


def described_rpcs() -> dict[str, str]:
    """Return the RPC (Service/Method) behind each client method."""
    found = {}
    for name, method in vars(Methods).items():
        if isinstance(method, UnaryMethod | PagedMethod):
            service = method.rpc.stub.__name__.removesuffix("Stub")
            found[name] = f"{service}/{rpc_name(method)}"
        elif isinstance(method, StreamMethod):
            cursor = method.build("x")
            found[name] = f"RunService/{cursor.open(_Recorder())}"
    return found


def test_every_public_rpc_has_a_client_method() -> None:
    """Each RPC of agentplatform.v1 is a method of both clients (a new RPC fails here)."""
    for module in GENERATED.joinpath("v1").glob("*_service_pb2.py"):
        __import__(f"agentplatform.v1.{module.stem}")
    missing = public_rpcs() - set(described_rpcs().values())
    assert not missing, f"RPCs without a client method: {sorted(missing)}"


def test_each_method_returns_what_its_rpc_answers() -> None:
    """A method's declared result is its RPC's output message (or that message's list items)."""
    pool = descriptor_pool.Default()
    for name, method in vars(Methods).items():
        if not isinstance(method, UnaryMethod | PagedMethod):
            continue
        service = method.rpc.stub.__name__.removesuffix("Stub")
        rpc = pool.FindServiceByName(f"agentplatform.v1.{service}").methods_by_name[
            rpc_name(method)
        ]
        if isinstance(method, UnaryMethod):
            assert method.returns.DESCRIPTOR is rpc.output_type, name
        else:
            (listed,) = [f for f in rpc.output_type.fields if f.message_type is not None]
            assert listed.message_type is method.of.DESCRIPTOR, name


def test_every_error_reason_has_an_exception_class() -> None:
    """error_reason.proto and the exception table agree (a new reason fails here)."""
    reasons = set(error_reason_pb2.ErrorReason.values()) - {0}
    assert set(REASON_ERRORS) == reasons


def test_every_public_name_and_method_has_a_docstring() -> None:
    """The SDK's public names, the clients' methods and the errors' properties are documented."""
    undocumented = [
        name for name in agentplatform.__all__ if not _doc(getattr(agentplatform, name))
    ]
    for client in (Client, AsyncClient):
        for name, member in inspect.getmembers(client):
            if not name.startswith("_") and not _doc(member):
                undocumented.append(f"{client.__name__}.{name}")
    assert not undocumented


def _doc(value: Any) -> bool:
    # Constants and type aliases cannot carry a docstring; docs/sdk.md describes them.
    if isinstance(value, str | int) or typing.get_origin(value) is not None:
        return True
    return bool(inspect.getdoc(value))


def test_methods_show_their_builders_signature() -> None:
    """help() and inspect see each method's own parameters, not (*args, **kwargs)."""
    config = ClientConfig.resolve("127.0.0.1:1", "ap_key", environ={})
    with Client(config=config) as client:
        signature = inspect.signature(client.create_run)
        assert list(signature.parameters) == ["session", "text", "concurrency_policy", "request_id"]
        assert "concurrency_policy" in (client.create_run.__doc__ or "")


def test_py_typed_ships_with_the_package() -> None:
    """The package is marked typed for mypy and editors."""
    assert (GENERATED / "py.typed").exists()


def version_floor(requirement: str) -> tuple[int, ...]:
    """Return the lowest version a `name>=X.Y.Z` requirement allows."""
    match = re.search(r">=([\d.]+)", requirement)
    assert match is not None, f"{requirement} has no >= floor"
    return tuple(int(part) for part in match.group(1).split("."))


def test_sdk_dependency_floors_satisfy_the_generated_code() -> None:
    """The wheel's grpcio and protobuf floors are what the generated code checks at import."""
    pyproject = (SDK / "pyproject.toml").read_text()
    requirements = dict(re.findall(r'"((?:grpcio|protobuf))([<>=!~][^"]*)"', pyproject))
    grpc_code = (GENERATED / "v1" / "run_service_pb2_grpc.py").read_text()
    (grpc_generated,) = re.findall(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_code)
    pb_code = (GENERATED / "v1" / "run_pb2.py").read_text()
    (pb_generated,) = re.findall(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb_code)
    assert version_floor(requirements["grpcio"]) >= tuple(map(int, grpc_generated.split(".")))
    assert version_floor(requirements["protobuf"]) >= tuple(map(int, pb_generated))
    assert f"<{int(pb_generated[0]) + 1}" in requirements["protobuf"]


def readme_programs() -> list[str]:
    """Return the SDK README's first programs: the blocking one, then the asyncio one."""
    readme = (SDK / "README.md").read_text()
    section = readme.split("## First program", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


async def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command to completion and return its output; fail the test if it fails."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, args),
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{args} failed:\n{text}"
    return text


def copy_sdk(into: Path) -> Path:
    """Copy the SDK's source, so building it leaves nothing behind in the working tree."""
    source = into / "sdk"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(SDK, source, ignore=ignore)
    return source


def built_wheels(folder: Path) -> list[Path]:
    """Return the SDK wheels in a folder."""
    return list(folder.glob("agentplatform_sdk-*.whl"))


@pytest.mark.timeout(180)
async def test_readme_programs_run_from_a_clean_virtualenv_with_only_the_wheel(
    stack: Stack, tmp_path: Path
) -> None:
    """The wheel installs alone (with its PyPI dependencies) and both README programs work."""
    pip = [sys.executable, "-m", "pip"]
    source = copy_sdk(tmp_path)
    await run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path, source)
    (wheel,) = built_wheels(tmp_path)
    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    await run(*pip, "--python", python, "install", "-q", wheel)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AP_", "PYTHON"))}
    env |= {"AP_ENDPOINT": stack.address, "AP_API_KEY": stack.owner.api_key}
    programs = readme_programs()
    assert len(programs) == 2
    for i, text in enumerate(programs):
        program = tmp_path / f"hello{i}.py"
        program.write_text(text)
        # -I: neither PYTHONPATH nor the working folder can make the repository importable.
        out = await asyncio.wait_for(run(python, "-I", program, cwd=tmp_path, env=env), 60)
        assert out == "alpha bravo charlie delta echo\n"

    # A program using both clients type-checks strictly against the installed wheel (with the
    # type stubs of protobuf and grpc its `typing` extra brings)...
    await run(*pip, "--python", python, "install", "-q", f"{wheel}[typing]")
    sample = tmp_path / SAMPLE.name
    shutil.copy(SAMPLE, sample)
    checked = await run(
        sys.executable, "-m", "mypy", "--strict", "--python-executable", python,
        "--cache-dir", tmp_path / "mypy-cache", sample, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert "Success: no issues found in 1 source file" in checked
    # (The check has teeth: a result used as the wrong type is an error.)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from agentplatform import Client\nname: int = Client().get_session('s')\n")
    checker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mypy", "--strict", "--python-executable", python,
        "--cache-dir", tmp_path / "mypy-cache", wrong, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    complaint, _ = await checker.communicate()
    assert checker.returncode == 1 and b'"Session", variable has type "int"' in complaint
    # ...and does what it says.
    out = await asyncio.wait_for(run(python, "-I", sample, cwd=tmp_path, env=env), 60)
    reply, listed, last_kind, missing, refused, last_type, messages = out.splitlines()
    assert (reply, listed, last_kind, missing) == (
        "alpha bravo",
        "True",
        "run_completed",
        NO_SUCH_SESSION,
    )
    assert (refused, last_type, messages) == ("True", "run.completed", "2")
