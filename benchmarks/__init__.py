"""Latency benchmarks: ``seismag bench`` and ``python -m seismag.benchmarks.report``.

Small modules, one job each: :mod:`.stats` (percentiles, the stability rule), :mod:`.target`
(a server to measure: remote, in this process, or spawned), :mod:`.loadgen` (Predict at fixed
concurrency or request rate), :mod:`.feeds` (N stations streaming at real-time pace),
:mod:`.runtimes` (PyTorch vs ONNX Runtime vs TensorRT per model), :mod:`.capacity` (binary
search on the station count), :mod:`.plots`, :mod:`.report` (regenerates docs/benchmarks.md) and
:mod:`.cli` (the ``seismag bench`` subcommands).
"""
