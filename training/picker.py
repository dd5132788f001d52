"""``seismag train-picker``: train the P picker network on a SeisBench-format dataset.

Windows of the card's length are cut at random from each trace's ``train`` split: mostly around
P (from P just past the window's end to S inside it), a quarter anywhere in the trace (noise,
coda, S), some starting before the record and padded with its first sample, as the server pads
the start of a feed. Labels are PhaseNet's (Zhu & Beroza 2019): Gaussians at P and S, noise the
rest. Some windows have the horizontals zeroed (stations with Z only). The best weights by the
loss on a fixed set of ``dev`` windows are kept. The inputs go through the one preprocessing path
(:func:`seismag.models.preprocess.picker_inputs`) the server uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seismag.models.picker import build_picker
from seismag.models.picker_card import PickerCard, get_picker_card
from seismag.models.preprocess import last_window, picker_inputs
from seismag.training.dataset import WaveformDataset


class PickerTrainingError(RuntimeError):
    """The data cannot train the picker (the message says why)."""


@dataclass
class Traces:
    """Whole traces in memory with their P and S samples (NaN S: none in the trace)."""

    waveforms: np.ndarray  # (T, C, N) float32
    p: np.ndarray
    s: np.ndarray


def load_traces(path: str | Path, split: str, card: PickerCard, limit: int, seed: int) -> Traces:
    ds = WaveformDataset(path, component_order=card.component_order)
    if "split" in ds.metadata.columns:
        ds = ds.split(split)
    if ds.sampling_rate != card.sampling_rate:
        raise PickerTrainingError(
            f"{path}: traces at {ds.sampling_rate} Hz; the picker's card needs one rate of "
            f"{card.sampling_rate:g} Hz"
        )
    meta = ds.metadata
    if "trace_p_arrival_sample" not in meta.columns:
        raise PickerTrainingError(f"{path}: no trace_p_arrival_sample column (P picks)")
    keep = np.flatnonzero(meta["trace_p_arrival_sample"].notna().to_numpy())
    if keep.size == 0:
        raise PickerTrainingError(f"{path}: no {split} trace has a P pick")
    rng = np.random.default_rng(seed)
    rows = rng.choice(keep, size=min(limit, keep.size), replace=False)
    waves = [ds.get_waveform(int(i)) for i in rows]
    n = min(w.shape[-1] for w in waves)
    if n < card.in_samples:
        raise PickerTrainingError(f"{path}: traces of {n} samples, shorter than one window")
    s_col = meta.get("trace_s_arrival_sample", np.full(len(meta), np.nan))
    return Traces(
        np.stack([w[:, :n] for w in waves]).astype(np.float32),
        meta["trace_p_arrival_sample"].to_numpy(float)[rows],
        np.asarray(s_col, dtype=float)[rows],
    )


def labels(p: np.ndarray, s: np.ndarray, start: np.ndarray, card: PickerCard) -> np.ndarray:
    """(B, 3, N) targets for windows starting at ``start``: noise, P, S. An arrival in the
    padding before the record cannot be seen and gets no label."""
    sigma = card.label_sigma_s * card.sampling_rate
    t = np.arange(card.in_samples)[None, :]
    visible = t >= (-start)[:, None]

    def bump(arrival: np.ndarray) -> np.ndarray:
        x = (t - (arrival - start)[:, None]) / sigma
        return np.where(visible & np.isfinite(x), np.exp(-0.5 * np.nan_to_num(x) ** 2), 0.0)

    lp, ls = bump(p), bump(s)
    return np.stack([np.clip(1.0 - lp - ls, 0.0, 1.0), lp, ls], axis=1).astype(np.float32)


def sample_windows(
    traces: Traces, rng: np.random.Generator, batch: int, card: PickerCard
) -> tuple[np.ndarray, np.ndarray]:
    """A random batch: network inputs (B, C, W) and labels (B, 3, W)."""
    w, n = card.in_samples, traces.waveforms.shape[-1]
    idx = rng.integers(0, len(traces.p), batch)
    p = traces.p[idx]
    start = np.round(p - rng.uniform(-0.3 * w, 1.2 * w, batch)).astype(int)
    anywhere = rng.random(batch) < 0.25
    start[anywhere] = rng.integers(-w // 2, n - w + 1, int(anywhere.sum()))
    start = np.clip(start, -w + card.warmup, n - w)
    raw = np.stack(
        [last_window(traces.waveforms[i, :, : a + w], w) for i, a in zip(idx, start, strict=True)]
    )
    z_only = rng.random(batch) < float(card.training.get("z_only_share", 0.0))
    raw[z_only, 1:] = 0.0
    return picker_inputs(raw, card), labels(p, traces.s[idx], start, card)


def train_picker(
    data: str | Path,
    out: str | Path,
    *,
    minutes: float,
    card: PickerCard | None = None,
    max_traces: int = 8000,
    seed: int = 0,
    threads: int | None = None,
    init_weights: str | Path | None = None,
    lr: float | None = None,
    device: str = "cpu",
    log=print,
) -> dict:
    """Train for ``minutes`` of wall clock; write ``out`` (safetensors); return a summary.

    ``init_weights``: start from these picker weights (safetensors) instead of a random
    initialisation; they are scored on dev as they are and written back unchanged unless a
    later dev loss beats them. ``lr``: Adam's learning rate instead of the card's. ``device``:
    where the network trains (``auto``, ``cpu``, ``cuda``...); windows are drawn on the CPU and
    the weights are written from the CPU either way. Before every
    dev loss the BatchNorm statistics are recomputed over training windows (precise BN, as
    :func:`seismag.training.train.precise_batchnorm` explains), so the best weights are chosen by
    the weights, not by the last batches' running averages.
    """
    from safetensors.torch import load_file, save_file

    from seismag.training.train import PRECISE_BN_BATCHES, precise_batchnorm, resolve_device

    card = card or get_picker_card()
    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = load_traces(data, "train", card, max_traces, seed)
    try:
        dev = load_traces(data, "dev", card, max(max_traces // 10, 64), seed + 1)
    except PickerTrainingError:
        dev = train
    dev_x, dev_y = sample_windows(dev, np.random.default_rng(seed + 2), 512, card)
    dev_x, dev_y = torch.from_numpy(dev_x).to(device), torch.from_numpy(dev_y).to(device)
    model = build_picker(card)
    if init_weights is not None:
        try:
            model.load_state_dict(load_file(str(init_weights)))
        except (OSError, RuntimeError) as exc:
            raise PickerTrainingError(f"{init_weights}: not weights of {card.name}: {exc}") from exc
    model.to(device)
    lr = float(card.training["learning_rate"]) if lr is None else float(lr)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batch = int(card.training["batch_size"])
    log(
        f"picker {card.name}: {len(train.p)} train traces, {len(dev.p)} dev, {minutes:g} min, "
        f"lr {lr:g}, {device}" + (f", from {init_weights}" if init_weights is not None else "")
    )

    def dev_loss(recompute_bn: bool = True) -> float:
        if recompute_bn:
            bn_rng = np.random.default_rng([seed, step, 0xB4])
            batches = (
                sample_windows(train, bn_rng, batch, card)[:1] for _ in range(PRECISE_BN_BATCHES)
            )
            precise_batchnorm(model, batches, device)
        model.eval()
        with torch.no_grad():
            loss = -(dev_y * torch.log_softmax(model(dev_x), 1)).sum(1).mean()
        model.train()
        return float(loss)

    def snapshot() -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    best, best_state, step, t0 = np.inf, None, 0, time.monotonic()
    start_loss = None
    if init_weights is not None:
        # The starting weights as they would ship (their own BatchNorm statistics) are the best
        # so far: a continuation that never beats them writes them back unchanged.
        best = start_loss = dev_loss(recompute_bn=False)
        best_state = snapshot()
        log(f"start: dev loss {start_loss:.4f}")
    while time.monotonic() - t0 < minutes * 60 or best_state is None or step == 0:
        x, y = sample_windows(train, rng, batch, card)
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        loss = -(y * torch.log_softmax(model(x), 1)).sum(1)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        step += 1
        if step % 500 == 0 or time.monotonic() - t0 >= minutes * 60:
            d = dev_loss()
            if d < best:
                best, best_state = d, snapshot()
            log(f"step {step}, {time.monotonic() - t0:.0f} s: dev loss {d:.4f} (best {best:.4f})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(best_state, str(out), metadata={"picker_card": card.to_json()})
    return {
        "steps": step,
        "lr": lr,
        "device": device,
        "init_weights": None if init_weights is None else str(init_weights),
        "dev_loss": best,
        "start_dev_loss": start_loss,
        "minutes": (time.monotonic() - t0) / 60,
        "out": str(out),
    }
