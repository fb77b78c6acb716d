"""One bootstrap for every service: grpc.aio server, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.rpc.interceptors import Authenticator, ServiceInterceptor
from services.rpc.metrics import MetricsServer
from services.rpc.settings import ServiceSettings

log = structlog.get_logger()


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer to serve, by its fully qualified gRPC service name."""

    full_name: str
    register: Callable[[grpc.aio.Server], None]


class GrpcServer:
    """A grpc.aio server with health checking, reflection and our interceptor."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        bindings: Sequence[ServiceBinding],
        authenticator: Authenticator | None,
        max_message_bytes: int,
        quiet_methods: Collection[str] = (),
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self._host = host
        self._credentials = credentials
        self._requested_port = port
        self._bindings = bindings
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._server = grpc.aio.server(
            interceptors=[ServiceInterceptor(authenticator, quiet_methods=quiet_methods)],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.port = 0

    @property
    def address(self) -> str:
        """Return host:port once started."""
        return f"{self._host}:{self.port}"

    async def start(self) -> int:
        """Bind, start serving and mark every service SERVING; return the bound port."""
        for binding in self._bindings:
            binding.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [b.full_name for b in self._bindings]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._server,
        )
        where = f"{self._host}:{self._requested_port}"
        self.port = (
            self._server.add_insecure_port(where)
            if self._credentials is None
            else self._server.add_secure_port(where, self._credentials)
        )
        if self.port == 0:
            raise OSError(f"cannot bind {self._host}:{self._requested_port}")
        await self._server.start()
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, then let in-flight calls finish for up to `grace` seconds."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)


class Service(Protocol):
    """A runnable service: started once, stopped once."""

    @property
    def settings(self) -> ServiceSettings: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signal(service: Service, name: str) -> None:
    """Serve the service and the process's metrics until SIGTERM or SIGINT, then stop both.

    Metrics stop last, so a draining service stays observable.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    metrics = MetricsServer(service.settings.grpc_host, service.settings.metrics_port or 0)
    await metrics.start()
    await service.start()
    log.info("service_started", service=name, metrics=metrics.url)
    await stopping.wait()
    log.info("service_stopping", service=name)
    await service.stop()
    await metrics.stop()
    log.info("service_stopped", service=name)


def run_main(make_service: Callable[[], Awaitable[Service] | Service], name: str) -> None:
    """Run a service as a process's main program."""

    async def main() -> None:
        made = make_service()
        service = await made if isinstance(made, Awaitable) else made
        await run_until_signal(service, name)

    asyncio.run(main())
