"""Pretraining encoders in ONNX Runtime: windows in, embeddings (k, T, D) out.

The exported file (``seismag export-encoder``) carries its
:class:`~seismag.models.encoder_card.EncoderCard` in the ONNX metadata; inputs are normalised
by the one preprocessing path pretraining used (:func:`seismag.models.preprocess.normalise`
with the card's settings). Encoders run inline in the calling thread (Predict's work threads,
the OIP's), like the picker network, not through the dynamic batcher: the batcher's rows are
magnitudes, and an Embed is one window per station. Windows run in slices of
:data:`MAX_ROWS`, so a request of many stations neither holds every intermediate tensor at once
nor outlives its deadline by more than one slice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from seismag.models.card import WEIGHTS_KEY, CardError
from seismag.models.encoder_card import ENCODER_CARD_KEY, INPUT_NAME, OUTPUT_NAME, EncoderCard
from seismag.models.preprocess import normalise
from seismag.models.triton_config import ONNX_PLATFORM, ModelConfig, TensorConfig
from seismag.models.trt_engine import MAX_BATCH
from seismag.serving.config import DEFAULTS
from seismag.serving.errors import InvalidInput, ModelNotFound
from seismag.serving.executor.backend import ModelLoadError
from seismag.serving.executor.statistics import Finished, ModelStatistics

MAX_ROWS = 16
"""Windows per ONNX Runtime call."""

Check = Callable[[str], None]
"""Called between slices with a stage name; raises to stop (the pipeline's Budget.check)."""


class EncoderRuntime:
    """One encoder ONNX file in one ONNX Runtime session (thread-safe: ORT's ``run`` is)."""

    def __init__(self, path: str | Path, *, threads: int = DEFAULTS.threads) -> None:
        from seismag.serving.executor.ort_backend import carded_session

        self.path, self.session, meta = carded_session(
            path, threads, ENCODER_CARD_KEY, "encoder", "export it with `seismag export-encoder`"
        )
        try:
            self.card = EncoderCard.from_json(meta[ENCODER_CARD_KEY])
        except (CardError, json.JSONDecodeError, TypeError) as exc:
            raise ModelLoadError(f"{self.path}: unreadable encoder card: {exc}") from None
        self._check_signature()
        self.threads = threads
        self.name = self.card.name
        self.version = self.card.version
        self.weights = meta.get(WEIGHTS_KEY, "unknown")
        self.statistics = ModelStatistics(self.name, str(self.version))
        """Runs and requests of this encoder (ModelStatistics RPC, Prometheus), as a model's."""

    def _check_signature(self) -> None:
        """The file's tensors are the card's: a file built otherwise is refused at start."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        c, n = self.card.in_channels, self.card.in_samples
        if [i.name for i in inputs] != [INPUT_NAME] or list(inputs[0].shape[1:]) != [c, n]:
            found = [(i.name, i.shape) for i in inputs]
            raise ModelLoadError(
                f"{self.path}: the encoder must take {INPUT_NAME!r} (batch, {c}, {n}); it takes "
                f"{found}"
            )
        if OUTPUT_NAME not in [o.name for o in outputs]:
            raise ModelLoadError(f"{self.path}: the encoder has no {OUTPUT_NAME!r} output")

    def __repr__(self) -> str:
        return f"EncoderRuntime({self.name} {self.version}, {self.path})"

    @property
    def steps(self) -> int:
        return self.card.steps()

    def inputs(self, windows: np.ndarray) -> np.ndarray:
        """Raw (k, C, N) windows in the card's component order and rate -> the encoder's input."""
        c = self.card
        return normalise(
            windows, c.normalisation, highpass_hz=c.highpass_hz, sampling_rate=c.sampling_rate
        )[0]

    def run(self, x: np.ndarray, check: Check | None = None) -> np.ndarray:
        """Normalised (k, C, N) float32 windows -> (k, T, D) embeddings, :data:`MAX_ROWS` per
        call; ``check`` runs before each call."""
        out = []
        for i in range(0, x.shape[0], MAX_ROWS):
            if check is not None:
                check("before the encoder ran")
            part = np.ascontiguousarray(x[i : i + MAX_ROWS], dtype=np.float32)
            t0 = time.perf_counter_ns()
            out.append(self.session.run([OUTPUT_NAME], {INPUT_NAME: part})[0])
            ns = time.perf_counter_ns() - t0
            self.statistics.record_execution(len(part), 0, 0, ns, 0, Finished(count=1, infer_ns=ns))
        if not out:
            return np.zeros((0, self.steps, self.card.embed_dim), np.float32)
        return np.concatenate(out)

    def embed(self, windows: np.ndarray, check: Check | None = None) -> np.ndarray:
        """Raw (k, C, N) windows -> (k, T, D) embeddings."""
        return self.run(self.inputs(windows), check)

    # -- Open Inference Protocol ----------------------------------------------------------

    def input_specs(self) -> list[tuple[str, str, list[int]]]:
        return [(INPUT_NAME, "FP32", [-1, self.card.in_channels, self.card.in_samples])]

    def output_specs(self) -> list[tuple[str, str, list[int]]]:
        return [(OUTPUT_NAME, "FP32", [-1, self.steps, self.card.embed_dim])]

    def infer_raw(
        self, inputs: dict[str, np.ndarray], timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        """OIP ModelInfer: normalised ``waveform`` (batch, C, N) FP32 -> ``embedding``."""
        if set(inputs) != {INPUT_NAME}:
            raise InvalidInput(
                f"{self.name}: inputs must be exactly [{INPUT_NAME!r}]; got {sorted(inputs)}"
            )
        a = np.asarray(inputs[INPUT_NAME])
        want = self.input_specs()[0][2]
        if a.dtype != np.float32:
            raise InvalidInput(f"{self.name}: input {INPUT_NAME!r} must be FP32, got {a.dtype}")
        if a.ndim != 3 or list(a.shape[1:]) != want[1:] or a.shape[0] < 1:
            raise InvalidInput(
                f"{self.name}: input {INPUT_NAME!r} must have shape {want} (-1 = batch >= 1), "
                f"got {list(a.shape)}"
            )
        if not np.all(np.isfinite(a)):
            raise InvalidInput(f"{self.name}: input {INPUT_NAME!r} contains NaN or Inf")
        deadline = None if timeout is None else time.monotonic() + timeout

        def check(stage: str) -> None:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name}: deadline exceeded {stage}")

        return {OUTPUT_NAME: self.run(a, check)}

    def triton_config(self) -> ModelConfig:
        """The OIP ModelConfig: one input, one output, no dynamic batching (runs inline)."""
        c = self.card
        return ModelConfig(
            name=c.name,
            platform=ONNX_PLATFORM,
            max_batch_size=MAX_BATCH,
            inputs=(TensorConfig(INPUT_NAME, (c.in_channels, c.in_samples)),),
            outputs=(TensorConfig(OUTPUT_NAME, (self.steps, c.embed_dim)),),
            preferred_batch_sizes=(),
            max_queue_delay_us=0,
            instance_kind="KIND_CPU",
            instance_count=1,
            parameters={ENCODER_CARD_KEY: c.to_json()},
        )

    def runtime_info(self) -> dict[str, object]:
        """How the server runs it (ListModels' ``runtime_json``)."""
        return {"backend": "ort", "kernel": "onnxruntime", "threads": self.threads,
                "batching": "none (inline)", "max_rows": MAX_ROWS}  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------

    def warm_up(self) -> None:
        """One window, so the first request does not pay ORT's lazy initialisation."""
        rng = np.random.default_rng(0)
        raw = rng.normal(size=(1, self.card.in_channels, self.card.in_samples)) * 1e-6
        if not np.all(np.isfinite(self.embed(raw))):
            raise ModelLoadError(f"{self.path}: warm-up produced non-finite embeddings")


class EncoderSet:
    """The encoders one server holds (``--encoder``), by card name."""

    def __init__(self, runtimes: Iterable[EncoderRuntime] = ()) -> None:
        self._encoders: dict[str, EncoderRuntime] = {}
        for rt in runtimes:
            if rt.name in self._encoders:
                raise ModelLoadError(
                    f"encoder {rt.name} is loaded twice ({self._encoders[rt.name].path} and "
                    f"{rt.path})"
                )
            self._encoders[rt.name] = rt

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path], *, threads: int = 1) -> EncoderSet:
        return cls(EncoderRuntime(p, threads=threads) for p in paths)

    def get(self, name: str) -> EncoderRuntime:
        """The encoder called ``name``; "" = the only one, when there is exactly one."""
        if not name and len(self._encoders) == 1:
            return next(iter(self._encoders.values()))
        found = self._encoders.get(name)
        if found is not None:
            return found
        have = ", ".join(self._encoders) or "none (serve one with --encoder FILE.onnx)"
        if not name and self._encoders:
            raise InvalidInput(f"name an encoder: this server has {have}")
        what = f"unknown encoder {name!r}" if name else "no encoder"
        raise ModelNotFound(f"{what}; this server's encoders: {have}")

    def find(self, name: str) -> EncoderRuntime | None:
        return self._encoders.get(name)

    def names(self) -> list[str]:
        return list(self._encoders)

    def __iter__(self) -> Iterator[EncoderRuntime]:
        return iter(self._encoders.values())

    def __len__(self) -> int:
        return len(self._encoders)

    def warm_up(self) -> None:
        for rt in self._encoders.values():
            rt.warm_up()
