"""When a small Predict may run its model on the event loop instead of handing it to a worker.

A Predict prepared on the loop (a 30 s record: decode and windows, ~0.8 ms) used to hand its
window to a batcher worker and wait for the answer: two thread wake-ups, 0.3 ms of a 3.7 ms
request on the 2-core test machine. When the model is idle it can run where the window was made.
But while it runs the loop serves nothing else, so under concurrent load every request would
wait for the one before it (one core doing all the work: 385 -> 339 requests/s at 4 clients)
and, worse, the loop could not see that: a request that arrives meanwhile starts only after.

So the policy watches what only the batcher path shows, Predicts overlapping: the model runs on
the loop only after ``QUIET`` Predicts in a row started with no other in flight, and every
``PROBE``-th Predict still goes through the batcher, leaving the loop free for a model's time so
that a waiting client shows itself and ends the quiet run.
"""

from __future__ import annotations

QUIET = 16
"""Predicts in a row that must start alone before models run on the loop."""
PROBE = 8
"""Every this many Predicts, one goes through the batcher to look for concurrent clients."""


class LoopModelPolicy:
    """Counts Predicts in flight (on the loop's thread only: no lock) and says, as each starts,
    whether it may run its model on the loop."""

    def __init__(self, quiet: int = QUIET, probe: int = PROBE) -> None:
        self.quiet_needed = quiet
        self.probe = probe
        self.in_flight = 0
        self.quiet = 0
        """Predicts in a row that started with no other in flight."""
        self._started = 0

    def start(self) -> bool:
        """A Predict starts: True when it may run its model on the loop (see the module)."""
        self.quiet = 0 if self.in_flight else self.quiet + 1
        self.in_flight += 1
        self._started += 1
        return self.quiet > self.quiet_needed and self._started % self.probe != 0

    def end(self) -> None:
        self.in_flight -= 1
