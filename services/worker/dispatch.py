"""The worker's side of the dispatch API: which control-plane replica to call, and retries.

`AP_CONTROL_PLANE_ADDRESS` names one replica or several (`cp-a:50051,cp-b:50051`); an entry
that is a DNS name resolving to several addresses reaches all of them (gRPC balances calls
over those that answer). Calls go to the current entry; when it fails, the worker moves to
the next entry, and a fenced call is tried again:

    call ─► current replica ─► reply
              │ UNAVAILABLE, DEADLINE_EXCEEDED: the replica is away ─► next replica
              │ UNAVAILABLE / DATABASE_UNAVAILABLE: the database is away ─► same replica
              │ ABORTED / CONCURRENT_UPDATE: a deadlock was broken ──────► same replica
              ├─► back off, call again: until the run's lease would expire
              └ LEASE_LOST ─► LeaseLostError: another worker holds the run now
              └ NOT_FOUND ──► LeaseLostError: the run was deleted with its session

Trying again is safe: a fenced write (append, heartbeat, finish, release) that was applied is
accepted again unchanged, and the fencing token refuses a worker whose lease was taken over,
whichever replica it reaches. So a replica's death or a database restart shorter than the
lease costs a run nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from typing import TypeAlias, TypeVar

import grpc
import structlog
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.dispatch.v1 import dispatch_service_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.rpc.errors import Reason, has_reason

log = structlog.get_logger(service="worker")

Stub: TypeAlias = "dispatch_service_pb2_grpc.DispatchServiceAsyncStub"
Metadata = tuple[tuple[str, str], ...]
T = TypeVar("T")

RPC_TIMEOUT = 10.0
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
# Several addresses behind one DNS name: keep a connection to each and spread the calls.
_CHANNEL_OPTIONS = (("grpc.lb_policy_name", "round_robin"),)


class LeaseLostError(Exception):
    """The control plane refused a call: another worker holds the run now, or it was deleted."""


def is_transient(err: grpc.aio.AioRpcError) -> bool:
    """Tell whether a failed call may succeed if made again (on this replica or another)."""
    return err.code() in TRANSIENT or has_reason(err, Reason.CONCURRENT_UPDATE)


class Lease:
    """The worker's hold on one run: until when it lasts, as far as the worker knows."""

    def __init__(self, expire_time: Timestamp) -> None:
        self.expires = 0.0  # time.monotonic() at which the lease runs out
        self.extend(expire_time)

    def extend(self, expire_time: Timestamp) -> None:
        """Record the expiry the control plane last granted (in a claim or a heartbeat)."""
        remaining = expire_time.ToDatetime(tzinfo=UTC).timestamp() - time.time()
        self.expires = time.monotonic() + remaining


class ControlPlane:
    """The dispatch API over every configured replica, one of them current."""

    def __init__(self, addresses: Sequence[str], metadata: Metadata) -> None:
        if not addresses:
            raise ValueError("at least one control-plane address is required")
        self.addresses = list(addresses)
        self._metadata = metadata
        self._channels = [
            grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS) for address in addresses
        ]
        self._stubs: list[Stub] = [
            dispatch_service_pb2_grpc.DispatchServiceStub(channel) for channel in self._channels
        ]
        self._current = 0

    @property
    def address(self) -> str:
        """Return the entry calls go to now."""
        return self.addresses[self._current]

    def _failed(self, index: int, err: grpc.aio.AioRpcError) -> None:
        # Concurrent calls that failed on the same replica move the worker once, not past a
        # healthy replica.
        if index != self._current or len(self._stubs) == 1:
            return
        self._current = (index + 1) % len(self._stubs)
        log.warning(
            "control_plane_failover",
            failed=self.addresses[index],
            code=err.code().name,
            now_using=self.address,
        )

    async def _once(self, rpc: Callable[[Stub], Awaitable[T]]) -> T:
        index = self._current
        try:
            return await rpc(self._stubs[index])
        except grpc.aio.AioRpcError as err:
            # NOT_FOUND: the run was deleted with its session; nobody may write to it any more.
            if has_reason(err, Reason.LEASE_LOST) or err.code() == grpc.StatusCode.NOT_FOUND:
                raise LeaseLostError() from None
            # A replica that answers that its database is away is healthy, and the others
            # share that database: stay, and let the caller try again.
            if err.code() in TRANSIENT and not has_reason(err, Reason.DATABASE_UNAVAILABLE):
                self._failed(index, err)
            raise

    async def _fenced(self, rpc: Callable[[Stub], Awaitable[T]], lease: Lease) -> T:
        """Make a fenced call, trying again on transient failures while the lease may hold."""
        backoff = _FIRST_BACKOFF
        while True:
            try:
                return await self._once(rpc)
            except grpc.aio.AioRpcError as err:
                if not is_transient(err) or time.monotonic() + backoff > lease.expires:
                    raise
                log.info("dispatch_retry", code=err.code().name, control_plane=self.address)
            # Full jitter, so the workers of a fleet do not come back in step.
            await asyncio.sleep(random.uniform(0, backoff))  # noqa: S311 - not a secret
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def claim(self, request: pb.ClaimRunRequest, *, timeout: float) -> pb.ClaimRunResponse:
        """Wait for a run to claim, once; a transient failure moves to the next replica."""
        return await self._once(
            lambda stub: stub.ClaimRun(request, metadata=self._metadata, timeout=timeout)
        )

    async def heartbeat(
        self, request: pb.HeartbeatRunRequest, *, timeout: float
    ) -> pb.HeartbeatRunResponse:
        """Extend a lease, once: the next heartbeat is the retry."""
        return await self._once(
            lambda stub: stub.HeartbeatRun(request, metadata=self._metadata, timeout=timeout)
        )

    async def append(
        self, request: pb.AppendRunEventsRequest, lease: Lease
    ) -> pb.AppendRunEventsResponse:
        """Append a batch of a run's events."""
        return await self._fenced(
            lambda stub: stub.AppendRunEvents(
                request, metadata=self._metadata, timeout=RPC_TIMEOUT
            ),
            lease,
        )

    async def finish(self, request: pb.FinishRunRequest, lease: Lease) -> pb.FinishRunResponse:
        """End a run with its last events and its outcome."""
        return await self._fenced(
            lambda stub: stub.FinishRun(request, metadata=self._metadata, timeout=RPC_TIMEOUT),
            lease,
        )

    async def suspend(self, request: pb.SuspendRunRequest, lease: Lease) -> pb.SuspendRunResponse:
        """Park a run until people decide its pending tool calls; the lease ends with it."""
        return await self._fenced(
            lambda stub: stub.SuspendRun(request, metadata=self._metadata, timeout=RPC_TIMEOUT),
            lease,
        )

    async def release(self, request: pb.ReleaseRunRequest, lease: Lease) -> None:
        """Hand a run back so that another worker can claim it now."""
        await self._fenced(
            lambda stub: stub.ReleaseRun(request, metadata=self._metadata, timeout=RPC_TIMEOUT),
            lease,
        )

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close(None)
