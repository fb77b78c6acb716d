"""Start real services in-process on loopback ports for tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from agentplatform.v1 import (
    profile_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    session_service_pb2_grpc,
)
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import SecretStr

from devtools.devmodel import DevModel
from services.control_plane.app import ControlPlane
from services.control_plane.bootstrap import Bootstrapped, create_workspace
from services.control_plane.settings import ControlPlaneSettings
from services.rpc.db import role_dsn
from services.rpc.hosted_models import HostedModelSettings
from services.worker.app import Worker
from services.worker.settings import WorkerSettings
from tests.logcheck import INTERNAL_TOKENS


@dataclass
class Client:
    """Typed stubs on one channel, authenticated with one API key."""

    channel: grpc.aio.Channel
    api_key: str
    workspace: str = ""
    sessions: session_service_pb2_grpc.SessionServiceAsyncStub = field(init=False)
    runs: run_service_pb2_grpc.RunServiceAsyncStub = field(init=False)
    profiles: profile_service_pb2_grpc.ProfileServiceAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = session_service_pb2_grpc.SessionServiceStub(self.channel)
        self.runs = run_service_pb2_grpc.RunServiceStub(self.channel)
        self.profiles = profile_service_pb2_grpc.ProfileServiceStub(self.channel)

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        """Return the call metadata carrying the API key."""
        return (("authorization", f"Bearer {self.api_key}"),)

    async def stream(self, run: str, after: int = 0) -> list[run_pb2.RunEvent]:
        """Read a run's events after a cursor until its terminal event."""
        call = self.runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=run, after_sequence=after),
            metadata=self.auth,
            timeout=30,
        )
        return [response.event async for response in call]


@dataclass
class Stack:
    """A running control plane, worker and dev model on one database."""

    admin_dsn: str
    control_plane: ControlPlane
    worker: Worker | None
    devmodel: DevModel
    internal_token: str
    owner: Client
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        """Return the control plane's address."""
        return self.control_plane.address

    async def new_workspace(self, name: str = "Other", role: str = "owner") -> Client:
        """Create another workspace with one user and return a client for them."""
        made = await self._create_workspace(name, role)
        return self.client(made.api_key, made.workspace)

    async def _create_workspace(self, name: str, role: str) -> Bootstrapped:
        conn = await asyncpg.connect(role_dsn(self.admin_dsn, "ap_control_plane"))
        try:
            return await create_workspace(
                conn, workspace_display_name=name, owner_display_name=f"{name} user", role=role
            )
        finally:
            await conn.close()

    def client(self, api_key: str, workspace: str = "") -> Client:
        """Open a client with its own channel."""
        channel = grpc.aio.insecure_channel(self.address)
        self._channels.append(channel)
        return Client(channel, api_key, workspace)


async def start_control_plane(
    admin_dsn: str, internal_token: str, model: HostedModelSettings, **overrides: Any
) -> ControlPlane:
    """Start one control-plane replica on a loopback port; `overrides` are settings."""
    INTERNAL_TOKENS.add(internal_token)
    settings: dict[str, Any] = {
        "database_url": role_dsn(admin_dsn, "ap_control_plane"),
        "grpc_port": 0,
        "internal_token": SecretStr(internal_token),
        "shutdown_grace_seconds": 0.5,
        "log_level": "warning",
    }
    control_plane = ControlPlane(ControlPlaneSettings(**(settings | overrides)), model)
    await control_plane.start()
    return control_plane


async def start_worker(
    control_plane_address: str, internal_token: str, model: HostedModelSettings, **overrides: Any
) -> Worker:
    """Start one worker attached to a control plane; `overrides` are settings."""
    settings: dict[str, Any] = {
        "grpc_port": 0,
        "control_plane_address": control_plane_address,
        "internal_token": SecretStr(internal_token),
        "worker_concurrency": 8,
        "shutdown_grace_seconds": 1.0,
        "log_level": "warning",
    }
    worker = Worker(WorkerSettings(**(settings | overrides)), model)
    await worker.start()
    return worker


@contextlib.asynccontextmanager
async def start_stack(
    admin_dsn: str,
    *,
    internal_token: str,
    control_plane_model: bool = True,
    worker_model: bool = True,
    with_worker: bool = True,
    model_idle_timeout: float = 2.0,
    model_settings: dict[str, Any] | None = None,
    worker_settings: dict[str, Any] | None = None,
    **control_plane_settings: Any,
) -> AsyncIterator[Stack]:
    """Start the dev model, a control plane and (optionally) a worker; stop them after.

    `model_settings` are HostedModelSettings fields (e.g. `api`, `models`); a `models` list
    there may name the dev model's base URL as `{base_url}`.
    """
    devmodel = DevModel()
    await devmodel.start()
    extra = dict(model_settings or {})
    if "models" in extra:
        extra["models"] = extra["models"].replace("{base_url}", devmodel.base_url)
    else:
        extra = {"base_url": devmodel.base_url, "name": "ap-dev-model", "api_key": None} | extra
    configured = HostedModelSettings(
        connect_timeout_seconds=2.0,
        idle_timeout_seconds=model_idle_timeout,
        **extra,
    )
    unconfigured = HostedModelSettings(base_url=None, name=None, api_key=None)
    control_plane = await start_control_plane(
        admin_dsn,
        internal_token,
        configured if control_plane_model else unconfigured,
        **control_plane_settings,
    )
    worker = (
        await start_worker(
            control_plane.address,
            internal_token,
            configured if worker_model else unconfigured,
            **(worker_settings or {}),
        )
        if with_worker
        else None
    )
    stack = Stack(admin_dsn, control_plane, worker, devmodel, internal_token, owner=None)  # type: ignore[arg-type]
    made = await stack._create_workspace("Test workspace", "owner")
    stack.owner = stack.client(made.api_key, made.workspace)
    try:
        yield stack
    finally:
        for channel in stack._channels:
            await channel.close(None)
        # The stack's current processes: a test may have replaced them (a restart).
        if stack.worker is not None:
            await stack.worker.stop()
        await stack.control_plane.stop()
        await devmodel.stop()


async def expect_error(
    call: Awaitable[object], code: grpc.StatusCode, reason: str
) -> error_details_pb2.ErrorInfo:
    """Await a call that must fail with this status code and ErrorInfo reason."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        assert status is not None, "the error carries no rich status"
        infos = []
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                infos.append(info)
        assert len(infos) == 1, f"expected one ErrorInfo, got {infos}"
        assert infos[0].reason == reason, f"expected {reason}, got {infos[0].reason}"
        assert infos[0].domain == "agentplatform.dev"
        return infos[0]
    raise AssertionError(f"the call succeeded; expected {code.name} {reason}")
