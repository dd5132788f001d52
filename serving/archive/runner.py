"""Run units in this process, in local worker processes, or on a Dask cluster.

Every worker loads the model once (a module-level cache keyed by the model and backend settings)
and annotates the units it is given; results come back to the caller, which alone writes the
output folder. Workers therefore need the model file and the data, not the output folder: on a
cluster of several machines the archive must be readable at the same path everywhere (a shared
file system), the output only where ``seismag annotate`` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from seismag.serving.archive.annotate import AnnotateOptions, UnitResult, annotate_stream
from seismag.serving.archive.sources import Unit, one_band, read_unit


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: the ONNX file, the backend and its threads, station metadata."""

    path: str
    backend: str = "ort"
    threads: int = 1
    inventory: str | None = None


_CACHE: dict[ModelSpec, tuple[object, object]] = {}


def loaded(spec: ModelSpec):
    """(runtime, inventory) of ``spec``, loaded once per process."""
    if spec not in _CACHE:
        from seismag.serving.executor.runtime import ModelRuntime
        from seismag.serving.pipeline.units import StationInventory

        runtime = ModelRuntime(spec.path, backend=spec.backend, threads=spec.threads, workers=1)
        runtime.select_backend()  # "auto": the fastest backend matching ONNX Runtime
        inventory = StationInventory(spec.inventory) if spec.inventory else None
        _CACHE[spec] = (runtime, inventory)
    return _CACHE[spec]


def annotate_unit(unit: Unit, spec: ModelSpec, options: AnnotateOptions) -> UnitResult:
    """Read one unit and annotate it (what every worker runs)."""
    runtime, inventory = loaded(spec)
    backend = runtime.backend
    try:
        stream = read_unit(unit)
    except Exception as exc:  # a corrupt file: this unit says so, the others go on
        return UnitResult(
            unit.name,
            unit.network,
            unit.station,
            unit.location,
            error=f"cannot read: {type(exc).__name__}: {exc}",
            failed=True,
        )
    stream, notes = one_band(stream)
    result = annotate_stream(
        backend, stream, options, unit=unit.name, inventory=inventory, picker_threads=spec.threads
    )
    result.network, result.station, result.location = unit.network, unit.station, unit.location
    result.warnings = (*notes, *result.warnings)
    return result


def run_local(
    units: list[Unit], spec: ModelSpec, options: AnnotateOptions, workers: int
) -> Iterator[UnitResult]:
    """Units in this process (``workers`` 1) or in ``workers`` local processes, as they finish."""
    if workers <= 1 or len(units) <= 1:
        for unit in units:
            yield annotate_unit(unit, spec, options)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(units))) as pool:
        futures = [pool.submit(annotate_unit, u, spec, options) for u in units]
        for f in as_completed(futures):
            yield f.result()


def run_dask(
    units: list[Unit],
    spec: ModelSpec,
    options: AnnotateOptions,
    scheduler: str,
    on_client: Callable[[object], None] | None = None,
) -> Iterator[UnitResult]:
    """Units as tasks on the Dask cluster at ``scheduler`` (``tcp://host:8786``), as they finish.

    Each worker process loads the model once; ``on_client`` sees the connected client (to report
    the cluster's workers).
    """
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError as exc:
        raise RuntimeError(
            f"--scheduler needs dask.distributed ({exc}): pip install 'seismag[archive]'"
        ) from None
    if not Path(spec.path).is_file():
        raise RuntimeError(f"model file {spec.path} not found")
    with Client(scheduler, timeout="30s") as client:
        if on_client is not None:
            on_client(client)
        futures = client.map(
            annotate_unit, units, spec=spec, options=options, pure=False, key=[
                f"annotate-{u.name}-{i}" for i, u in enumerate(units)
            ],
        )  # fmt: skip
        for f in dask_completed(futures):
            yield f.result()
            f.release()
