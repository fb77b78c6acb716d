"""Prometheus metrics: each process's `/metrics` endpoint and the gRPC request metrics.

Metrics live in prometheus_client's default registry, one per process. Each service declares
its own in its `metrics` module; the per-RPC ones are declared here and recorded by the
interceptor next to the canonical log line. The endpoint is an aiohttp server inside the
service's event loop, so a gauge that needs the database (the queue depth) is read by an
async hook right before a scrape is answered instead of by a timer that runs unwatched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import grpc
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry

log = structlog.get_logger()

GRPC_REQUESTS = Counter(
    "ap_grpc_requests",
    "gRPC requests handled (health and reflection excluded), by full method and status code.",
    ["method", "code"],
)
GRPC_REQUEST_DURATION = Histogram(
    "ap_grpc_request_duration_seconds",
    "Time from a request's arrival to its status, by full method; a stream counts until it ends.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

ScrapeHook = Callable[[], Awaitable[None]]
_scrape_hooks: list[ScrapeHook] = []

# A scrape must answer even when the database does not; the stale value is served instead.
_HOOK_TIMEOUT_S = 2.0


def observe_rpc(method: str, code: grpc.StatusCode, seconds: float) -> None:
    """Count one finished RPC and record how long it took."""
    GRPC_REQUESTS.labels(method, code.name).inc()
    GRPC_REQUEST_DURATION.labels(method).observe(seconds)


def refresh_before_scrape(hook: ScrapeHook) -> Callable[[], None]:
    """Await `hook` before every scrape of this process; return the function that removes it."""
    _scrape_hooks.append(hook)

    def remove() -> None:
        # A service stopped twice removes its hook twice.
        with contextlib.suppress(ValueError):
            _scrape_hooks.remove(hook)

    return remove


async def _run_hooks() -> None:
    """Run every scrape hook at once; a failing or slow hook is logged and skipped."""
    hooks = list(_scrape_hooks)
    results = await asyncio.gather(
        *(asyncio.wait_for(hook(), _HOOK_TIMEOUT_S) for hook in hooks), return_exceptions=True
    )
    for hook, result in zip(hooks, results, strict=True):
        if isinstance(result, Exception):
            log.warning("metrics_refresh_failed", hook=repr(hook), error=repr(result))


class MetricsServer:
    """Serve the registry in the Prometheus text format on `http://host:port/metrics`."""

    def __init__(self, host: str, port: int, *, registry: CollectorRegistry = REGISTRY) -> None:
        """Prepare to listen on `host:port`; port 0 picks a free one."""
        self._host = host
        self._requested_port = port
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Return the metrics URL once started."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> int:
        """Start listening and return the bound port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._requested_port).start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        await _run_hooks()
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
