"""Exit 0 when a gRPC server reports SERVING: `python -m services.rpc.healthcheck HOST:PORT`.

For container health checks (docker compose), so the image needs no grpc_health_probe
binary. Kubernetes asks the same health service through its native gRPC probes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def is_serving(address: str, *, service: str = "", timeout: float = 3.0) -> bool:
    """Ask the health service at `address` whether `service` ("" = the server) is SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> None:
    """Check the address on the command line; exit 0 if SERVING, else 1."""
    parser = argparse.ArgumentParser(
        prog="ap-service healthcheck", description="Exit 0 when the gRPC server is SERVING."
    )
    parser.add_argument("address", help="HOST:PORT of the server, e.g. 127.0.0.1:50051")
    parser.add_argument("--service", default="", help="a service name (default: the server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    serving = is_serving(args.address, service=args.service, timeout=args.timeout)
    print("SERVING" if serving else "NOT SERVING")
    sys.exit(0 if serving else 1)


if __name__ == "__main__":
    main()
