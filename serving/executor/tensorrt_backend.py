"""The TensorRT backend (NVIDIA GPU): an engine for the exported file, run on numpy tensors.

The engine comes from, in order: ``<stem>.fp32.plan`` next to the ONNX file (what ``seismag
export --to tensorrt`` writes), ``BackendOptions.engine_cache`` (built there once), or a build in
memory at load time (minutes). A plan that does not deserialize (another TensorRT version or GPU)
is rebuilt. Building and running are :mod:`seismag.models.trt_engine`, shared with export.

Batches above the engine profile's 256 rows run in slices. ``tensorrt`` and ``torch`` (the CUDA
buffers) are imported only when a backend is loaded. Untested here: no GPU in this environment.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from seismag.models.artifact import ArtifactError, read_artifact
from seismag.models.card import INPUT_NAMES
from seismag.serving.executor.backend import (
    BackendOptions,
    ModelLoadError,
    ModelRows,
    TensorSpec,
    served_outputs,
)

log = logging.getLogger(__name__)
PRECISION = "fp32"  # fp16 moves outputs by ~1e-2, far outside the cards' tolerance


def available() -> tuple[bool, str]:
    from seismag.models.trt_engine import TensorRTUnavailable, require_tensorrt

    try:
        trt = require_tensorrt()
    except TensorRTUnavailable as exc:
        return False, str(exc)
    return True, f"tensorrt {trt.__version__}"


def _serialized(path: Path, cache: Path | None) -> tuple[bytes, str]:
    """Engine bytes for ``path`` and where they came from."""
    from seismag.models.trt_engine import build_serialized

    for plan in (
        path.with_suffix(f".{PRECISION}.plan"),
        *([cache / f"{path.stem}.{PRECISION}.plan"] if cache else []),
    ):
        if plan.is_file() and plan.stat().st_mtime >= path.stat().st_mtime:
            return plan.read_bytes(), str(plan)
    log.info("%s: building a TensorRT %s engine (minutes) ...", path, PRECISION)
    serialized = build_serialized(path, precision=PRECISION)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f"{path.stem}.{PRECISION}.plan").write_bytes(serialized)
    return serialized, "built at load"


class TensorRtBackend:
    """An exported model as a TensorRT engine (see :mod:`.backend` for the protocol)."""

    name = "tensorrt"
    device = "gpu"

    def __init__(self, path: Path, options: BackendOptions) -> None:
        from seismag.models.trt_engine import MAX_BATCH, Engine

        self.path = Path(path)
        try:
            self.card, self.weights = read_artifact(self.path)
        except ArtifactError as exc:
            raise ModelLoadError(str(exc)) from exc
        serialized, source = _serialized(self.path, options.engine_cache)
        try:
            self._engine = Engine(serialized)
        except RuntimeError:
            if source == "built at load":
                raise
            log.warning("%s: %s does not deserialize here; rebuilding", self.path, source)
            serialized, source = _serialized(self.path, None)
            self._engine = Engine(serialized)
        self.engine_source = source
        self.kernel = f"tensorrt-{PRECISION}"
        self._max_batch = MAX_BATCH
        c, n = self.card.in_channels, self.card.in_samples
        self.inputs = (
            TensorSpec(INPUT_NAMES[0], "float32", (None, c, n)),
            TensorSpec(INPUT_NAMES[1], "float32", (None, 1)),
        )
        if sorted(self._engine.input_names) != sorted(INPUT_NAMES):
            raise ModelLoadError(f"{path}: engine inputs {self._engine.input_names}")
        self._fetch = served_outputs(self._engine.output_names)
        shape = (None, n) if self.card.output == "series" else (None,)
        self.outputs = tuple(TensorSpec(name, "float32", shape) for name in self._fetch)

    def run(self, waveform: np.ndarray, log_amp: np.ndarray) -> ModelRows:
        parts = []
        for i in range(0, waveform.shape[0], self._max_batch):
            feeds = {"waveform": waveform[i : i + self._max_batch]}
            feeds["log_amp"] = log_amp[i : i + self._max_batch]
            out = self._engine.run(feeds)
            parts.append([out[name] for name in self._fetch])
        columns = zip(*parts, strict=True)
        values = [np.concatenate(col) if len(parts) > 1 else col[0] for col in columns]
        return ModelRows(values[0], values[1] if len(values) > 1 else None)

    def close(self) -> None:
        self._engine = None


def load(path: Path, options: BackendOptions) -> TensorRtBackend:
    return TensorRtBackend(path, options)
