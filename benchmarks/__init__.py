"""Latency benchmarks: ``seismag bench`` (``python release/benchmarks_report.py``, in a checkout,
runs them all and regenerates docs/benchmarks.md).

Small modules, one job each: :mod:`.stats` (percentiles, the stability rule), :mod:`.target`
(a server to measure: remote, in this process, or spawned), :mod:`.loadgen` (Predict at fixed
concurrency or request rate), :mod:`.feeds` (N stations streaming at real-time pace),
:mod:`.runtimes` (PyTorch vs ONNX Runtime vs TensorRT per model), :mod:`.capacity` (binary
search on the station count), :mod:`.plots` and :mod:`.cli` (the ``seismag bench`` subcommands).
"""
