"""The server a benchmark measures: one already running, one in this process, or one spawned.

* ``remote``: ``--server HOST:PORT``, measured as it is.
* ``in-process``: :func:`seismag.serving.protocols.server.build_server` on 127.0.0.1:0 in this
  process, so
  the numbers include gRPC and serialisation; the client shares the GIL with the server, which
  costs little for a handful of Predict calls but a lot for thousands of streamed packets.
* ``spawn``: ``seismag serve --port 0`` as a child process, the way it is deployed; the client
  then competes for cores but not for the interpreter lock. The report uses this mode.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from seismag.serving.config import DEFAULTS

MODES = ("remote", "in-process", "spawn")
_SERVING_LINE = re.compile(r"seismag serving on (\S+):(\d+)")


@dataclass
class ServerOptions:
    """What an in-process or spawned server is started with (``seismag serve``'s options)."""

    models: list[Path] = field(default_factory=list)
    """ONNX files; empty = the model embedded in the package."""
    threads: int = DEFAULTS.threads
    workers: int | None = DEFAULTS.workers
    """Parallel model runs; None = ``seismag serve``'s default (usable cores / threads)."""
    max_batch: int = DEFAULTS.max_batch
    max_queue_delay_ms: float = DEFAULTS.max_queue_delay_ms

    def resolved_workers(self) -> int:
        from seismag.serving.executor.runtime import default_workers

        return self.workers or default_workers(self.threads)

    def load_registry(self, **extra):
        """The models loaded with these options (``extra``: more ``ModelRegistry.from_paths``
        arguments, e.g. ``backend=``)."""
        from seismag.serving.executor.runtime import ModelRegistry, default_model_path

        return ModelRegistry.from_paths(
            self.models or [default_model_path()],
            threads=self.threads,
            workers=self.resolved_workers(),
            max_batch=self.max_batch,
            max_queue_delay_ms=self.max_queue_delay_ms,
            **extra,
        )

    def describe(self) -> str:
        names = ", ".join(p.stem for p in self.models) or "embedded PhaseNetMag"
        return (
            f"{names}; --threads {self.threads} --workers {self.resolved_workers()} "
            f"--max-batch {self.max_batch} --max-queue-delay-ms {self.max_queue_delay_ms:g}"
        )


@dataclass
class Target:
    address: str
    mode: str
    description: str
    pid: int | None = None
    """The server's process (this one when in-process), e.g. to read its memory."""


def _wait_serving(address: str, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    end = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"the server at {address} did not report SERVING within {timeout:.0f} s")


@contextmanager
def _in_process(options: ServerOptions) -> Iterator[Target]:
    from seismag.serving.protocols.server import build_server

    registry = options.load_registry()
    try:
        server = build_server(registry, address="127.0.0.1:0").start()
        try:
            yield Target(f"127.0.0.1:{server.port}", "in-process", options.describe(), os.getpid())
        finally:
            server.stop(1)
    finally:
        registry.close()


@contextmanager
def _spawned(options: ServerOptions, timeout: float = 120.0) -> Iterator[Target]:
    cmd = [sys.executable, "-m", "seismag", "serve", "--port", "0", "--threads"]
    cmd += [str(options.threads), "--workers", str(options.resolved_workers())]
    cmd += ["--max-batch", str(options.max_batch)]
    cmd += ["--max-queue-delay-ms", str(options.max_queue_delay_ms)]
    if options.models:
        cmd += ["--models", *map(str, options.models)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    lines: list[str] = []
    found = threading.Event()
    address: list[str] = []

    def pump() -> None:  # keep reading, or a chatty server would block on a full pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = _SERVING_LINE.search(line)
            if m and not found.is_set():
                address.append(f"{m.group(1)}:{m.group(2)}")
                found.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        end = time.monotonic() + timeout
        while not found.wait(0.2):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("`seismag serve` did not start:\n" + "".join(lines[-20:]))
        _wait_serving(address[0], max(end - time.monotonic(), 1.0))
        yield Target(
            address[0], "spawn", f"spawned `seismag serve`: {options.describe()}", proc.pid
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(2)


@contextmanager
def open_target(
    mode: str, *, server: str | None = None, options: ServerOptions | None = None
) -> Iterator[Target]:
    """A :class:`Target` for the duration of the block; started servers are stopped after."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "remote":
        if not server:
            raise ValueError("remote mode needs --server HOST:PORT")
        _wait_serving(server, 30.0)
        yield Target(server, "remote", f"server at {server}")
        return
    options = options or ServerOptions()
    ctx = _in_process(options) if mode == "in-process" else _spawned(options)
    with ctx as target:
        yield target


def export_models(names: Sequence[str], out: Path, *, int8: bool = False) -> dict[str, Path]:
    """ONNX files for ``names`` (untrained weights) under ``out``, exported once and reused.

    Benchmarks need every model as a file the server can load; only PhaseNetMag ships inside the
    package. Latency does not depend on the weights' values, so the random initialisation does.
    """
    from seismag.export.onnx_export import export_onnx
    from seismag.models import build_model

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in names:
        path = out / f"{name}.onnx"
        if not path.exists():
            import torch

            torch.manual_seed(0)
            export_onnx(build_model(name).eval(), path)
        paths[name] = path
        if int8:
            from seismag.export.quantize import quantize_int8

            q = out / f"{name}.int8.onnx"
            if not q.exists():
                quantize_int8(path, q)
            paths[f"{name}.int8"] = q
    return paths
