"""Parameter count and PyTorch eager forward (or training-step) time of every model.

    python benchmarks/forward_latency.py --batch 32 --repeats 7 --threads 2
    python benchmarks/forward_latency.py --train-step --batch 64 --models UMambaMagV2

Prints a Markdown table: the median (and min/max) of ``--repeats`` timed forward passes after
one warm-up pass, in ``torch.inference_mode`` on the CPU; with ``--train-step``, timed training
steps instead (forward, MSE loss, backward, AdamW step). Mamba models use the compiled scan
kernel when numba is installed; ``SEISMAG_SCAN_KERNEL=0`` times the standard-op scan instead.
Numbers depend on the machine; the table header names it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from seismag.models import build_model, load_cards
from seismag.models.base import count_parameters
from seismag.models.preprocess import model_inputs


def time_forward(
    name: str, batch: int, repeats: int, train_step: bool = False
) -> tuple[int, list[float]]:
    torch.manual_seed(0)
    model = build_model(name).eval()
    card = model.card
    raw = np.random.default_rng(0).normal(size=(batch, card.in_channels, card.in_samples))
    x, amp = (torch.from_numpy(a) for a in model_inputs(raw * 1e-6, card))
    if train_step:
        return count_parameters(model), _time_train_step(model.train(), x, amp, repeats)
    times = []
    with torch.inference_mode():
        model(x, amp)  # warm-up: allocator, thread pool, lazy init
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, amp)
            times.append((time.perf_counter() - t0) * 1e3)
    return count_parameters(model), times


def _time_train_step(model, x, amp, repeats: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    target = torch.zeros_like(model(x, amp))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, amp), target).backward()
        opt.step()

    step()  # warm-up (and the kernel's compile, or its cache load)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--train-step", action="store_true", help="time training steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cards = load_cards()
    names = args.models or list(cards)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
        f"{args.repeats} repeats\n"
    )
    what = "training step" if args.train_step else "forward"
    print(f"| model | parameters | design-notes estimate | {what} ms (median) | min | max |")
    print("|---|---:|---|---:|---:|---:|")
    for name in names:
        params, times = time_forward(name, args.batch, args.repeats, args.train_step)
        est = cards[name].seed_parameter_estimate or "-"
        print(
            f"| {name} | {params:,} | {est} | {statistics.median(times):.1f} | "
            f"{min(times):.1f} | {max(times):.1f} |"
        )


if __name__ == "__main__":
    main()
