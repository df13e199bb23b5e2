"""Health of a participant's services, for its operator (a kit's ``health.sh``, a monitoring probe).

The SuperLink and each SuperNode serve gRPC's standard health service (``grpc.health.v1``, plain
text) on the health address their kit gives them (``--health-server-address``, loopback or the
coordinator's control address: never a public one). ``check`` asks it; the warm SuperExec, which
has no health service, is checked by its PID in the kit (``health.sh`` does both).

    python -m mmdomain_federated.health 127.0.0.1:9098 [HOST:PORT ...]   # exit 0: every one SERVING
"""

from __future__ import annotations

import sys


def check(address: str, timeout: float = 3.0) -> str:
    """``SERVING``, ``NOT_SERVING``... as the service answers, or ``UNREACHABLE (<why>)``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    addresses = list(sys.argv[1:] if argv is None else argv)
    if not addresses:
        print("usage: python -m mmdomain_federated.health HOST:PORT [HOST:PORT ...]", file=sys.stderr)
        return 2
    ok = True
    for address in addresses:
        status = check(address)
        print(f"{address}: {status}")
        ok &= status == "SERVING"
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
