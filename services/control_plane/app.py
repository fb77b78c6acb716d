"""Assemble the control plane: pool, event fan-out, listener, servicers, gRPC server."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from agentplatform.dispatch.v1 import dispatch_service_pb2, dispatch_service_pb2_grpc
from agentplatform.v1 import (
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    invitation_service_pb2,
    invitation_service_pb2_grpc,
    profile_service_pb2,
    profile_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)

from services.control_plane import metrics
from services.control_plane.api_keys import ApiKeyService
from services.control_plane.auth import Authenticator, KeyCache
from services.control_plane.dispatch import DispatchService
from services.control_plane.events import ClaimWaiters, EventBus, Listener, Notifier
from services.control_plane.invitations import InvitationService
from services.control_plane.lifecycle import RunLifecycle
from services.control_plane.profiles import ProfileService
from services.control_plane.revocation import Revocations
from services.control_plane.runs import RunService
from services.control_plane.runtime import Runtime
from services.control_plane.secrets import VaultClient, secret_bindings
from services.control_plane.sessions import SessionService
from services.control_plane.settings import ControlPlaneSettings
from services.control_plane.tools import GatewayClient, tool_bindings
from services.control_plane.usage import UsageService
from services.control_plane.workspaces import WorkspaceService
from services.rpc.db import create_pool
from services.rpc.hosted_models import HostedModelSettings
from services.rpc.server import GrpcServer, ServiceBinding
from services.rpc.settings import SettingsError

log = structlog.get_logger(service="control_plane")


def _full_name(module: object, service: str) -> str:
    return module.DESCRIPTOR.services_by_name[service].full_name  # type: ignore[attr-defined,no-any-return]


class ControlPlane:
    """One control-plane process."""

    def __init__(self, settings: ControlPlaneSettings, model: HostedModelSettings) -> None:
        if not settings.database_url:
            raise SettingsError("AP_DATABASE_URL is required by the control plane")
        if settings.internal_token is None:
            raise SettingsError("AP_INTERNAL_TOKEN is required by the control plane")
        self.settings = settings
        self.model = model
        self._server: GrpcServer | None = None
        self._runtime: Runtime | None = None
        self._listener: Listener | None = None
        self._lifecycle: RunLifecycle | None = None
        self._vault: VaultClient | None = None
        self._gateway: GatewayClient | None = None
        self._unwatch_queue: Callable[[], None] | None = None

    @property
    def address(self) -> str:
        """Return the gRPC address once started."""
        assert self._server is not None
        return self._server.address

    @property
    def listener(self) -> Listener:
        """Return the LISTEN connection's keeper once started."""
        assert self._listener is not None
        return self._listener

    @property
    def runtime(self) -> Runtime:
        """Return the shared runtime once started."""
        assert self._runtime is not None
        return self._runtime

    async def start(self) -> None:
        """Connect to Postgres, start the fan-out and serve gRPC."""
        settings = self.settings
        assert settings.database_url is not None and settings.internal_token is not None
        vault = self._vault = VaultClient(settings) if settings.vault_address else None
        gateway = self._gateway = GatewayClient(settings) if settings.gateway_address else None
        pool = await create_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            application_name="ap-control-plane",
        )
        bus = EventBus(pool, poll_interval=settings.poll_interval_seconds)
        waiters = ClaimWaiters()
        keys = KeyCache()
        revocations = Revocations(pool, keys)
        runtime = Runtime(settings, self.model, pool, bus, Notifier(pool), waiters, revocations)
        self._runtime = runtime
        lifecycle = RunLifecycle(runtime)
        self._lifecycle = lifecycle

        def listening_again() -> None:
            # Whatever was notified while the listener was away is read from the database.
            bus.refresh_all()
            revocations.listening()

        self._listener = Listener(
            settings.database_url,
            on_events=bus.hint,
            on_queued=waiters.wake_one,
            on_principal=revocations.hear,
            on_principal_heard=revocations.acknowledged,
            on_reconnect=listening_again,
            on_lost=revocations.deaf,
            own_backends=runtime.notifier.own_backends,
        )
        bus.start()
        runtime.notifier.start()
        self._listener.start()
        lifecycle.start()
        self._unwatch_queue = metrics.watch_queue_depth(pool)
        for offered in self.model.offered:
            log.info("hosted_model_offered", id=offered.id, api=offered.api)
        if not self.model.configured:
            log.warning(
                "hosted_model_unavailable",
                detail="no AP_MODEL_BASE_URL / AP_MODEL_NAME or AP_MODELS: CreateSession fails",
            )
        self._server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            authenticator=Authenticator(pool, settings.internal_token.get_secret_value(), keys),
            max_message_bytes=settings.max_message_bytes,
            quiet_methods={
                "/agentplatform.dispatch.v1.DispatchService/AppendRunEvents",
                "/agentplatform.dispatch.v1.DispatchService/HeartbeatRun",
                "/agentplatform.dispatch.v1.DispatchService/ClaimRun",
            },
            bindings=[
                ServiceBinding(
                    _full_name(session_service_pb2, "SessionService"),
                    lambda s: session_service_pb2_grpc.add_SessionServiceServicer_to_server(
                        SessionService(runtime, lifecycle), s
                    ),
                ),
                ServiceBinding(
                    _full_name(run_service_pb2, "RunService"),
                    lambda s: run_service_pb2_grpc.add_RunServiceServicer_to_server(
                        RunService(runtime, lifecycle), s
                    ),
                ),
                ServiceBinding(
                    _full_name(profile_service_pb2, "ProfileService"),
                    lambda s: profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(
                        ProfileService(runtime), s
                    ),
                ),
                ServiceBinding(
                    _full_name(workspace_service_pb2, "WorkspaceService"),
                    lambda s: workspace_service_pb2_grpc.add_WorkspaceServiceServicer_to_server(
                        WorkspaceService(runtime), s
                    ),
                ),
                ServiceBinding(
                    _full_name(api_key_service_pb2, "ApiKeyService"),
                    lambda s: api_key_service_pb2_grpc.add_ApiKeyServiceServicer_to_server(
                        ApiKeyService(runtime), s
                    ),
                ),
                ServiceBinding(
                    _full_name(invitation_service_pb2, "InvitationService"),
                    lambda s: invitation_service_pb2_grpc.add_InvitationServiceServicer_to_server(
                        InvitationService(runtime), s
                    ),
                ),
                ServiceBinding(
                    _full_name(usage_service_pb2, "UsageService"),
                    lambda s: usage_service_pb2_grpc.add_UsageServiceServicer_to_server(
                        UsageService(runtime), s
                    ),
                ),
                ServiceBinding(
                    _full_name(dispatch_service_pb2, "DispatchService"),
                    lambda s: dispatch_service_pb2_grpc.add_DispatchServiceServicer_to_server(
                        DispatchService(runtime, lifecycle), s
                    ),
                ),
                *secret_bindings(vault),
                *tool_bindings(runtime, gateway),
            ],
        )
        await self._server.start()
        log.info("control_plane_listening", address=self.address)

    async def stop(self) -> None:
        """End streams at once (UNAVAILABLE: reconnect), let unary calls finish, disconnect."""
        if self._runtime is not None:
            self._runtime.bus.close()
        if self._lifecycle is not None:
            await self._lifecycle.stop()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_seconds)
        if self._vault is not None:
            await self._vault.close()
        if self._gateway is not None:
            await self._gateway.close()
        if self._listener is not None:
            await self._listener.stop()
        if self._unwatch_queue is not None:
            self._unwatch_queue()
        if self._runtime is not None:
            await self._runtime.bus.stop()
            await self._runtime.revocations.stop()
            await self._runtime.notifier.stop()
            await self._runtime.pool.close()
