"""Sparse-field reconstruction models in ONNX Runtime: observed points in, the whole field out.

The exported file (:func:`seismag.export.field_export.export_field_model`) is one network
evaluation and carries its :class:`~seismag.models.field_card.FieldCard` in the ONNX metadata;
the sampling loop is :func:`seismag.models.field_sampler.reconstruct`, the one training and the
export's parity check use, so a served reconstruction is the one the docs measured. Like the
encoders, the model runs inline in the calling thread (the server's work threads, the CLI), not
through the magnitude batcher. A Mamba query mixer's SelectiveScan nodes run on the fused
kernel where it is available, as the magnitude models' do. Inputs are not checked here: the
pipeline (:mod:`seismag.serving.pipeline.field`) checks them once at the boundary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from seismag.models.card import WEIGHTS_KEY, CardError
from seismag.models.field_card import FIELD_CARD_KEY, OUTPUT_NAME, FieldCard, grid_coords
from seismag.models.field_prior import field_prior, shaking_prior
from seismag.models.field_sampler import reconstruct as sample_fields
from seismag.serving.executor.backend import ModelLoadError

MAX_ROWS = 64
"""Rows (field x draw) per ONNX Runtime call at most."""
ROW_SCORES = 1 << 24
"""Attention scores one ONNX Runtime call may hold (float32: 64 MiB per score tensor); a
large grid or many points run fewer rows per call."""

Check = Callable[[str], None]
"""Called before each network run with a stage name; raises to stop (a Budget's check)."""


DEFAULT_FIELD = "default"
"""``--field-model`` / ``field eval --model`` value naming the field model shipped in the
package (``serving/default_field/FieldFlow.onnx``)."""


def field_model_path(path: str | Path) -> Path:
    """``path``, or the shipped field model's path for :data:`DEFAULT_FIELD`."""
    if str(path) != DEFAULT_FIELD:
        return Path(path)
    from importlib import resources

    shipped = Path(str(resources.files("seismag.serving") / "default_field" / "FieldFlow.onnx"))
    if not shipped.is_file():
        raise ModelLoadError(f"the packaged field model {shipped} is missing from this install")
    return shipped


def row_scores(card: FieldCard, q: int, k: int) -> int:
    """Attention scores one row (one draw of one field) holds: the context's self-attention
    (K x K), the queries' cross-attention (Q x K) and, with an attention mixer, Q x Q, per
    head. Memory grows with this, not with the number of points alone."""
    heads = int(card.kwargs.get("heads", 4))
    mixer = card.kwargs.get("query_mixer", "none") == "attention"
    return heads * (k * k + q * k + (q * q if mixer else 0))


def _specs(args) -> list[tuple[str, str, list[int]]]:
    return [(a.name, "FP32", [d if isinstance(d, int) else -1 for d in a.shape]) for a in args]


class FieldRuntime:
    """One field model's ONNX file in one ONNX Runtime session (thread-safe: ORT's ``run``
    is). ``threads``: intra-op threads per run (None = ONNX Runtime's default, every core)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from seismag.serving.executor.ort_backend import carded_session, fused_scan_session

        self.path, self.session, meta = carded_session(
            field_model_path(path),
            threads,
            FIELD_CARD_KEY,
            "field model",
            "export it with seismag.export.field_export",
        )
        try:
            self.card = FieldCard.from_dict(json.loads(meta[FIELD_CARD_KEY]))
        except (CardError, json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{self.path}: unreadable field card: {exc}") from None
        self._check_signature()
        # The card and signature were read from the plain session; a graph with scans then
        # runs on the fused kernel (None: no scans, or no kernel here).
        fused = fused_scan_session(self.path, threads)
        self.kernel = "onnxruntime" if fused is None else "fused-scan"
        if fused is not None:
            self.session = fused
        self.threads = threads
        self.name = self.card.name
        self.version = str(self.card.version)
        self.weights = meta.get(WEIGHTS_KEY, "unknown")

    def _check_signature(self) -> None:
        """The file's tensors are the contract's: a file built otherwise is refused at load."""
        names = [i.name for i in self.session.get_inputs()]
        want = self.card.input_names()
        if sorted(names) != sorted(want):
            raise ModelLoadError(
                f"{self.path}: this field model's card needs inputs {list(want)}; the file "
                f"takes {names}"
            )
        if self.card.needs_source:
            try:
                shaking_prior(self.card)
            except CardError as exc:
                raise ModelLoadError(f"{self.path}: {exc}") from None
        elif self.card.prior != "none":
            try:
                import sklearn  # noqa: F401
            except ImportError:
                raise ModelLoadError(
                    f"{self.path}: its {self.card.prior} prior needs scikit-learn: "
                    "pip install 'seismag[field]'"
                ) from None
        if OUTPUT_NAME not in [o.name for o in self.session.get_outputs()]:
            raise ModelLoadError(f"{self.path}: a field model has an output {OUTPUT_NAME!r}")

    def __repr__(self) -> str:
        return f"FieldRuntime({self.name} {self.version}, {self.path}, {self.kernel})"

    def input_specs(self) -> list[tuple[str, str, list[int]]]:
        """The network's inputs (one evaluation; -1 for the dynamic fields, points and
        queries axes), as ListModels lists them."""
        return _specs(self.session.get_inputs())

    def output_specs(self) -> list[tuple[str, str, list[int]]]:
        return _specs(self.session.get_outputs())

    def runtime_info(self) -> dict[str, object]:
        """How the server runs it (ListModels' ``runtime_json``)."""
        return {"backend": "ort", "kernel": self.kernel, "threads": self.threads,
                "batching": "none (inline)", "max_rows": MAX_ROWS,
                "samples": self.card.samples, "steps": self.card.steps}  # fmt: skip

    def rows_per_run(self, q: int, k: int) -> int:
        """Rows per ONNX Runtime call for Q queries and K points (memory, not results: the
        sampler draws the same noise whatever the slicing)."""
        return int(min(MAX_ROWS, max(1, ROW_SCORES // max(row_scores(self.card, q, k), 1))))

    def predict(self, check: Check | None = None):
        """The sampler's ``predict``: one network run (``check`` before each)."""

        names = self.card.input_names()

        def run(*arrays: np.ndarray) -> np.ndarray:
            if check is not None:
                check("before the field model ran")
            feed = {
                name: np.ascontiguousarray(a, dtype=np.float32)
                for name, a in zip(names, arrays, strict=True)
            }
            return self.session.run([OUTPUT_NAME], feed)[0]

        return run

    def reconstruct(
        self,
        coords: np.ndarray,
        values: np.ndarray,
        grid: tuple[int, int],
        samples: int | None = None,
        steps: int | None = None,
        seed: int = 0,
        *,
        sources: np.ndarray | None = None,
        check: Check | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Observed ``coords`` (F, K, 2) in [0, 1] and ``values`` (F, K) in field units ->
        the mean and standard deviation over ``samples`` draws of ``steps`` steps of the card's
        sampler, each (F, H, W) float32 in field units. ``samples`` and ``steps`` default to
        the card's; ``sources`` (F, 4) are the events of a card that ``needs_source``."""
        card = self.card
        h, w = int(grid[0]), int(grid[1])
        coords = np.asarray(coords, np.float32)
        f, k = coords.shape[:2]
        query = np.broadcast_to(grid_coords(h, w), (f, h * w, 2))
        unit = card.to_unit(values)
        if check is not None and card.prior != "none":
            check("before the prior was fitted")
        prior = field_prior(card, coords, unit, query, sources)
        mean, std = sample_fields(
            self.predict(check),
            card.objective,
            coords,
            unit,
            query,
            samples=card.samples if samples is None else int(samples),
            steps=card.steps if steps is None else int(steps),
            seed=int(seed),
            max_rows=self.rows_per_run(h * w, k),
            prior=prior,
            sampler=card.sampler,
        )
        return (
            card.from_unit(mean).reshape(f, h, w),
            card.spread_from_unit(std).reshape(f, h, w),
        )

    def warm_up(self) -> None:
        """One small field, so the first request does not pay ORT's lazy initialisation."""
        coords = grid_coords(2, 2)[None]
        values = np.full((1, 4), 0.5 * (self.card.value_low + self.card.value_high), np.float32)
        # A shakemap card's source: M 5 at the middle of the map, 10 km deep.
        source = np.array([[5.0, 0.5, 0.5, 10.0]], np.float32) if self.card.needs_source else None
        mean, std = self.reconstruct(coords, values, (4, 4), samples=2, steps=1, sources=source)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
            raise ModelLoadError(f"{self.path}: warm-up produced non-finite values")
