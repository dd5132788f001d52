"""Exported models, each in a runtime backend behind a dynamic batcher, and a registry of them.

Torch-free: a model is an exported file (see :mod:`seismag.export.onnx_export`) whose metadata
carries its card, so serving needs nothing but the file. Inputs are ``waveform`` (B, C, N) and
``log_amp`` (B, 1), float32; the output ``magnitude`` is (B, N) for series cards and (B,) for
scalar cards, already in magnitude units. Files of cards with ``uncertainty = "gaussian"`` also
output ``sigma``, its standard deviation in magnitude units, with the same shape; files exported
before that have no sigma and still serve (:attr:`ModelRows.sigma` is then None).

The model call itself is a backend's (:mod:`seismag.serving.executor.backend`): ONNX Runtime by
default, OpenVINO or TensorRT on request, or ``backend="auto"``, which measures the available
ones at warm-up and keeps the fastest whose outputs match ONNX Runtime within the card's
``tolerance``. The batcher only ever sees ready tensors.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np

from seismag.models.artifact import ArtifactError, check_file
from seismag.models.artifact import read_card_from_onnx as _read_card
from seismag.models.card import INPUT_NAMES, OUTPUT_NAME, SIGMA_NAME, ModelCard
from seismag.models.preprocess import model_inputs
from seismag.serving.config import DEFAULTS
from seismag.serving.errors import InvalidInput, ModelNotFound
from seismag.serving.executor.backend import (
    AUTO_BATCH,
    BACKEND_CHOICES,
    DEFAULT_BACKEND,
    Backend,
    BackendOptions,
    BackendUnavailable,
    ModelLoadError,
    ModelRows,
    Selection,
    comparison_inputs,
    has_sigma,
    load_backend,
    select_fastest,
)
from seismag.serving.executor.batcher import BatcherStats, DynamicBatcher, OnBatch, Owner, Ticket
from seismag.serving.executor.ort_backend import resolve_providers, session_options
from seismag.serving.executor.picker_runtime import PickerRuntime, load_picker
from seismag.serving.executor.statistics import ModelStatistics

__all__ = [
    "BACKEND_CHOICES",
    "BackendUnavailable",
    "ModelLoadError",
    "ModelRegistry",
    "ModelRows",
    "ModelRuntime",
    "default_model_path",
    "default_workers",
    "read_card_from_onnx",
    "resolve_providers",
    "session_options",
]

log = logging.getLogger(__name__)


def _check_file(path: Path) -> Path:
    try:
        return check_file(path)
    except ArtifactError as exc:
        raise ModelLoadError(str(exc)) from None


def read_card_from_onnx(path: str | Path) -> ModelCard:
    """The card embedded in an exported file (:mod:`seismag.models.artifact`), with a
    :class:`ModelLoadError` naming the file when it has none."""
    try:
        return _read_card(path)
    except ArtifactError as exc:
        raise ModelLoadError(str(exc)) from exc


MAX_DEFAULT_WORKERS = 4
MICRO_BATCH_SLACK = 1.10
"""A bigger micro-batch is preferred while its time per window is within 10% of the best."""


def default_workers(threads: int) -> int:
    """Parallel model runs that fill the usable cores with ``threads``-thread runs (at most 4)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores // max(int(threads), 1)))


class ModelRuntime:
    """One exported model: a runtime backend behind a :class:`DynamicBatcher`.

    ``backend``: ``ort`` (default), ``openvino``, ``tensorrt`` or ``auto`` (see the module
    docstring); :attr:`backend_name` is the one running and :attr:`backend_choice` says why.
    ``precision`` is OpenVINO's (``f32``; ``bf16`` only when asked for). ``engine_cache`` is
    where the TensorRT backend keeps engines it builds.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = DEFAULTS.threads,
        max_batch: int = DEFAULTS.max_batch,
        max_queue_delay_ms: float = DEFAULTS.max_queue_delay_ms,
        max_queue: int = DEFAULTS.max_queue,
        providers: list[str] | None = None,
        on_batch: OnBatch | None = None,
        fused_kernel: bool = True,
        micro_batch: int | None = None,
        workers: int | None = DEFAULTS.workers,
        backend: str = DEFAULT_BACKEND,
        precision: str = "f32",
        engine_cache: str | Path | None = None,
    ) -> None:
        if backend not in BACKEND_CHOICES:
            raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
        self.path = _check_file(Path(path))
        self.providers = resolve_providers(providers)
        workers = workers or default_workers(threads)  # None: as seismag serve does
        self._options = BackendOptions(
            threads=threads,
            streams=workers,
            providers=tuple(self.providers),
            fused_kernel=fused_kernel,
            precision=precision,
            engine_cache=Path(engine_cache) if engine_cache is not None else None,
        )
        self.backend_requested = backend
        """What the caller asked for: a backend name or ``auto``."""
        self.selection: Selection | None = None
        """``auto`` only, after warm-up: every candidate's ms/window, max |diff| and rejection."""
        # auto starts on ONNX Runtime: the reference the others are compared with, and what
        # serves until warm_up() has measured them.
        self.backend: Backend = load_backend(
            "ort" if backend == "auto" else backend, self.path, self._options
        )
        self.backend_choice = (
            "auto: ort until warm_up() measures the available backends"
            if backend == "auto"
            else f"{backend}: asked for"
        )
        """Why :attr:`backend_name` runs this model, in one line (logged at warm-up)."""
        self.card, self.weights = self.backend.card, self.backend.weights
        self.name = self.card.name
        self.version = self.card.version
        self.has_sigma = has_sigma(self.backend)
        """The file outputs the magnitude's standard deviation (exports since uncertainty)."""
        self.statistics = ModelStatistics(self.name, str(self.version))
        """Counts and durations of this model since it was loaded (the batcher records model
        runs, the server the requests); read by the metrics and the ModelStatistics RPC."""
        self.micro_batch = micro_batch
        """Rows per model call; larger batches run in slices of this size. None = tune it at
        warm-up (CPU backends only; see :meth:`tune_micro_batch`)."""
        self.window_ms: float | None = None
        """One window's model time, measured at warm-up (best of three); None before."""
        self.batcher = DynamicBatcher(
            self._run,
            max_batch=max_batch,
            max_queue_delay_ms=max_queue_delay_ms,
            max_queue=max_queue,
            name=self.name,
            on_batch=on_batch,
            prepare=self._prepare,
            workers=workers,
            statistics=self.statistics,
        )

    @property
    def backend_name(self) -> str:
        """The backend running the model now: ``ort``, ``openvino`` or ``tensorrt``."""
        return self.backend.name

    @property
    def kernel(self) -> str:
        """What runs the model, e.g. ``fused-scan`` (ORT with the compiled scan), ``onnxruntime``,
        ``openvino-f32+fused-scan``, ``tensorrt-fp32``."""
        return self.backend.kernel

    def __repr__(self) -> str:
        return f"ModelRuntime({self.name} {self.version}, {self.path}, {self.kernel})"

    def select_backend(self) -> Selection | None:
        """``backend="auto"``: measure the available backends once and keep the fastest that
        matches ONNX Runtime (:func:`~.backend.select_fastest`); no-op otherwise or when done.

        Call it before serving (:meth:`warm_up` does): the swap is not synchronised with
        batches in flight.
        """
        if self.backend_requested != "auto" or self.selection is not None:
            return self.selection
        wave, amp = comparison_inputs(self.card, AUTO_BATCH)
        self.selection = select_fastest(self.backend, wave, amp, self._options)
        self.backend = self.selection.backend
        self.backend_choice = self.selection.reason
        log.info("%s: %s", self.name, self.backend_choice)
        return self.selection

    def _run(self, waveform: np.ndarray, log_amp: np.ndarray) -> ModelRows:
        step = self.micro_batch or waveform.shape[0]
        if waveform.shape[0] <= step:
            return self._run_once(waveform, log_amp)
        parts = [
            self._run_once(waveform[i : i + step], log_amp[i : i + step])
            for i in range(0, waveform.shape[0], step)
        ]
        return ModelRows(
            np.concatenate([p.magnitude for p in parts]),
            np.concatenate([p.sigma for p in parts]) if self.has_sigma else None,
        )

    def _run_once(self, waveform: np.ndarray, log_amp: np.ndarray) -> ModelRows:
        return self.backend.run(waveform, log_amp)  # both outputs from one call

    def tune_micro_batch(self, repeats: int = 3, budget_s: float = 0.5) -> int:
        """Pick the rows per model call, measured here: the largest size whose time per
        window is within ``MICRO_BATCH_SLACK`` of the best.

        Why: on CPU a larger batch is not always cheaper per window (once a batch's activations
        no longer fit in cache it can get slower), but every call also costs Python overhead
        and a release and re-acquisition of the GIL, which under streaming load waits behind the
        other server threads. PhaseNetMag on the 2-core test machine costs about the same per
        window (0.69-0.73 ms, benchmarks/ort_parallel.py) at 1 to 32 rows per call: there a
        batch of 64 should be 2 calls of 32, not 32 calls of 2. Candidates are powers of two up
        to ``max_batch``; the best of ``repeats`` runs counts (the machine may be shared); a
        size whose one run takes longer than ``budget_s`` ends the search.
        """
        per_window: dict[int, float] = {}
        size = 1
        while size <= self.batcher.max_batch:
            wave, amp = self.example_inputs(size)
            self._run_once(wave, amp)  # first run of a shape allocates
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                self._run_once(wave, amp)
                times.append(time.perf_counter() - t0)
            per_window[size] = min(times) / size
            if min(times) > budget_s:
                break
            size *= 2
        best = min(per_window.values())
        self.micro_batch = max(n for n, t in per_window.items() if t <= best * MICRO_BATCH_SLACK)
        return self.micro_batch

    # -- the seismag path (inputs come from our own preprocessing) ------------------------

    def _check(self, waveform: np.ndarray, log_amp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, n = self.card.in_channels, self.card.in_samples
        # An empty batch is refused: the batcher would answer it with a bare array, not ModelRows.
        if waveform.ndim != 3 or waveform.shape[1:] != (c, n) or waveform.shape[0] == 0:
            raise InvalidInput(
                f"{self.name}: waveform must be (batch >= 1, {c}, {n}), got {waveform.shape}"
            )
        if log_amp.shape != (waveform.shape[0], 1):
            raise InvalidInput(
                f"{self.name}: log_amp must be ({waveform.shape[0]}, 1), got {log_amp.shape}"
            )
        return (
            np.ascontiguousarray(waveform, dtype=np.float32),
            np.ascontiguousarray(log_amp, dtype=np.float32),
        )

    def expect(self) -> Ticket:
        """Announce a submission being prepared; see :meth:`DynamicBatcher.expect`."""
        return self.batcher.expect()

    def submit(
        self, waveform: np.ndarray, log_amp: np.ndarray, *, ticket: Ticket | None = None
    ) -> Future:
        """Non-blocking :meth:`infer`: a future of ``(ModelRows, {"queue": ms, "compute": ms})``."""
        try:
            checked = self._check(waveform, log_amp)
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise
        return self.batcher.submit(*checked, ticket=ticket)

    def run_if_idle(
        self,
        waveform: np.ndarray,
        log_amp: np.ndarray,
        ticket: Ticket,
        *,
        max_ms: float | None = None,
    ) -> tuple[ModelRows, dict[str, float]] | None:
        """Run the windows now in this thread when the model is idle (see
        :meth:`DynamicBatcher.run_if_idle`), else None: :meth:`submit` them with the ticket.

        ``max_ms``: also None when their model time, from the warm-up's measurement, would
        exceed it (a caller on the event loop must not stall it; unmeasured: never inline).
        """
        waveform, log_amp = self._check(waveform, log_amp)
        if max_ms is not None and (
            self.window_ms is None or self.window_ms * waveform.shape[0] > max_ms
        ):
            return None
        return self.batcher.run_if_idle(waveform, log_amp, ticket)

    def _prepare(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, log_amp = model_inputs(windows, self.card)
        return np.ascontiguousarray(x), np.ascontiguousarray(log_amp)

    def submit_raw(
        self, windows: np.ndarray, *, owner: Owner | None = None, tag: object = None
    ) -> Future | None:
        """Queue ``k`` >= 1 raw (un-normalised) windows (k, C, N), normalised in the batcher's
        worker; the result (future or ``owner.on_rows``) carries :class:`ModelRows`.

        All raw windows that end up in one batch are normalised in one
        :func:`~seismag.models.preprocess.model_inputs` call (row by row the same numbers as one
        call per window). Streams use this: windows due in the same hop share the cost. With an
        ``owner`` the results go to it (see :class:`~seismag.serving.executor.batcher.Owner`).
        """
        c, n = self.card.in_channels, self.card.in_samples
        if windows.ndim != 3 or windows.shape[1:] != (c, n) or windows.shape[0] == 0:
            raise InvalidInput(
                f"{self.name}: windows must be (batch >= 1, {c}, {n}), got {windows.shape}"
            )
        return self.batcher.submit_raw(windows, owner=owner, tag=tag)

    def infer(
        self,
        waveform: np.ndarray,
        log_amp: np.ndarray,
        timeout: float | None = None,
        *,
        ticket: Ticket | None = None,
    ) -> tuple[ModelRows, dict[str, float]]:
        """Run ``k`` normalised windows through the batcher; their output rows and timings.

        Raises the builtin ``TimeoutError`` when ``timeout`` seconds pass first (the gRPC layer
        maps it to DEADLINE_EXCEEDED); the queued rows are cancelled if they have not started.
        """
        future = self.submit(waveform, log_amp, ticket=ticket)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"{self.name}: no result within {timeout} s") from None

    # -- Open Inference Protocol ----------------------------------------------------------

    def input_specs(self) -> list[tuple[str, str, list[int]]]:
        c, n = self.card.in_channels, self.card.in_samples
        return [("waveform", "FP32", [-1, c, n]), ("log_amp", "FP32", [-1, 1])]

    def output_specs(self) -> list[tuple[str, str, list[int]]]:
        shape = [-1, self.card.in_samples] if self.card.output == "series" else [-1]
        sigma = [(SIGMA_NAME, "FP32", shape)] if self.has_sigma else []
        return [(OUTPUT_NAME, "FP32", shape), *sigma]

    def infer_raw(
        self, inputs: dict[str, np.ndarray], timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        """Raw tensors in, raw tensors out (OIP ModelInfer), checked, through the batcher."""
        names = set(inputs)
        expected = set(INPUT_NAMES)
        if names != expected:
            raise InvalidInput(
                f"{self.name}: inputs must be exactly {sorted(expected)}; got {sorted(names)}"
                + (f" (missing {sorted(expected - names)})" if expected - names else "")
                + (f" (unknown {sorted(names - expected)})" if names - expected else "")
            )
        specs = {name: shape for name, _, shape in self.input_specs()}
        arrays = {}
        for name in INPUT_NAMES:
            a = np.asarray(inputs[name])
            if a.dtype != np.float32:
                raise InvalidInput(f"{self.name}: input {name!r} must be FP32, got {a.dtype}")
            want = specs[name]
            if a.ndim != len(want) or any(
                w != -1 and w != s for w, s in zip(want, a.shape, strict=True)
            ):
                raise InvalidInput(
                    f"{self.name}: input {name!r} must have shape {want} (-1 = batch), "
                    f"got {list(a.shape)}"
                )
            if a.shape[0] < 1:
                raise InvalidInput(f"{self.name}: input {name!r} has an empty batch")
            if not np.all(np.isfinite(a)):
                raise InvalidInput(f"{self.name}: input {name!r} contains NaN or Inf")
            arrays[name] = a
        if arrays["waveform"].shape[0] != arrays["log_amp"].shape[0]:
            raise InvalidInput(
                f"{self.name}: waveform and log_amp batch sizes differ "
                f"({arrays['waveform'].shape[0]} vs {arrays['log_amp'].shape[0]})"
            )
        with self.expect() as ticket:  # one request, one submission: no need to wait for others
            # Called in a work thread: when the model is idle it runs here, without a hand-off.
            ran = self.run_if_idle(arrays["waveform"], arrays["log_amp"], ticket)
            if ran is None:
                ran = self.infer(arrays["waveform"], arrays["log_amp"], timeout, ticket=ticket)
            rows = ran[0]
        out = {OUTPUT_NAME: np.asarray(rows.magnitude, dtype=np.float32)}
        if rows.sigma is not None:
            out[SIGMA_NAME] = np.asarray(rows.sigma, dtype=np.float32)
        if not all(np.all(np.isfinite(a)) for a in out.values()):
            # Finite inputs far outside the card's normalised windows (a 3e38 sample) overflow
            # inside the model: refuse rather than answer NaN or Inf as a magnitude.
            peak = float(np.max(np.abs(arrays["waveform"])))
            raise InvalidInput(
                f"{self.name}: the output is not finite for these inputs (largest |waveform| "
                f"{peak:.3g}); send windows normalised the card's way "
                f"({self.card.normalisation!r}, log10 of the scale in log_amp)"
            )
        return out

    # -- lifecycle ------------------------------------------------------------------------

    def example_inputs(self, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic normalised noise windows, for warm-up and health checks."""
        from seismag.models.preprocess import model_inputs

        rng = np.random.default_rng(0)
        raw = rng.normal(size=(batch, self.card.in_channels, self.card.in_samples)) * 1e-6
        return model_inputs(raw, self.card)

    def warm_up(self) -> None:
        """One inference, so the first request does not pay the runtime's lazy initialisation.

        With ``backend="auto"`` first picks the backend (:meth:`select_backend`). On CPU also
        chooses the micro-batch (:meth:`tune_micro_batch`) unless one was given.
        """
        self.select_backend()
        if self.micro_batch is None and self.backend.device == "cpu":
            log.info("%s: micro-batch %d (tuned)", self.name, self.tune_micro_batch())
        out, _ = self.infer(*self.example_inputs(1))
        if not all(np.all(np.isfinite(a)) for a in out if a is not None):
            raise ModelLoadError(f"{self.path}: warm-up produced non-finite output")
        times, example = [], self.example_inputs(1)
        for _ in range(3):
            t0 = time.perf_counter()
            self._run_once(*example)
            times.append(time.perf_counter() - t0)
        self.window_ms = min(times) * 1e3

    def stats(self) -> BatcherStats:
        return self.batcher.stats()

    def close(self) -> None:
        self.batcher.close(drain=True)
        self.backend.close()


class ModelRegistry:
    """The models a server hosts, by card name, with one default for requests naming none."""

    def __init__(
        self,
        runtimes: list[ModelRuntime],
        default: str | None = None,
        *,
        picker: PickerRuntime | None = None,
    ) -> None:
        self.picker = picker
        """The P picker network for stations without a client pick; None: STA/LTA + AIC."""
        if not runtimes:
            raise ModelLoadError("no models to serve")
        self._models: dict[str, ModelRuntime] = {}
        for rt in runtimes:
            if rt.name in self._models:
                raise ModelLoadError(
                    f"model {rt.name} is loaded twice ({self._models[rt.name].path} and {rt.path})"
                )
            self._models[rt.name] = rt
        if default is not None and default not in self._models:
            raise ModelLoadError(
                f"default model {default!r} is not among the loaded models: {self.names()}"
            )
        self.default_name = default or runtimes[0].name

    @classmethod
    def from_paths(
        cls,
        paths: list[str | Path],
        default: str | None = None,
        *,
        threads: int = DEFAULTS.threads,
        max_batch: int = DEFAULTS.max_batch,
        max_queue_delay_ms: float = DEFAULTS.max_queue_delay_ms,
        providers: list[str] | None = None,
        max_queue: int = DEFAULTS.max_queue,
        on_batch: OnBatch | None = None,
        workers: int | None = DEFAULTS.workers,
        backend: str = DEFAULT_BACKEND,
        precision: str = "f32",
        picker: str = DEFAULTS.picker,
    ) -> ModelRegistry:
        """Load every ``.onnx`` file named or found directly inside a named directory, each in
        ``backend`` (``auto`` picks per model at warm-up; see :class:`ModelRuntime`)."""
        files: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                found = sorted(p.glob("*.onnx"))
                if not found:
                    raise ModelLoadError(f"directory {p} holds no .onnx files")
                files.extend(found)
            else:
                _check_file(p)
                files.append(p)
        if not files:
            raise ModelLoadError("no model paths given")
        runtimes: list[ModelRuntime] = []
        try:
            for f in files:
                runtimes.append(
                    ModelRuntime(
                        f,
                        threads=threads,
                        max_batch=max_batch,
                        max_queue_delay_ms=max_queue_delay_ms,
                        max_queue=max_queue,
                        providers=providers,
                        on_batch=on_batch,
                        workers=workers,
                        backend=backend,
                        precision=precision,
                    )
                )
            return cls(runtimes, default, picker=load_picker(picker))
        except BaseException:
            for rt in runtimes:
                rt.close()
            raise

    def get(self, name: str = "") -> ModelRuntime:
        """The model called ``name`` ("" = the default)."""
        key = name or self.default_name
        try:
            return self._models[key]
        except KeyError:
            raise ModelNotFound(
                f"unknown model {name!r}; this server has: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._models)

    def __iter__(self):
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def set_on_batch(self, hook: Callable[[str, int, float, float], None] | None) -> None:
        """Install a per-batch hook on every model's batcher (see :mod:`.batcher`); the server's
        metrics read each model's :attr:`ModelRuntime.statistics` instead."""
        for rt in self._models.values():
            rt.batcher.on_batch = hook

    def warm_up(self) -> None:
        for rt in self._models.values():
            rt.warm_up()

    def close(self) -> None:
        for rt in self._models.values():
            rt.close()


def default_model_path() -> Path:
    """The model shipped inside the package (``serving/default_model/PhaseNetMag.onnx``)."""
    from importlib import resources

    path = Path(str(resources.files("seismag.serving") / "default_model" / "PhaseNetMag.onnx"))
    if not path.is_file():
        raise ModelLoadError(f"the packaged default model {path} is missing from this install")
    return path
