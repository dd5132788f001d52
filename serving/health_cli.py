"""``seismag health``: is the local server SERVING? For container health checks.

It reads the server's own settings (``SEISMAG_*`` variables, :meth:`ServeConfig.from_env`), so
a container started with ``-e SEISMAG_PORT=9000`` or with TLS checks the port and the protocol
the server really uses instead of a hard-coded plaintext 127.0.0.1:8500.
Exit status: 0 SERVING, 1 anything else (not serving, unreachable, no answer in time),
2 a configuration it cannot use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seismag.serving.config import ServeConfig

_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def local_target(config: ServeConfig) -> str:
    """Where a process beside the server reaches it: the bound host, or loopback when it binds
    every address (``localhost`` under TLS, the name server certificates usually carry)."""
    if config.host in _ANY_ADDRESS:
        host = "localhost" if config.tls_cert else "127.0.0.1"
    else:
        host = config.host
    return f"[{host}]:{config.port}" if ":" in host else f"{host}:{config.port}"


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what}: {exc}") from None


def cmd_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        config = ServeConfig.from_env().validate()
        target = args.server or local_target(config)
        if config.tls_cert or args.tls_ca:
            # A self-signed server certificate is its own CA, so it verifies itself.
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(args.tls_ca or config.tls_cert, "the CA certificate"),
                private_key=_read(args.tls_key, "--tls-key"),
                certificate_chain=_read(args.tls_cert, "--tls-cert"),
            )
            channel = grpc.secure_channel(target, credentials)
        else:
            channel = grpc.insecure_channel(target)
    except ValueError as exc:
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 2
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def add_health_command(sub) -> None:
    p = sub.add_parser(
        "health",
        help="exit 0 when the local server reports SERVING (container health checks)",
        description="Ask a server's grpc.health.v1 service. Without --server it finds the "
        "server as `seismag serve` would bind it from the same SEISMAG_* environment variables "
        "(port, host, TLS); under mutual TLS give a client certificate.",
    )
    p.add_argument("--server", help="HOST:PORT (default: from SEISMAG_HOST and SEISMAG_PORT)")
    p.add_argument(
        "--tls-ca", help="CA to verify the server (default under TLS: SEISMAG_TLS_CERT itself)"
    )
    p.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="client key (mutual TLS)")
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    p.set_defaults(func=cmd_health)
