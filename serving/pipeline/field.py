"""Sparse-field reconstruction requests: every check once, at the boundary, then the runtime.

The Reconstruct RPC and ``seismag field eval`` (local or through the server) both come through
:func:`check_request`, so a request is refused the same way wherever it comes from, with a
message naming the value and the limit, before any work is done: InvalidInput
(INVALID_ARGUMENT) for a malformed or out-of-range request, Overloaded (RESOURCE_EXHAUSTED) for
a well-formed one larger than the server runs at once (split it). Field-model limits live here,
beside the checks, since no other request shares them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from seismag.models.field_card import FieldCard
from seismag.models.field_sampler import network_runs
from seismag.models.ground_motion import SOURCE_COLUMNS
from seismag.serving.errors import InvalidInput, ModelNotFound, Overloaded
from seismag.serving.executor.field_runtime import FieldRuntime, row_scores
from seismag.serving.pipeline.limits import Budget

MAX_SAMPLES = 64
"""Draws averaged per field: the spread of 64 draws is within ~9 % of its limit; more buys
nothing but time."""
MAX_STEPS = 100
"""ODE steps per draw (the cards' defaults are 5-10; Heun's count twice in the work limit)."""
PRIOR_WORK = 1 << 29
"""Fields x points^3 one request may ask a prior to fit: the Gaussian process's fit grows with
the cube of the points (about 1 s for 205 points on one core, with its restarts), so this is
about a minute of fitting."""
MAX_FIELDS = 4_096
"""Fields in one request."""
MAX_GRID_POINTS_DRAWN = 1 << 21
"""fields x samples x height x width: the draws the sampler holds at once (8 MiB of float32
each for the draws and the noise), e.g. 256 fields of 32 x 32 at 8 samples."""
MAX_EVALUATIONS = 1 << 24
"""fields x samples x network runs per draw (the steps; 2 steps - 1 for Heun's) x height x
width: grid-point evaluations of the network, the
request's time (about 10 us each on one core for the shipped card: ~3 min)."""
MAX_ROW_SCORES = 1 << 27
"""Attention scores of one draw of one field (:func:`row_scores`; 512 MiB of float32): a
large grid and many points together would not fit one network run."""
MAX_SEED = 2**64 - 1
SOURCE_LIMITS = dict(
    zip(SOURCE_COLUMNS, ((-2.0, 10.0), (-10.0, 10.0), (-10.0, 10.0), (0.0, 800.0)), strict=True)
)
"""A source's plausible range: a magnitude scale's, an epicentre within ten map sides of the map,
a depth above the deepest earthquakes (~700 km)."""


@dataclass(frozen=True)
class FieldRequest:
    """A checked request: arrays in field units, the grid and the sampler settings resolved."""

    coords: np.ndarray
    """(F, K, 2) float32 in [0, 1]: (row, column) of each observed point."""
    values: np.ndarray
    """(F, K) float32, finite, in the model's value units."""
    grid: tuple[int, int]
    samples: int
    steps: int
    seed: int
    sources: np.ndarray | None = None
    """(F, 4) float64: each field's event (magnitude, epicentre row and column in the [0, 1]
    frame, depth km) for a model whose prior needs it; None otherwise."""

    @property
    def fields(self) -> int:
        return len(self.coords)


@dataclass
class FieldResult:
    mean: np.ndarray
    """(F, H, W) float32 in the model's value units."""
    std: np.ndarray
    """(F, H, W) float32: the standard deviation over the draws (0 for a regressor)."""
    model: str
    model_version: str
    objective: str
    samples: int
    """Draws that ran (1 for a regressor, which makes one pass)."""
    steps: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    """'preprocess' (the checks), 'queue' (0: the model runs inline), 'compute', 'total'."""


def resolve(runtime: FieldRuntime | None, name: str) -> FieldRuntime:
    """The field model a request names ("" = the served one)."""
    if runtime is None:
        raise ModelNotFound(
            "this server holds no field model (start it with seismag serve --field-model FILE.onnx)"
        )
    if name and name != runtime.name:
        raise ModelNotFound(f"unknown field model {name!r}; this server's: {runtime.name}")
    return runtime


def stack_fields(
    coords: Sequence[np.ndarray], values: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-field flat coordinates (2 K numbers, row/column pairs) and values (K) -> (F, K, 2)
    and (F, K) arrays; InvalidInput names the first field that does not fit."""
    n = len(values)
    if n == 0:
        raise InvalidInput("the request holds no fields: send at least one with its points")
    if n > MAX_FIELDS:
        raise Overloaded(f"the request holds {n} fields (limit {MAX_FIELDS}); split it")
    k = len(values[0])
    for i, (c, v) in enumerate(zip(coords, values, strict=True)):
        if len(c) != 2 * len(v):
            raise InvalidInput(
                f"field {i}: {len(c)} coordinates for {len(v)} values; coords holds a (row, "
                "column) pair per value"
            )
        if len(v) != k:
            raise InvalidInput(
                f"field {i} has {len(v)} points and field 0 has {k}: every field of one "
                "request has the same number of points (send the others in another request)"
            )
    return (
        np.asarray(coords, np.float32).reshape(n, k, 2),
        np.asarray(values, np.float32).reshape(n, k),
    )


def _integer(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInput(f"{what} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise InvalidInput(f"{what} must be in [{low}, {high}], got {value}")
    return int(value)


def check_request(
    card: FieldCard,
    coords: np.ndarray,
    values: np.ndarray,
    grid: Sequence[int],
    samples: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    sources: np.ndarray | None = None,
) -> FieldRequest:
    """Every check of a reconstruction request against ``card``; None = the card's default.
    ``sources`` (F, 4), one event per field, for a card that ``needs_source`` (and only then).
    Raises InvalidInput (or Overloaded for work) naming the first problem."""
    coords = np.asarray(coords)
    values = np.asarray(values)
    if coords.ndim != 3 or coords.shape[2] != 2:
        raise InvalidInput(f"coords must have shape (fields, points, 2), got {coords.shape}")
    if values.shape != coords.shape[:2]:
        raise InvalidInput(
            f"values must have shape (fields, points) = {coords.shape[:2]} to match coords, "
            f"got {values.shape}"
        )
    f, k = values.shape
    if f < 1:
        raise InvalidInput("the request holds no fields: send at least one with its points")
    if f > MAX_FIELDS:
        raise Overloaded(f"the request holds {f} fields (limit {MAX_FIELDS}); split it")
    if not 1 <= k <= card.max_points:
        raise InvalidInput(
            f"{k} observed points per field: {card.name} takes 1 to {card.max_points}"
        )
    if card.prior != "none" and f * k**3 > PRIOR_WORK:
        raise Overloaded(
            f"{f} fields of {k} points: fitting {card.name}'s {card.prior} prior grows with "
            f"fields x points^3 ({f * k**3:.3g}, limit {PRIOR_WORK:.3g}); send fewer fields "
            "per request"
        )
    for what, a in (("coords", coords), ("values", values)):
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise InvalidInput(f"{what} must be real numbers, got {a.dtype}")
    coords = coords.astype(np.float32)
    values = values.astype(np.float32)
    bad = ~np.isfinite(coords).all(axis=(1, 2))
    if bad.any():
        raise InvalidInput(f"field {int(np.argmax(bad))}: coords hold NaN or Inf")
    outside = ((coords < 0) | (coords > 1)).any(axis=(1, 2))
    if outside.any():
        i = int(np.argmax(outside))
        raise InvalidInput(
            f"field {i}: coords must lie in [0, 1] (row, column scaled by the grid), found "
            f"{float(coords[i].min()):g} .. {float(coords[i].max()):g}"
        )
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise InvalidInput(f"field {int(np.argmax(bad))}: values hold NaN or Inf")
    # The model sees values centred to [-1, 1] over the card's range; one range width beyond
    # either end is already far outside what it learnt, and 3e38 overflows the scaling.
    span = card.value_high - card.value_low
    low, high = card.value_low - span, card.value_high + span
    outside = ((values < low) | (values > high)).any(axis=1)
    if outside.any():
        i = int(np.argmax(outside))
        raise InvalidInput(
            f"field {i}: values must lie in [{low:g}, {high:g}] ({card.name}'s value range "
            f"{card.value_low:g} .. {card.value_high:g}, one width either side), found "
            f"{float(values[i].min()):g} .. {float(values[i].max()):g}"
        )
    if len(grid) != 2:
        raise InvalidInput(f"grid must be (height, width), got {tuple(grid)}")
    h = _integer("grid height", grid[0], 1, card.max_grid)
    w = _integer("grid width", grid[1], 1, card.max_grid)
    samples = _integer("samples", card.samples if samples is None else samples, 1, MAX_SAMPLES)
    steps = _integer("steps", card.steps if steps is None else steps, 1, MAX_STEPS)
    seed = _integer("seed", seed, 0, MAX_SEED)
    flow = card.objective == "flow"
    runs, depth = (samples, network_runs(card.sampler, steps)) if flow else (1, 1)
    drawn = f * runs * h * w
    if drawn > MAX_GRID_POINTS_DRAWN:
        raise Overloaded(
            f"{f} fields x {runs} samples x {h} x {w} grid = {drawn} points drawn at once (limit "
            f"{MAX_GRID_POINTS_DRAWN}); send fewer fields per request, or fewer samples"
        )
    evaluations = drawn * depth
    if evaluations > MAX_EVALUATIONS:
        raise Overloaded(
            f"{f} fields x {runs} samples x {depth} network runs per draw x {h} x {w} grid = "
            f"{evaluations} network evaluations (limit {MAX_EVALUATIONS}); send fewer fields per "
            "request, or fewer samples or steps"
        )
    scores = row_scores(card, h * w, k)
    if scores > MAX_ROW_SCORES:
        raise InvalidInput(
            f"a {h} x {w} grid with {k} points needs {scores} attention scores per draw (limit "
            f"{MAX_ROW_SCORES}): ask for a smaller grid or send fewer points"
        )
    checked_sources = check_sources(card, sources, f)
    return FieldRequest(coords, values, (h, w), samples, steps, seed, checked_sources)


def check_sources(card: FieldCard, sources: np.ndarray | None, fields: int) -> np.ndarray | None:
    """The request's sources as (F, 4) float64, or None where the card takes none."""
    if not card.needs_source:
        if sources is not None:
            raise InvalidInput(
                f"{card.name} takes no event source (its prior is {card.prior!r}); send the "
                "fields without one"
            )
        return None
    if sources is None:
        raise InvalidInput(
            f"{card.name} needs each field's event source ({', '.join(SOURCE_LIMITS)}): its "
            "prior is a ground-motion model, as ShakeMap's"
        )
    a = np.asarray(sources)
    if a.shape != (fields, len(SOURCE_LIMITS)):
        raise InvalidInput(
            f"sources must have shape (fields, {len(SOURCE_LIMITS)}) = ({fields}, "
            f"{len(SOURCE_LIMITS)}) ({', '.join(SOURCE_LIMITS)}), got {a.shape}"
        )
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise InvalidInput(f"sources must be real numbers, got {a.dtype}")
    a = a.astype(np.float64)
    for j, (name, (low, high)) in enumerate(SOURCE_LIMITS.items()):
        bad = ~((a[:, j] >= low) & (a[:, j] <= high))  # NaN fails too
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidInput(
                f"field {i}: source {name} must be finite and in [{low:g}, {high:g}], got "
                f"{a[i, j]:g}"
            )
    return a


def reconstruct(
    runtime: FieldRuntime,
    request: FieldRequest,
    *,
    budget: Budget | None = None,
    started: float | None = None,
) -> FieldResult:
    """Run a checked request; ``budget`` is checked before each network run (its deadline,
    its cancel flag)."""
    t_start = time.perf_counter() if started is None else started
    budget = budget or Budget()
    budget.check("before the field model ran")
    t0 = time.perf_counter()
    mean, std = runtime.reconstruct(
        request.coords,
        request.values,
        request.grid,
        request.samples,
        request.steps,
        request.seed,
        sources=request.sources,
        check=budget.check,
    )
    t1 = time.perf_counter()
    flow = runtime.card.objective == "flow"
    return FieldResult(
        mean=mean,
        std=std,
        model=runtime.name,
        model_version=runtime.version,
        objective=runtime.card.objective,
        samples=request.samples if flow else 1,
        steps=request.steps if flow else 1,
        timings_ms={
            "preprocess": (t0 - t_start) * 1e3,
            "queue": 0.0,
            "compute": (t1 - t0) * 1e3,
            "total": (t1 - t_start) * 1e3,
        },
    )
