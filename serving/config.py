"""The server's configuration: one object, every default written once.

``seismag serve`` builds its flags from these fields (name, type, default and help), the server
and the executor read them from here, and ListModels/GetModel report them (secrets left out), so
a client can see how the server it talks to batches, hops and limits. Importing it needs neither
grpc nor onnxruntime, so clients may read the defaults too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from seismag.serving.executor.backend import BACKEND_CHOICES
from seismag.serving.executor.picker_runtime import PICKERS
from seismag.serving.pipeline.limits import MAX_INTERVAL_SECONDS, MIN_INTERVAL_SECONDS

DEFAULT_MODEL = "PhaseNetMag"
"""The model embedded in the package (``serving/default_model/``), served without --models."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
ENV_PREFIX = "SEISMAG_"
"""``SEISMAG_PORT=9000`` sets ``port`` (every flag has one): a container's server and its
health check (``seismag health``) then read the same setting."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything a server is started with. ``validate()`` refuses impossible values."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (0.0.0.0 = all)"})
    port: int = field(default=8500, metadata={"help": "gRPC port (0 = any free port)"})
    # The server measures (auto); library callers get ONNX Runtime unless they ask
    # (DEFAULT_BACKEND), so a test or a script does not pay for compiling every runtime.
    backend: str = field(
        default="auto",
        metadata={
            "help": "tensor runtime: ort (ONNX Runtime), openvino, tensorrt, or auto (the "
            "fastest installed one whose outputs match ONNX Runtime within the card's "
            "tolerance, measured per model at warm-up)",
            "choices": BACKEND_CHOICES,
        },
    )
    picker: str = field(
        default="phasenet",
        metadata={
            "help": "P onsets for stations sent without a pick: phasenet (the picker network "
            "shipped with seismag beside the STA/LTA + AIC picker, the earliest onset of either) "
            "or sta_lta_aic (STA/LTA trigger + AIC onset alone); docs/serving.md#p-onsets "
            "compares them",
            "choices": PICKERS,
        },
    )
    threads: int = field(default=1, metadata={"help": "runtime threads per model run"})
    workers: int | None = field(
        default=None,
        metadata={
            "help": "model runs in parallel per model (default: usable cores / threads, <= 4)"
        },
    )
    max_batch: int = field(default=64, metadata={"help": "dynamic batcher's largest batch"})
    max_queue_delay_ms: float = field(
        default=2.0, metadata={"help": "how long the batcher waits to fill a batch, ms"}
    )
    max_queue: int = field(
        default=8192,
        metadata={
            "help": "windows that may wait per model (8192 windows of 3 x 3001 float32 are "
            "about 300 MB)"
        },
    )
    work_threads: int = field(
        default=16,
        metadata={"help": "threads that preprocess Predict requests and wait on the batcher"},
    )
    max_message_mb: float = field(default=64.0, metadata={"help": "largest message in MiB"})
    stream_hop: float = field(
        default=1.0, metadata={"help": "seconds of data between stream updates, by default"}
    )
    series_interval: float = field(
        default=1.0, metadata={"help": "Predict's magnitude series spacing, by default, s"}
    )
    grace: float = field(
        default=10.0,
        metadata={
            "help": "seconds in-flight RPCs get after SIGTERM; the process exits within a "
            "second after"
        },
    )
    inventory: str | None = field(
        default=None,
        metadata={
            "help": "StationXML file, or folder of *.xml files: instrument responses for data "
            "sent in counts without StationXML (reloaded on SIGHUP and when the files change)",
            "path": True,
        },
    )
    station_table: str | None = field(
        default=None,
        metadata={
            "help": "TOML station table (seismag station-table): station corrections and the "
            "shared error fraction for event magnitudes",
            "path": True,
        },
    )
    inventory_poll: float = field(
        default=10.0,
        metadata={"help": "seconds between looks for changed inventory files (0 = SIGHUP only)"},
    )
    gil_switch_ms: float = field(
        default=0.2,
        metadata={
            "help": "interpreter switch interval in ms (0 = Python's 5 ms); small keeps streams "
            "prompt"
        },
    )
    metrics_port: int | None = field(
        default=None, metadata={"help": "serve Prometheus metrics on this port"}
    )
    http_port: int | None = field(
        default=None,
        metadata={
            "help": "also serve the Open Inference Protocol's HTTP/REST binding (KServe v2, "
            "Triton's HTTP API) on this port, with the gRPC port's TLS and tokens (0 = any "
            "free port; default: off)"
        },
    )
    default_model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "model for requests naming none. If it is not loaded (--models), the "
            "server refuses to start, except with this default unchanged and one model "
            "loaded: that one is the default",
            "metavar": "NAME",
        },
    )
    log_level: str = field(
        default="INFO",
        metadata={"help": "least severe log level written", "choices": LOG_LEVELS},
    )
    log_format: str = field(
        default="text",
        metadata={
            "help": "text (one line per record) or json (one JSON object per line)",
            "choices": LOG_FORMATS,
        },
    )
    tls_cert: str | None = field(
        default=None, metadata={"help": "server certificate (PEM)", "path": True}
    )
    tls_key: str | None = field(
        default=None, metadata={"help": "server private key (PEM)", "path": True}
    )
    tls_client_ca: str | None = field(
        default=None, metadata={"help": "CA for client certificates (mutual TLS)", "path": True}
    )
    ensemble: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "NAME=MODEL,MODEL[,...]: also serve the members' mean as model NAME, its "
            "sigma including their spread (Predict only; repeatable)",
            "multiple": True,
        },
    )
    encoder: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "FILE.onnx: also serve this pretraining encoder (seismag export-encoder) for "
            "the Embed RPC and the Open Inference Protocol (repeatable)",
            "multiple": True,
            "path": True,
        },
    )
    field_model: str | None = field(
        default=None,
        metadata={
            "help": "FILE.onnx: also serve this sparse-field reconstruction model "
            "(seismag.export.field_export) for seismag.v1.FieldService/Reconstruct; 'default' "
            "is the FieldFlow shipped in the package",
            "path": True,
        },
    )
    field_concurrency: int = field(
        default=2,
        metadata={
            "help": "reconstructions in flight at once (running or waiting for a work thread); "
            "more are refused with RESOURCE_EXHAUSTED, so they never hold every work thread "
            "Predict needs; below work_threads"
        },
    )
    tokens: tuple[str, ...] = field(default=(), metadata={"secret": True, "cli": False})
    """Bearer tokens; every RPC but health then needs one."""

    def __post_init__(self) -> None:
        # Flags given several times arrive as a list, or None when absent.
        object.__setattr__(self, "ensemble", tuple(self.ensemble or ()))
        object.__setattr__(self, "encoder", tuple(self.encoder or ()))

    def ensembles(self) -> dict[str, tuple[str, ...]]:
        """``ensemble`` as {name: members}; ValueError naming a malformed entry."""
        out: dict[str, tuple[str, ...]] = {}
        for entry in self.ensemble:
            name, _, members = entry.partition("=")
            names = tuple(m.strip() for m in members.split(",") if m.strip())
            if not name.strip() or len(names) < 2 or len(set(names)) != len(names):
                raise ValueError(
                    f"ensemble {entry!r} must be NAME=MODEL,MODEL[,...] with two or more "
                    "different models"
                )
            out[name.strip()] = names
        return out

    @property
    def address(self) -> str:
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6
        return f"{host}:{self.port}"

    def replace(self, **changes: Any) -> ServeConfig:
        """A copy with ``changes``; ``address="HOST:PORT"`` sets host and port."""
        if "address" in changes:
            host, _, port = str(changes.pop("address")).rpartition(":")
            changes.setdefault("host", host.strip("[]") or "0.0.0.0")
            changes.setdefault("port", int(port))
        if "tokens" in changes:
            changes["tokens"] = tuple(t for t in changes["tokens"] or () if t)
        return dataclasses.replace(self, **changes)

    def validate(self) -> ServeConfig:
        """Raise ValueError naming the first impossible value; return self.

        Every message starts with the field's name (the CLI turns it into the flag's).
        """
        checks = [
            (self.backend in BACKEND_CHOICES, f"backend must be one of {BACKEND_CHOICES}"),
            (self.picker in PICKERS, f"picker must be one of {PICKERS}"),
            (0 <= self.port <= 65535, "port must be in [0, 65535]"),
            (self.http_port is None or 0 <= self.http_port <= 65535,
             "http_port must be in [0, 65535]"),
            (self.threads >= 1, "threads must be >= 1"),
            (self.workers is None or self.workers >= 1, "workers must be >= 1"),
            (self.max_batch >= 1, "max_batch must be >= 1"),
            (math.isfinite(self.max_queue_delay_ms) and self.max_queue_delay_ms >= 0,
             "max_queue_delay_ms must be >= 0"),
            (self.max_queue >= 1, "max_queue must be >= 1"),
            (self.work_threads >= 1, "work_threads must be >= 1"),
            (self.field_concurrency >= 1, "field_concurrency must be >= 1"),
            (self.field_model is None or self.field_concurrency < self.work_threads,
             "field_concurrency must be below work_threads (Predict needs a thread too)"),
            (math.isfinite(self.max_message_mb) and self.max_message_mb > 0,
             "max_message_mb must be positive"),
            (MIN_INTERVAL_SECONDS <= self.stream_hop <= MAX_INTERVAL_SECONDS,
             f"stream_hop must be from {MIN_INTERVAL_SECONDS:g} to {MAX_INTERVAL_SECONDS:g} s"),
            (MIN_INTERVAL_SECONDS <= self.series_interval <= MAX_INTERVAL_SECONDS,
             f"series_interval must be from {MIN_INTERVAL_SECONDS:g} to "
             f"{MAX_INTERVAL_SECONDS:g} s"),
            (math.isfinite(self.grace) and self.grace >= 0, "grace must be >= 0"),
            (math.isfinite(self.inventory_poll) and self.inventory_poll >= 0,
             "inventory_poll must be >= 0"),
            (0 <= self.gil_switch_ms <= 100, "gil_switch_ms must be in [0, 100]"),
            ((self.tls_cert is None) == (self.tls_key is None),
             "tls_cert and --tls-key go together"),
            (self.tls_client_ca is None or self.tls_cert is not None,
             "tls_client_ca needs --tls-cert and --tls-key"),
            (self.log_level in LOG_LEVELS, f"log_level must be one of {LOG_LEVELS}"),
            (self.log_format in LOG_FORMATS, f"log_format must be one of {LOG_FORMATS}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.ensembles()
        return self

    def resolve_default_model(self, loaded: list[str]) -> str:
        """The model for requests naming none: ``default_model`` if loaded; else, when it is
        the built-in default and one model is loaded, that model; else ValueError (a silent
        pick of the first file would change answers when a folder gains a file, and a name
        chosen by hand that is not loaded is a mistake to report)."""
        if self.default_model in loaded:
            return self.default_model
        if self.default_model == DEFAULT_MODEL and len(loaded) == 1:
            return loaded[0]
        raise ValueError(
            f"default_model {self.default_model!r} is not among the loaded models {loaded}: "
            "name one of them with --default-model NAME"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """The defaults with every ``SEISMAG_<FIELD>`` variable of ``environ`` applied."""
        values = {}
        for name, raw in env_defaults(os.environ if environ is None else environ).items():
            try:
                values[name] = _kind(name)(raw)
            except ValueError:
                raise ValueError(
                    f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {_kind(name).__name__}"
                ) from None
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The fields a client may see (no secrets, no file paths), for ListModels/GetModel."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("secret") or f.name.startswith("tls_"):
                continue
            if f.metadata.get("path"):
                value = getattr(self, f.name)  # whether set, not where
                out[f.name] = bool(value) if f.metadata.get("multiple") else value is not None
                continue
            out[f.name] = getattr(self, f.name)
        out["tls"] = self.tls_cert is not None
        out["mutual_tls"] = self.tls_client_ca is not None
        out["auth"] = bool(self.tokens)
        return out

    def public_json(self) -> str:
        return json.dumps(self.public(), sort_keys=True)


def serve_flag_names() -> list[str]:
    """Config fields that are ``seismag serve`` flags (``--max-batch`` for ``max_batch``)."""
    return [f.name for f in dataclasses.fields(ServeConfig) if f.metadata.get("cli", True)]


def _kind(name: str) -> type:
    """The type a flag's text is read as: the field's default's, str for paths, else int."""
    f = ServeConfig.__dataclass_fields__[name]
    if f.metadata.get("path") or isinstance(f.default, str):
        return str
    return int if f.default is None else type(f.default)


def env_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """``SEISMAG_<FIELD>`` values (as text) for the fields that are flags."""
    fields = ServeConfig.__dataclass_fields__
    names = [n for n in serve_flag_names() if not fields[n].metadata.get("multiple")]
    # An empty variable is unset, as a shell's ``SEISMAG_TLS_CERT=`` means.
    values = {n: environ.get(ENV_PREFIX + n.upper(), "") for n in names}
    return {n: v for n, v in values.items() if v}


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, with the field's default (or its ``SEISMAG_<FIELD>``
    variable's value, which argparse converts and checks like a flag's), type and help."""
    defaults = ServeConfig()
    from_env = env_defaults(os.environ)
    for f in dataclasses.fields(ServeConfig):
        if not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("multiple"):
            metavar = "FILE" if f.metadata.get("path") else None
            parser.add_argument(flag, action="append", metavar=metavar, help=f.metadata["help"])
            continue
        parser.add_argument(
            flag,
            type=_kind(f.name),
            default=from_env.get(f.name, getattr(defaults, f.name)),
            choices=f.metadata.get("choices"),
            metavar=f.metadata.get("metavar", "FILE" if f.metadata.get("path") else None),
            help=f.metadata["help"] + f" (env {ENV_PREFIX}{f.name.upper()})",
        )


DEFAULTS = ServeConfig()
"""The defaults, for code that needs one of them without a server (clients, benchmarks)."""
DEFAULT_ADDRESS = DEFAULTS.address
