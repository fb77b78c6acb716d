"""Assemble a worker: claim loops, the model client, a health-only gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import grpc
import httpx
import structlog
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.gateway.v1 import gateway_service_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from services.rpc.hosted_models import HostedModelSettings
from services.rpc.internal_auth import INTERNAL_TOKEN_HEADER, internal_channel
from services.rpc.server import GrpcServer
from services.rpc.settings import SettingsError
from services.worker.dispatch import ControlPlane
from services.worker.doctor import check_models
from services.worker.execution import RunExecution, StopReason
from services.worker.metrics import HOSTED_MODEL_UP
from services.worker.model import HostedModel
from services.worker.providers import open_hosted_models
from services.worker.settings import WorkerSettings
from services.worker.tools import RunTools

log = structlog.get_logger(service="worker")


class Worker:
    """One worker process running up to `worker_concurrency` runs at once."""

    def __init__(self, settings: WorkerSettings, model: HostedModelSettings) -> None:
        if settings.internal_token is None:
            raise SettingsError("AP_INTERNAL_TOKEN is required by the worker")
        self.settings = settings
        self.model = model
        self._metadata = ((INTERNAL_TOKEN_HEADER, settings.internal_token.get_secret_value()),)
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._executing: dict[asyncio.Task[None], RunExecution] = {}
        self._control_plane: ControlPlane | None = None
        self._gateway_channel: grpc.aio.Channel | None = None
        self._tools: RunTools | None = None
        self._http: httpx.AsyncClient | None = None
        self._checks: asyncio.Task[None] | None = None
        self._server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            bindings=[],
            authenticator=None,
            max_message_bytes=settings.max_message_bytes,
        )

    async def start(self) -> None:
        """Connect to the control plane and start claiming."""
        if self.model.configured:
            for config in self.model.offered:
                log.info(
                    "hosted_model",
                    id=config.id,
                    api=config.api,
                    base_url=config.base_url,
                    model=config.model,
                )
        else:
            log.warning("hosted_model_unavailable", detail="runs will fail")
        self._control_plane = ControlPlane(self.settings.control_plane_addresses, self._metadata)
        self._http = httpx.AsyncClient(
            trust_env=False,
            limits=httpx.Limits(max_connections=self.settings.worker_concurrency * 2),
        )
        models = open_hosted_models(self.model, self._http)
        # Say at once, in the log, whether each model answers; the worker starts either way
        # (a model that is down now may be up by the first run).
        self._checks = asyncio.create_task(self._check_models())
        if self.settings.gateway_address:
            token = self.settings.gateway_call_token
            self._gateway_channel, gateway_metadata = internal_channel(
                self.settings.gateway_address,
                self.settings.service_tls(),
                token.get_secret_value() if token else None,
                needs="AP_GATEWAY_CALL_TOKEN",
            )
            self._tools = RunTools(
                gateway_service_pb2_grpc.GatewayServiceStub(self._gateway_channel),
                gateway_metadata,
                progress_seconds=self.settings.tool_progress_seconds,
            )
        self._loops = [
            asyncio.create_task(self._claim_forever(self._control_plane, models), name=f"claim-{i}")
            for i in range(self.settings.worker_concurrency)
        ]
        await self._server.start()
        log.info("worker_started", control_plane=self.settings.control_plane_addresses)

    @property
    def runs_in_flight(self) -> int:
        """Return how many runs this worker holds now (each one a claim loop's slot)."""
        return len(self._executing)

    async def _check_models(self) -> None:
        assert self._http is not None
        for check in await check_models(self.model, self._http):
            HOSTED_MODEL_UP.labels(check.model.id, check.model.api).set(1 if check.ok else 0)
            if check.ok:
                log.info("hosted_model_check", model=check.model.id, detail=check.message)
            else:
                log.error("hosted_model_check_failed", model=check.model.id, detail=check.message)

    async def _claim_forever(
        self, control_plane: ControlPlane, models: Mapping[str, HostedModel]
    ) -> None:
        wait = Duration()
        wait.FromMilliseconds(int(self.settings.claim_wait_seconds * 1000))
        request = pb.ClaimRunRequest(worker_id=self.settings.worker_id, wait=wait)
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                response = await control_plane.claim(
                    request, timeout=self.settings.claim_wait_seconds + 10
                )
                backoff = 0.05
            except grpc.aio.AioRpcError as err:
                log.warning("claim_failed", code=err.code().name, details=err.details())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not response.HasField("claim"):
                continue
            current = asyncio.current_task()
            assert current is not None
            execution = RunExecution(
                control_plane,
                response.claim,
                models,
                tools=self._tools,
                max_steps=self.settings.max_steps,
            )
            self._executing[current] = execution
            try:
                await execution.execute()
            except grpc.aio.AioRpcError as err:
                # The run stays leased; once the lease expires it is rescued as a new attempt.
                log.warning("run_execution_failed", run=response.claim.run, code=err.code().name)
            finally:
                del self._executing[current]

    async def stop(self) -> None:
        """Drain: stop claiming, let held runs finish within the grace, release the rest."""
        self._stopping.set()
        # Loops waiting in ClaimRun hold nothing: stop them now. Runs keep heartbeating.
        for task in self._loops:
            if task not in self._executing:
                task.cancel()
        pending: set[asyncio.Task[None]] = set()
        if self._loops:
            _done, pending = await asyncio.wait(
                self._loops, timeout=self.settings.shutdown_grace_seconds
            )
        # Hand unfinished runs back so another worker claims them now, not after the lease.
        for task in pending:
            execution = self._executing.get(task)
            if execution is not None:
                log.info("releasing_run", run=execution.run)
                execution.stop(StopReason.RELEASED)
        if pending:
            _done, pending = await asyncio.wait(pending, timeout=5.0)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.stop(0)
        if self._checks is not None:
            self._checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checks
        if self._http is not None:
            await self._http.aclose()
        if self._control_plane is not None:
            await self._control_plane.close()
        if self._gateway_channel is not None:
            await self._gateway_channel.close(None)
