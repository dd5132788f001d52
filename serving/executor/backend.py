"""What the executor asks of a runtime: load an exported file, run ready tensors.

A backend holds one exported model (an ``.onnx`` file whose metadata carries the seismag card)
in one runtime and runs ``(waveform, log_amp) -> ModelRows``. :class:`ModelRuntime` owns the
batching and the checks and delegates only the model call, so a backend knows nothing of queues,
streams or gRPC. Implementations, each imported only when asked for (their packages are optional):

- ``ort``: :mod:`~seismag.serving.executor.ort_backend`, ONNX Runtime (always installed), with the
  compiled SelectiveScan kernel where ``seismag[kernels]`` is installed;
- ``openvino``: :mod:`~seismag.serving.executor.openvino_backend` (``seismag[openvino]``), f32;
- ``tensorrt``: :mod:`~seismag.serving.executor.tensorrt_backend` (``seismag[gpu]``, torch and a
  CUDA GPU).

``auto`` (:func:`select_fastest`) loads every available one, keeps those whose outputs match
ONNX Runtime within the card's ``tolerance`` and picks the fastest at batch 32.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from seismag.models.card import INPUT_NAMES, SIGMA_NAME, ModelCard

log = logging.getLogger(__name__)

BACKENDS = ("ort", "openvino", "tensorrt")
BACKEND_CHOICES = (*BACKENDS, "auto")
DEFAULT_BACKEND = "ort"
_MODULES = {
    "ort": "seismag.serving.executor.ort_backend",
    "openvino": "seismag.serving.executor.openvino_backend",
    "tensorrt": "seismag.serving.executor.tensorrt_backend",
}
AUTO_BATCH = 32
AUTO_REPEATS = 5


class ModelLoadError(RuntimeError):
    """A model file is missing, not ONNX, has no seismag card, or the runtime rejects it."""


class BackendUnavailable(ModelLoadError):
    """The backend asked for is not installed here, or lacks its device."""


class ModelRows(NamedTuple):
    """Model output rows for some windows, as the batcher hands them back (see its "Several
    outputs"): both come from the same model call."""

    magnitude: np.ndarray
    """(k, N) for series cards, (k,) for scalar cards, magnitude units."""
    sigma: np.ndarray | None = None
    """Its standard deviation, the same shape; None when the file has no sigma output."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the loaded model: ``shape`` has None for dynamic axes."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class BackendOptions:
    """How to load: the same options go to every backend, each reads what applies to it."""

    threads: int = 1
    """Intra-op threads per model call."""
    streams: int = 1
    """Model calls that may run at once (the batcher's workers)."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """ONNX Runtime execution providers, resolved (see ``ort_backend.resolve_providers``)."""
    fused_kernel: bool = True
    """Run ``seismag::SelectiveScan`` with the compiled scan kernel where the runtime can."""
    precision: str = "f32"
    """OpenVINO inference precision: ``f32`` (default) or ``bf16`` (explicit opt-in only)."""
    engine_cache: Path | None = None
    """TensorRT: a folder to keep built engines in; None = build in memory when no plan is
    found next to the ONNX file."""
    extra: dict = field(default_factory=dict)
    """Backend-specific settings passed through as given."""


@runtime_checkable
class Backend(Protocol):
    """One exported model loaded into one runtime."""

    name: str
    """``ort``, ``openvino`` or ``tensorrt``."""
    kernel: str
    """What runs the model, in a word or two (e.g. ``fused-scan``, ``openvino-f32``)."""
    path: Path
    card: ModelCard
    weights: str
    """The weights' provenance string from the file's metadata ("unknown" if absent)."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    """The outputs :meth:`run` returns: the magnitude first, then ``sigma`` if the file has it."""

    def run(self, waveform: np.ndarray, log_amp: np.ndarray) -> ModelRows:
        """Ready float32 tensors (B, C, N) and (B, 1) in, both outputs of one call out."""
        ...

    def close(self) -> None:
        """Release the runtime's resources; the backend is unusable afterwards."""
        ...


def has_sigma(backend: Backend) -> bool:
    return any(o.name == SIGMA_NAME for o in backend.outputs)


def check_interface(backend: Backend) -> None:
    """The loaded model must take exactly ``waveform`` and ``log_amp``."""
    names = [i.name for i in backend.inputs]
    if sorted(names) != sorted(INPUT_NAMES):
        raise ModelLoadError(f"{backend.path}: inputs {names}, expected {list(INPUT_NAMES)}")
    if not backend.outputs:
        raise ModelLoadError(f"{backend.path}: the model has no outputs")


def served_outputs(names: list[str]) -> list[str]:
    """The outputs to fetch, in order: the first is the magnitude (also in files exported before
    the outputs were named); sigma follows in the same call when the file has it."""
    return [names[0], *([SIGMA_NAME] if SIGMA_NAME in names[1:] else [])]


def _module(name: str):
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_CHOICES)}")
    return importlib.import_module(_MODULES[name])


def backend_available(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` can load models here, without loading one; and why not."""
    return _module(name).available()


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every backend with (available, reason), for logs and ``auto``."""
    return {name: backend_available(name) for name in BACKENDS}


def load_backend(name: str, path: str | Path, options: BackendOptions | None = None) -> Backend:
    """``path`` loaded into backend ``name``; :class:`BackendUnavailable` says what is missing."""
    module = _module(name)
    ok, reason = module.available()
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available here: {reason}")
    backend = module.load(Path(path), options or BackendOptions())
    check_interface(backend)
    return backend


def comparison_inputs(card: ModelCard, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised windows for comparing backends: noise with a burst a third of the way in and
    amplitudes from 1e-8 to 1e-3 m/s, so ``log_amp`` spans what stations record."""
    from seismag.models.preprocess import model_inputs

    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((batch, card.in_channels, card.in_samples))
    raw[..., card.in_samples // 3 :] *= 1.0 + 20.0 * rng.random((batch, 1, 1))
    return model_inputs(raw * 10.0 ** rng.uniform(-8, -3, size=(batch, 1, 1)), card)


def max_abs_difference(a: ModelRows, b: ModelRows) -> float:
    """Largest |a - b| over the magnitude and, where both have it, the sigma."""
    pairs = [(a.magnitude, b.magnitude)]
    if a.sigma is not None and b.sigma is not None:
        pairs.append((a.sigma, b.sigma))
    if any(x.shape != y.shape for x, y in pairs):
        return float("inf")
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def time_run(
    backend: Backend,
    waveform: np.ndarray,
    log_amp: np.ndarray,
    repeats: int = AUTO_REPEATS,
    *,
    warm: bool = True,
) -> float:
    """Best of ``repeats`` calls, in ms per window, after one untimed call (first-shape costs)
    unless ``warm`` is False."""
    if warm:
        backend.run(waveform, log_amp)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.run(waveform, log_amp)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3 / waveform.shape[0]


@dataclass
class Selection:
    """What ``auto`` measured and picked for one model."""

    backend: Backend
    reason: str
    ms_per_window: dict[str, float] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


def select_fastest(
    reference: Backend,
    waveform: np.ndarray,
    log_amp: np.ndarray,
    options: BackendOptions,
    candidates: tuple[str, ...] = BACKENDS,
    repeats: int = AUTO_REPEATS,
) -> Selection:
    """The fastest backend whose outputs match ``reference`` (ONNX Runtime) within the card's
    tolerance on the given batch; the reference itself always qualifies.

    Each candidate that is not installed, fails to load or run, or differs by more than
    ``card.tolerance`` is rejected with its reason; the losers are closed.
    """
    card = reference.card
    expected = reference.run(waveform, log_amp)
    loaded: dict[str, Backend] = {reference.name: reference}
    sel = Selection(reference, "")
    for name in candidates:
        if name == reference.name:
            continue
        try:
            backend = load_backend(name, reference.path, options)
        except BackendUnavailable as exc:
            sel.rejected[name] = str(exc).split(": ", 1)[-1]
            continue
        except Exception as exc:  # a runtime that cannot load this model says why, once
            sel.rejected[name] = f"load failed: {type(exc).__name__}: {exc}".splitlines()[0]
            continue
        try:
            diff = max_abs_difference(backend.run(waveform, log_amp), expected)
        except Exception as exc:
            sel.rejected[name] = f"run failed: {type(exc).__name__}: {exc}".splitlines()[0]
            backend.close()
            continue
        sel.max_abs_diff[name] = diff
        if not diff <= card.tolerance:
            sel.rejected[name] = f"max |diff| to ort {diff:.1e} > tolerance {card.tolerance:.0e}"
            backend.close()
            continue
        loaded[name] = backend
    # Round-robin, best of ``repeats`` each: a load change on a shared machine then hits every
    # candidate alike instead of whichever happened to be timed during it.
    for backend in loaded.values():
        backend.run(waveform, log_amp)  # first-shape costs, untimed
    for _ in range(repeats):
        for name, backend in loaded.items():
            ms = time_run(backend, waveform, log_amp, repeats=1, warm=False)
            sel.ms_per_window[name] = min(sel.ms_per_window.get(name, ms), ms)
    best = min(sel.ms_per_window, key=sel.ms_per_window.__getitem__)
    sel.backend = loaded[best]
    for name, backend in loaded.items():
        if name != best:
            backend.close()
    timings = ", ".join(f"{n} {ms:.3f}" for n, ms in sel.ms_per_window.items())
    diffs = ", ".join(f"{n} {d:.1e}" for n, d in sel.max_abs_diff.items())
    sel.reason = (
        f"auto: {best} fastest at batch {waveform.shape[0]} (ms/window: {timings}; "
        f"max |diff| to ort: {diffs or 'none compared'}; tolerance {card.tolerance:.0e})"
        + "".join(f"; {n} rejected: {why}" for n, why in sel.rejected.items())
    )
    return sel
