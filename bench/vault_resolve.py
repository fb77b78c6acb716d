"""Measure ResolveSecret against a running stack (`make run`), as the gateway would call it.

Stores `--secrets` secrets through the control plane (with the CLI's configuration), then
resolves them straight from the vault with the gateway's development certificate (written
by `make run` into var/pki/<stack port>): a sequential latency phase, then `--concurrency`
callers sharing the gateway's one channel for `--duration` seconds. Every resolve is a real
one: a row read, two AES-GCM decryptions and an audit record committed in one transaction.
The bench's secrets are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
from agentplatform import error_from_rpc
from agentplatform.v1 import (
    profile_service_pb2,
    profile_service_pb2_grpc,
    secret_service_pb2,
    secret_service_pb2_grpc,
)
from agentplatform.vault.v1 import vault_service_pb2, vault_service_pb2_grpc

from ap_cli.config import ClientConfig, ConfigError, load_client_config
from devtools.measure import percentile
from services.rpc.tls import ServiceTls

REPO = Path(__file__).resolve().parent.parent
RUN = f"sessions/{uuid.uuid4()}/runs/{uuid.uuid4()}"


def describe(label: str, seconds: list[float]) -> str:
    """Format p50/p99/max of durations in milliseconds."""
    if not seconds:
        return f"  {label:<34} no samples"
    ms = [s * 1000 for s in seconds]
    return (
        f"  {label:<34} p50 {percentile(ms, 50):.2f} ms   p99 {percentile(ms, 99):.2f} ms"
        f"   max {max(ms):.2f} ms   (n={len(ms)})"
    )


class Gateway:
    """The gateway's view of the vault: one channel, its certificate, its resolves."""

    def __init__(self, address: str, pki: Path) -> None:
        """Open the gateway's mTLS channel to the vault."""
        tls = ServiceTls.load(pki / "ca.pem", pki / "gateway.pem", pki / "gateway-key.pem")
        self.channel = grpc.aio.secure_channel(address, tls.channel_credentials())
        self.stub = vault_service_pb2_grpc.VaultServiceStub(self.channel)

    async def resolve(self, name: str) -> float:
        """Resolve one secret; return how long it took."""
        started = time.perf_counter()
        await self.stub.ResolveSecret(
            vault_service_pb2.ResolveSecretRequest(name=name, run=RUN), timeout=10
        )
        return time.perf_counter() - started


async def store_secrets(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], count: int, size: int
) -> tuple[str, list[str]]:
    """Store the bench's secrets through the control plane; return the workspace and ids."""
    profiles = profile_service_pb2_grpc.ProfileServiceStub(channel)
    profile = await profiles.GetProfile(
        profile_service_pb2.GetProfileRequest(name="users/me/profile"), metadata=metadata
    )
    stub = secret_service_pb2_grpc.SecretServiceStub(channel)
    prefix = f"BENCH_{secrets.token_hex(3).upper()}"
    ids = [f"{prefix}_{i:04d}" for i in range(count)]
    for chunk in range(0, count, 32):
        await asyncio.gather(
            *(
                stub.PutSecret(
                    secret_service_pb2.PutSecretRequest(
                        name=f"secrets/{i}", value=secrets.token_bytes(size)
                    ),
                    metadata=metadata,
                    timeout=30,
                )
                for i in ids[chunk : chunk + 32]
            )
        )
    return profile.workspace, ids


async def delete_secrets(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], ids: list[str]
) -> None:
    """Delete the bench's secrets."""
    stub = secret_service_pb2_grpc.SecretServiceStub(channel)
    await asyncio.gather(
        *(
            stub.DeleteSecret(
                secret_service_pb2.DeleteSecretRequest(name=f"secrets/{i}"), metadata=metadata
            )
            for i in ids
        )
    )


async def bench(config: ClientConfig, args: argparse.Namespace) -> None:
    """Store secrets, then run the latency and throughput phases."""
    metadata = (("authorization", f"Bearer {config.api_key}"),)
    control_plane = grpc.aio.insecure_channel(config.endpoint)
    gateway = Gateway(args.vault, args.pki)
    ids: list[str] = []
    try:
        workspace, ids = await store_secrets(control_plane, metadata, args.secrets, args.size)
        names = [f"{workspace}/secrets/{i}" for i in ids]
        for i in range(args.warmup):
            await gateway.resolve(names[i % len(names)])

        sequential = [await gateway.resolve(names[i % len(names)]) for i in range(args.latency)]
        print(f"latency, 1 caller, sequential ({len(sequential)} resolves):")
        print(describe("ResolveSecret", sequential))

        failures: Counter[str] = Counter()
        latencies: list[float] = []
        deadline = time.perf_counter() + args.duration

        async def caller(offset: int) -> None:
            done = 0
            while time.perf_counter() < deadline:
                try:
                    latencies.append(await gateway.resolve(names[(offset + done) % len(names)]))
                except grpc.aio.AioRpcError as err:
                    failures[error_from_rpc(err).reason] += 1
                done += 1

        cpu_before, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(i * 7) for i in range(args.concurrency)))
        window = time.perf_counter() - started
        cpu = (time.process_time() - cpu_before) / window
        print(f"throughput, {args.concurrency} concurrent callers, {window:.2f} s window:")
        print(
            f"  {'completed resolves':<34} {len(latencies)}  →  "
            f"{len(latencies) / window:.0f} resolves/s"
        )
        print(describe("ResolveSecret under load", latencies))
        print(
            f"  {'bench client CPU':<34} {cpu * 100:.0f}% of one core"
            + ("  (client-bound: numbers understate the vault)" if cpu > 0.9 else "")
        )
        if failures:
            print("  failed: " + ", ".join(f"{n} {reason}" for reason, n in failures.items()))
    finally:
        if ids:
            await delete_secrets(control_plane, metadata, ids)
        await gateway.channel.close(None)
        await control_plane.close(None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the benchmark's options."""
    base = int(os.environ.get("AP_STACK_BASE_PORT", "50051"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--vault", default=f"127.0.0.1:{base + 2}", help="the vault's address (stack port + 2)"
    )
    parser.add_argument(
        "--pki",
        type=Path,
        default=REPO / "var" / "pki" / str(base),
        help="make run's certificates (var/pki/<stack port>)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers (32)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds under load (10)")
    parser.add_argument("--secrets", type=int, default=200, help="secrets stored (200)")
    parser.add_argument("--size", type=int, default=64, help="bytes per value (64)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured resolves (200)")
    parser.add_argument("--latency", type=int, default=1000, help="sequential resolves (1000)")
    args = parser.parse_args(argv)
    if min(args.concurrency, args.secrets, args.size, args.latency) < 1 or args.duration <= 0:
        parser.error("counts, sizes and the duration must be positive")
    return args


def print_conditions(config: ClientConfig, args: argparse.Namespace) -> None:
    """Print what was measured, where and how."""
    print("Agent Platform vault resolve benchmark")
    print(f"  vault        {args.vault} (mTLS as the gateway, certificates in {args.pki})")
    print(f"  control      {config.endpoint} (stores and deletes the bench's secrets)")
    print(
        f"  machine      {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    print(f"  secrets      {args.secrets} of {args.size} bytes, resolved round-robin")
    print(f"  phases       {args.warmup} warm-up, {args.latency} sequential, then")
    print(
        f"               {args.concurrency} concurrent callers on one channel for "
        f"{args.duration:g} s"
    )
    print()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and return the exit status."""
    args = parse_args(argv)
    try:
        config = load_client_config()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_conditions(config, args)
    try:
        asyncio.run(bench(config, args))
    except grpc.aio.AioRpcError as err:
        print(f"error: {error_from_rpc(err)}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: {err} (is `make run` running? it writes var/pki)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
