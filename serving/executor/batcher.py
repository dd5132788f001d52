"""Dynamic batching: many small requests -> few model runs, Triton-style.

Worker threads (``workers``, default 1) own the model calls. Submissions (``k`` windows each)
wait in a bounded queue; a free worker takes the oldest, then keeps collecting until it has
``max_batch`` rows or ``max_queue_delay_ms`` has passed since that oldest submission arrived,
and runs them as one batch. A submission larger than ``max_batch`` is split across batches and
its future resolves when its last rows are done. Model errors go to the futures of the rows in
the failing batch.

Several workers: ONNX Runtime releases the GIL and a session may be run from several threads at
once, so with ``workers=2`` one batch is prepared and run while the previous one still computes.
On a small CPU that is a better use of the cores than one run split across intra-op threads:
single-threaded convolutions over a few channels do not spin-wait or synchronise, and the
preparation (NumPy/SciPy, GIL released in the heavy parts) overlaps the other worker's run.

Idle dispatch: a caller that knows it is about to submit (a Predict request, from the moment it
starts preprocessing) takes a :meth:`DynamicBatcher.expect` ticket and submits with it. When the
oldest queued job came with a ticket and no other ticket is outstanding, nothing else can join
the batch soon, so the worker runs at once instead of waiting out ``max_queue_delay_ms``: on an
idle server that wait was pure latency (2 ms of a 5 ms request). Submissions without a ticket
(streams, direct callers) keep the plain rule, as do batches that include any of them.

Running in the caller's thread: :meth:`DynamicBatcher.run_if_idle` runs a ticketed submission
at once in the calling thread when the batcher is idle (nothing queued, no worker running, no
other ticket out), the case idle dispatch already runs without waiting. Handing the rows to a
worker and the result back cost two thread wake-ups: 0.3 ms of a single-window Predict on the
2-core test machine (docs/benchmarks.md). Otherwise (anything else in flight) it returns None
and the caller submits.

Raw windows: :meth:`DynamicBatcher.submit_raw` queues un-normalised windows; the worker turns
all raw rows of a batch into model inputs with one ``prepare`` call (streams use this, so the
windows due in the same hop share one vectorised normalisation). Their timings add ``prepare``.

Owners instead of futures: a stream submits thousands of one-window jobs a second, and a Future
per window (with its lock, condition and callback, each taking the stream's lock) costs more
than the window's share of the model. :meth:`DynamicBatcher.submit_raw` therefore also takes an
``owner`` (see :class:`Owner`) and a ``tag``: the worker hands each owner all of its finished
rows of a batch in ONE ``on_rows`` call, and drops queued jobs of an owner that has closed.

Several outputs: ``run_fn`` may return a tuple of arrays instead of one array (a model with a
magnitude and a sigma output: ONE call computes both). Every array is split by row the same way,
and each job gets the same kind of tuple back (a NamedTuple is rebuilt with ``_make``); a None
entry (an output this model lacks) stays None. A job whose rows all ran in one batch gets views
of the batch's outputs, not copies.

Statistics: with ``statistics`` (a :class:`~.statistics.ModelStatistics`) every model run is
recorded there before its results are handed out (windows, execution, queue and compute time per
batch and per finished submission), so a caller that has its result also sees it counted. The
server's metrics and the ModelStatistics RPC read that object. A plain hook is also available:
``on_batch(model_name, batch_rows, queue_ms, compute_ms)`` (or set the ``on_batch`` attribute
later), called in the worker thread after every model run; ``queue_ms`` is how long the oldest
row of the batch waited before the run started. Exceptions from either are logged and
swallowed: metrics must never fail a request. ``stats()`` returns cumulative counters for a
cheap snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from seismag.serving.config import DEFAULTS
from seismag.serving.errors import NotReady, Overloaded
from seismag.serving.executor.statistics import Finished, ModelStatistics

log = logging.getLogger(__name__)

Outputs = Any
"""What ``run_fn`` returns and each job gets back for its rows: one array, or a tuple of arrays
(None entries allowed), each with the rows first (see "Several outputs")."""
RunFn = Callable[[np.ndarray, np.ndarray], Outputs]
PrepareFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
OnBatch = Callable[[str, int, float, float], None]


@dataclass(frozen=True)
class BatcherStats:
    """Cumulative counters since the batcher started (a snapshot)."""

    batches: int
    rows: int
    errors: int
    queued_rows: int
    queue_ms_total: float
    compute_ms_total: float
    max_batch_rows: int


class Owner(Protocol):
    """Receives the results of its jobs batch by batch (see "Owners instead of futures")."""

    closed: bool
    """Once True, the owner's queued jobs are dropped unrun."""

    def on_rows(self, results: list[tuple[object, Outputs, dict[str, float]]]) -> None:
        """``(tag, rows_out, timings)`` for every job of this owner finished in one batch."""

    def on_error(self, tags: list[object], exc: BaseException) -> None:
        """The model failed (or the batcher shut down) for the jobs with these tags."""


class _Job:
    """One submission: its inputs, its future (or owner and tag), and how far the worker has
    got through it."""

    __slots__ = (
        "compute_ms",
        "done_rows",
        "eager",
        "future",
        "log_amp",
        "out",
        "owner",
        "prepare_ms",
        "raw",
        "started",
        "t_submit",
        "tag",
        "waveform",
    )

    def __init__(
        self,
        waveform: np.ndarray,
        log_amp: np.ndarray | None,
        future: Future | None,
        eager: bool = False,
        raw: bool = False,
        owner: Owner | None = None,
        tag: object = None,
    ) -> None:
        self.eager = eager  # submitted with a ticket: may run without waiting when alone
        self.raw = raw  # waveform holds raw windows; the batcher's ``prepare`` normalises them
        self.prepare_ms = 0.0
        self.waveform = waveform
        self.log_amp = log_amp
        self.future = future
        self.owner = owner
        self.tag = tag
        self.t_submit = time.perf_counter()
        self.started = 0  # rows handed to a batch so far
        self.done_rows = 0  # rows whose output is back
        self.out: list[np.ndarray | None] | None = None  # one entry per model output
        self.compute_ms = 0.0

    @property
    def rows(self) -> int:
        return self.waveform.shape[0]

    def failed(self) -> bool:
        """An earlier part failed, or the caller gave up: the rest need not run."""
        if self.owner is not None:
            return self.owner.closed
        return self.future.done()

    def start(self) -> bool:
        """Mark the job running; False when it was cancelled before it ran."""
        if self.owner is not None:
            return not self.owner.closed
        return self.future.set_running_or_notify_cancel()


class Ticket:
    """A promise to submit soon (see "Idle dispatch" above); spent by ``submit(ticket=...)``.

    Use as a context manager so that a caller that fails before submitting gives it back.
    """

    __slots__ = ("_batcher", "spent")

    def __init__(self, batcher: DynamicBatcher) -> None:
        self._batcher = batcher
        self.spent = False

    def release(self) -> None:
        """Give the ticket back unused (idempotent); the batcher stops counting on it."""
        if not self.spent:
            self.spent = True
            self._batcher._ticket_done()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class DynamicBatcher:
    """Groups queued submissions into model batches, run by ``workers`` threads.

    ``run_fn(waveform (B, C, N), log_amp (B, 1)) -> (B, ...)`` is the model call (or a tuple of
    such arrays, see "Several outputs"). ``max_queue`` bounds the number of rows waiting
    (memory): a submission that does not fit raises :class:`Overloaded` at once rather than
    queueing without limit.
    """

    def __init__(
        self,
        run_fn: RunFn,
        *,
        max_batch: int = DEFAULTS.max_batch,
        max_queue_delay_ms: float = DEFAULTS.max_queue_delay_ms,
        max_queue: int = DEFAULTS.max_queue,
        name: str = "",
        on_batch: OnBatch | None = None,
        prepare: PrepareFn | None = None,
        workers: int = 1,
        statistics: ModelStatistics | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if not max_queue_delay_ms >= 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {max_queue_delay_ms}")
        self.run_fn = run_fn
        self.max_batch = int(max_batch)
        self.max_queue_delay_ms = float(max_queue_delay_ms)
        self.max_queue = int(max_queue)
        self.name = name
        self.on_batch = on_batch
        self.statistics = statistics
        self.prepare = prepare
        """``prepare(raw (B, C, N)) -> (waveform, log_amp)`` for :meth:`submit_raw` rows; run
        once per batch on all raw rows together (one vectorised normalisation)."""
        self._jobs: deque[_Job] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._batches = 0
        self._rows = 0
        self._errors = 0
        self._queue_ms = 0.0
        self._compute_ms = 0.0
        self._max_rows = 0
        self._tickets = 0  # callers preparing a submission (Ticket objects not yet spent)
        self._busy = 0  # model runs in progress (workers' batches and callers' run_if_idle)
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{name or id(self)}-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    @property
    def workers(self) -> int:
        return len(self._threads)

    def expect(self) -> Ticket:
        """A ticket for a submission this caller is preparing (see "Idle dispatch")."""
        with self._cond:
            self._tickets += 1
        return Ticket(self)

    def _ticket_done(self) -> None:
        with self._cond:
            self._tickets -= 1
            self._cond.notify()

    def submit(
        self, waveform: np.ndarray, log_amp: np.ndarray, *, ticket: Ticket | None = None
    ) -> Future:
        """Queue ``k`` rows; the future resolves to ``(rows_out, {"queue": ms, "compute": ms})``.

        ``queue`` is the time the rows spent waiting (end-to-end minus compute), ``compute`` the
        model time of the batch(es) that carried them. ``ticket`` (from :meth:`expect`) is spent
        here, whether or not the rows are accepted.
        """
        try:
            return self._submit(waveform, log_amp, ticket)
        finally:
            if ticket is not None:
                ticket.release()  # a no-op once _submit has spent it

    def submit_raw(
        self, windows: np.ndarray, *, owner: Owner | None = None, tag: object = None
    ) -> Future | None:
        """Queue ``k`` raw windows that ``prepare`` turns into model inputs in the worker.

        All raw rows of a batch are prepared in one call, so per-window preprocessing costs
        (Python overhead, filter set-up) are paid once per batch. The timings also carry
        ``prepare`` (this job's share of the batch's preparation, ms). With an ``owner`` the
        result goes to ``owner.on_rows`` under ``tag`` and nothing is returned; otherwise a
        future, as :meth:`submit`.
        """
        if self.prepare is None:
            raise ValueError("this batcher has no prepare function for raw windows")
        return self._submit(windows, None, None, owner, tag)

    def _submit(
        self,
        waveform: np.ndarray,
        log_amp: np.ndarray | None,
        ticket: Ticket | None,
        owner: Owner | None = None,
        tag: object = None,
    ) -> Future | None:
        raw = log_amp is None
        if waveform.ndim < 1 or (not raw and waveform.shape[0] != log_amp.shape[0]):
            raise ValueError(
                f"waveform and log_amp disagree on the batch size: {waveform.shape} vs "
                f"{log_amp.shape}"
            )
        future: Future | None = None if owner is not None else Future()
        k = waveform.shape[0]
        if k == 0:
            empty = (np.zeros((0,)), {"queue": 0.0, "compute": 0.0})
            if owner is not None:
                owner.on_rows([(tag, *empty)])
                return None
            future.set_running_or_notify_cancel()
            future.set_result(empty)
            return future
        with self._cond:
            if self._closed:
                raise NotReady(f"model {self.name!r} is shutting down")
            if self._queued_rows + k > self.max_queue:
                raise Overloaded(
                    f"model {self.name!r}: queue full ({self._queued_rows} windows waiting, "
                    f"{k} more asked, limit {self.max_queue})"
                )
            eager = ticket is not None and not ticket.spent
            if eager:  # spend it under the same lock, so the worker never sees it half-done
                ticket.spent = True
                self._tickets -= 1
            self._jobs.append(_Job(waveform, log_amp, future, eager, raw, owner, tag))
            self._queued_rows += k
            self._cond.notify()
        return future

    def run_if_idle(
        self, waveform: np.ndarray, log_amp: np.ndarray, ticket: Ticket
    ) -> tuple[Outputs, dict[str, float]] | None:
        """Run ``k`` rows now in this thread when nothing else is queued, running or announced
        (``ticket`` is the only one out) and they fit one batch: ``(rows_out, timings)`` as a
        :meth:`submit` future would give; the ticket is then spent. None (ticket untouched):
        submit them instead. Model errors are raised here.
        """
        rows = waveform.shape[0]
        if waveform.ndim < 1 or log_amp.shape[:1] != (rows,) or not 0 < rows <= self.max_batch:
            return None
        with self._cond:
            if self._closed or ticket.spent or self._jobs or self._busy or self._tickets != 1:
                return None
            ticket.spent = True
            self._tickets -= 1
            self._busy += 1
        t0 = time.perf_counter()
        try:
            out = self.run_fn(waveform, log_amp)
            _row_arrays(out, rows)
        except BaseException:
            with self._cond:
                self._errors += 1
            self._account(rows, 0.0, (time.perf_counter() - t0) * 1e3)
            raise
        finally:
            with self._cond:
                self._busy -= 1
        infer_s = time.perf_counter() - t0
        compute_ms = infer_s * 1e3
        self._account(rows, 0.0, compute_ms)
        if self.statistics is not None:
            self._record(rows, 0.0, 0.0, infer_s, 0.0, [1, 0.0, 0.0, compute_ms, 0.0])
        return out, {"queue": 0.0, "compute": compute_ms}

    def stats(self) -> BatcherStats:
        with self._cond:
            return BatcherStats(
                self._batches,
                self._rows,
                self._errors,
                self._queued_rows,
                self._queue_ms,
                self._compute_ms,
                self._max_rows,
            )

    def close(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Stop taking work; run what is queued (``drain``) or fail it with NotReady."""
        with self._cond:
            if self._closed and not any(t.is_alive() for t in self._threads):
                return
            self._closed = True
            dropped: list[_Job] = []
            if not drain:
                while self._jobs:
                    job = self._jobs.popleft()
                    self._queued_rows -= job.rows - job.started
                    if job.owner is not None:
                        dropped.append(job)
                    elif not job.future.cancel() and not job.future.done():
                        job.future.set_exception(NotReady(f"model {self.name!r} shut down"))
            self._cond.notify_all()
        self._tell_owners(dropped, NotReady(f"model {self.name!r} shut down"))
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(None if end is None else max(end - time.monotonic(), 0.0))

    # -- worker ---------------------------------------------------------------------------

    def _collect(self) -> list[tuple[_Job, int, int]] | None:
        """Wait for work and take up to ``max_batch`` rows: [(job, first_row, n_rows)]."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].t_submit + self.max_queue_delay_ms / 1e3
            while self._queued_rows < self.max_batch and not self._closed:
                if self._nothing_else_coming():
                    break
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken: list[tuple[_Job, int, int]] = []
            room = self.max_batch
            while self._jobs and room > 0:
                job = self._jobs[0]
                if job.started > 0 and job.failed():
                    self._jobs.popleft()  # an earlier part failed: skip the rest
                    self._queued_rows -= job.rows - job.started
                    continue
                if job.started == 0 and not job.start():
                    self._jobs.popleft()  # cancelled by the caller before it ran
                    self._queued_rows -= job.rows
                    continue
                n = min(room, job.rows - job.started)
                taken.append((job, job.started, n))
                job.started += n
                room -= n
                self._queued_rows -= n
                if job.started == job.rows:
                    self._jobs.popleft()
            if taken:
                self._busy += 1  # under the same lock: run_if_idle never sees it half-done
            return taken

    def _nothing_else_coming(self) -> bool:
        """Every queued job came with a ticket and no other ticket is out: waiting gains nothing.

        Called with the lock held. A ticket is released in ``submit`` only after its job is
        queued, so a job whose ticket is spent is already visible here.
        """
        return self._tickets <= 0 and all(job.eager for job in self._jobs)

    def _work(self) -> None:
        while True:
            taken = self._collect()
            if taken is None:
                return
            if taken:
                try:
                    self._run(taken)
                finally:
                    with self._cond:
                        self._busy -= 1

    def _run(self, taken: list[tuple[_Job, int, int]]) -> None:
        t0 = time.perf_counter()
        rows = sum(n for _, _, n in taken)
        queue_ms = (t0 - min(job.t_submit for job, _, _ in taken)) * 1e3
        try:
            parts = self._prepared(taken)
            if len(parts) == 1:
                wave, amp = parts[0]
            else:
                wave = np.concatenate([w for w, _ in parts])
                amp = np.concatenate([a for _, a in parts])
            t_model = time.perf_counter()
            out = self.run_fn(wave, amp)
            arrays = _row_arrays(out, rows)
        except BaseException as exc:
            compute_ms = (time.perf_counter() - t0) * 1e3
            with self._cond:
                self._errors += 1
            owned = []
            for job, _, _ in taken:
                if job.owner is not None:
                    owned.append(job)
                elif not job.future.done():
                    job.future.set_exception(exc)
            self._tell_owners(owned, exc)
            self._account(rows, queue_ms, compute_ms)
            if not isinstance(exc, Exception):
                raise
            return
        t_out = time.perf_counter()
        compute_ms = (t_out - t_model) * 1e3
        self._account(rows, queue_ms, compute_ms)
        at = 0
        t_end = time.perf_counter()
        resolved: list[tuple[Future, Any]] = []  # resolved after the statistics are recorded
        done = [0, 0.0, 0.0, 0.0, 0.0]  # finished jobs: count; queue, prepare, compute, output ms
        finished: dict[int, tuple[Owner, list]] = {}  # id(owner) -> (owner, results)
        for job, first, n in taken:
            if job.failed():  # an earlier part of this job failed, or its owner closed
                at += n
                continue
            if job.out is None and n == job.rows:  # all of it in this batch: views, no copy
                job.out = [None if a is None else a[at : at + n] for a in arrays]
            else:
                if job.out is None:
                    job.out = [
                        None if a is None else np.empty((job.rows, *a.shape[1:]), dtype=a.dtype)
                        for a in arrays
                    ]
                for dst, a in zip(job.out, arrays, strict=True):
                    if a is not None:
                        dst[first : first + n] = a[at : at + n]
            at += n
            job.done_rows += n
            job.compute_ms += compute_ms
            if job.done_rows == job.rows:
                total_ms = (t_end - job.t_submit) * 1e3
                busy_ms = job.compute_ms + job.prepare_ms
                timings = {"queue": max(total_ms - busy_ms, 0.0), "compute": job.compute_ms}
                if job.raw:
                    timings["prepare"] = job.prepare_ms
                result = _like(out, job.out)
                if job.owner is None:
                    resolved.append((job.future, (result, timings)))
                else:
                    entry = finished.setdefault(id(job.owner), (job.owner, []))
                    entry[1].append((job.tag, result, timings))
                done[0] += 1
                done[1] += timings["queue"]
                done[2] += job.prepare_ms
                done[3] += job.compute_ms
                done[4] += (time.perf_counter() - t_out) * 1e3
        if self.statistics is not None:
            output_s = time.perf_counter() - t_out  # splitting the batch's rows into results
            self._record(rows, queue_ms, t_model - t0, t_out - t_model, output_s, done)
        for future, value in resolved:
            future.set_result(value)
        for owner, results in finished.values():
            try:
                owner.on_rows(results)
            except Exception:
                log.exception("a batch result consumer failed (ignored)")

    def _tell_owners(self, jobs: list[_Job], exc: BaseException) -> None:
        """``on_error`` once per owner, with the tags of its jobs."""
        by_owner: dict[int, tuple[Owner, list]] = {}
        for job in jobs:
            by_owner.setdefault(id(job.owner), (job.owner, []))[1].append(job.tag)
        for owner, tags in by_owner.values():
            try:
                owner.on_error(tags, exc)
            except Exception:
                log.exception("a batch result consumer failed (ignored)")

    def _prepared(self, taken: list[tuple[_Job, int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Model inputs for the taken rows, in order; raw rows are prepared in one call."""
        raw = [(j, f, n) for j, f, n in taken if j.raw]
        if raw:
            t0 = time.perf_counter()
            block = raw[0][0].waveform[raw[0][1] : raw[0][1] + raw[0][2]]
            if len(raw) > 1:
                block = np.concatenate([j.waveform[f : f + n] for j, f, n in raw])
            x, amp = self.prepare(block)
            share = (time.perf_counter() - t0) * 1e3 / block.shape[0]
            for j, _, n in raw:
                j.prepare_ms += share * n
            if len(raw) == len(taken):
                return [(x, amp)]
        parts = []
        at = 0
        for j, f, n in taken:
            if j.raw:
                parts.append((x[at : at + n], amp[at : at + n]))
                at += n
            else:
                parts.append((j.waveform[f : f + n], j.log_amp[f : f + n]))
        return parts

    def _record(
        self,
        rows: int,
        queue_ms: float,
        input_s: float,
        infer_s: float,
        output_s: float,
        done: list,
    ) -> None:
        """One successful run into :attr:`statistics`; ``done``: the jobs it finished (count,
        then their summed queue, prepare, compute and output ms)."""
        try:
            self.statistics.record_execution(
                rows,
                int(queue_ms * 1e6),
                int(input_s * 1e9),
                int(infer_s * 1e9),
                int(output_s * 1e9),
                Finished(
                    count=done[0],
                    queue_ns=int(done[1] * 1e6),
                    input_ns=int(done[2] * 1e6),
                    infer_ns=int(done[3] * 1e6),
                    output_ns=int(done[4] * 1e6),
                ),
            )
        except Exception:
            log.exception("statistics not recorded (ignored)")

    def _account(self, rows: int, queue_ms: float, compute_ms: float) -> None:
        with self._cond:
            self._batches += 1
            self._rows += rows
            self._queue_ms += queue_ms
            self._compute_ms += compute_ms
            self._max_rows = max(self._max_rows, rows)
        hook = self.on_batch
        if hook is not None:
            try:
                hook(self.name, rows, queue_ms, compute_ms)
            except Exception:
                log.exception("on_batch hook failed (ignored)")


def _output_arrays(out: Outputs) -> list[np.ndarray | None]:
    """The arrays of a model result (one array, or a tuple of arrays and None)."""
    if isinstance(out, tuple):
        return [None if a is None else np.asarray(a) for a in out]
    return [np.asarray(out)]


def _row_arrays(out: Outputs, rows: int) -> list[np.ndarray | None]:
    """The arrays of a model result, each checked to hold one row per input row."""
    arrays = _output_arrays(out)
    for a in arrays:
        if a is not None and a.shape[:1] != (rows,):
            raise RuntimeError(f"model returned {a.shape[:1]} rows for a batch of {rows}")
    return arrays


def _like(out: Outputs, parts: list[np.ndarray | None]) -> Outputs:
    """A job's rows in the form ``run_fn`` returned: an array, a tuple, or the same NamedTuple."""
    if not isinstance(out, tuple):
        return parts[0]
    make = getattr(type(out), "_make", None)
    return make(parts) if make is not None else tuple(parts)
