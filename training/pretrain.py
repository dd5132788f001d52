"""Self-supervised pretraining of an encoder on unlabelled waveforms, resumably, without pickle.

Sources are SeisBench-format datasets (every trace of the ``train`` split; labels, picks and
magnitudes are ignored) or folders of miniSEED (each station's traces, brought to the card's
rate and component order by the one preprocessing path). Each example is a window of the card's
length cut at a random position of a random trace (so noise-only stretches, P and S codas all
occur), normalised by :func:`seismag.models.preprocess.normalise` exactly as the magnitude models'
inputs are.

The budget is a number of optimizer steps (so a run's result does not depend on how busy the
machine was), optionally cut short by ``max_minutes``; the learning rate warms up linearly and
then follows a cosine to zero over the steps, and the Gumbel temperature (contrastive encoder) is
annealed geometrically from the card's start to its end value. A fixed set of dev windows (the
``dev`` split, or windows of the sources drawn with a separate seed) with fixed masks is scored at
every checkpoint.

Checkpoints (``<out>/checkpoint/``, every ``checkpoint_every`` steps and at the end):
``encoder.safetensors`` (card in the metadata), ``optimizer.safetensors`` and ``state.json``.
The final weights are ``<out>/<encoder>.safetensors``; ``history.json`` holds the logged losses,
codebook perplexity and throughput (windows per second).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from seismag.models.encoder_card import EncoderCard, get_encoder_card
from seismag.models.preprocess import PreprocessError, normalise, stream_to_array


class PretrainError(RuntimeError):
    """Pretraining cannot start or resume as asked (the message says why)."""


class WindowSource:
    """Unlabelled traces held in RAM as (C, N_i) float32 arrays; draws normalised windows."""

    def __init__(self, traces: list[np.ndarray], card: EncoderCard, description: str):
        n = card.in_samples
        self.traces = [t for t in traces if t.shape[-1] >= n]
        if not self.traces:
            raise PretrainError(
                f"{description}: no trace is {n} samples ({n / card.sampling_rate:g} s) long"
            )
        self.card = card
        self.description = description

    def __len__(self) -> int:
        return len(self.traces)

    def batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        n = self.card.in_samples
        picks = rng.integers(0, len(self.traces), size)
        windows = []
        for i in picks:
            trace = self.traces[int(i)]
            start = int(rng.integers(0, trace.shape[-1] - n + 1))
            windows.append(trace[:, start : start + n])
        x, _ = normalise(
            np.stack(windows),
            self.card.normalisation,
            highpass_hz=self.card.highpass_hz,
            sampling_rate=self.card.sampling_rate,
        )
        return x


def _seisbench_traces(card: EncoderCard, path: Path, split: str, limit: int | None) -> list:
    from seismag.training.dataset import dataset_for

    ds = dataset_for(card, path, PretrainError)
    sub = ds.split(split) if "split" in ds.metadata else ds
    rows = np.arange(len(sub))
    if limit is not None and limit < len(rows):
        rows = np.sort(np.random.default_rng(0x5EED).choice(rows, size=limit, replace=False))
    return [np.asarray(sub.get_waveform(int(i)), dtype=np.float32) for i in rows]


def _mseed_traces(card: EncoderCard, path: Path) -> list:
    from obspy import Stream, read

    files = sorted(p for p in path.rglob("*") if p.is_file())
    stream = Stream()
    for f in files:
        try:
            stream += read(str(f))
        except Exception as exc:  # ObsPy raises TypeError/ValueError/... for non-waveform files
            raise PretrainError(f"{f}: not a readable waveform file ({exc})") from exc
    traces = []
    for key in sorted({(t.stats.network, t.stats.station, t.stats.location) for t in stream}):
        station = stream.select(network=key[0], station=key[1], location=key[2])
        try:
            arr = stream_to_array(station, card, missing="zeros")
        except PreprocessError as exc:
            raise PretrainError(f"{'.'.join(key)}: {exc}") from exc
        traces.append(np.asarray(arr.data, dtype=np.float32))
    return traces


def open_sources(
    card: EncoderCard, paths: list[str | Path], split: str = "train", limit: int | None = None
) -> WindowSource:
    """All traces of the given datasets and miniSEED folders (a dataset has metadata.csv)."""
    traces: list[np.ndarray] = []
    for p in map(Path, paths):
        if not p.exists():
            raise PretrainError(f"data not found: {p}")
        if (p / "metadata.csv").is_file():
            traces += _seisbench_traces(card, p, split, limit)
        elif p.is_dir():
            traces += _mseed_traces(card, p)
        else:
            raise PretrainError(
                f"{p}: give a SeisBench-format dataset folder or a folder of miniSEED"
            )
    return WindowSource(traces, card, ", ".join(map(str, paths)))


def _lr(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _tau(step: int, steps: int, recipe: dict) -> float:
    start, end = float(recipe.get("gumbel_start", 2.0)), float(recipe.get("gumbel_end", 0.5))
    return start * (end / start) ** min(step / max(steps - 1, 1), 1.0)


def pretrain(
    encoder: str,
    data: list[str | Path],
    out_dir: str | Path,
    *,
    steps: int = 2000,
    max_minutes: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    resume: bool = False,
    limit: int | None = None,
    threads: int | None = None,
    device: str = "auto",
    checkpoint_every: int = 200,
    log_every: int = 50,
    progress: bool = True,
    card_overrides: dict | None = None,
) -> Path:
    """Pretrain ``encoder`` on ``data``; returns the path of the final weights."""
    import torch
    from tqdm import tqdm

    from seismag.models.encoders import build_encoder, save_encoder
    from seismag.training.train import (
        _atomic_write_text,
        _load_optimizer,
        _save_optimizer,
        resolve_device,
    )

    card = dataclasses.replace(get_encoder_card(encoder), **(card_overrides or {}))
    recipe = card.pretraining
    if threads is not None:
        torch.set_num_threads(int(threads))
    device = resolve_device(device)
    if steps < 1:
        raise PretrainError("steps must be >= 1")
    bs = int(batch_size or recipe.get("batch_size", 16))
    base_lr = float(lr or recipe.get("learning_rate", 5e-4))
    warmup = min(int(recipe.get("warmup_steps", 0)), steps // 4)
    source = open_sources(card, list(data), "train", limit)
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"

    torch.manual_seed(seed)
    model = build_encoder(card).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=base_lr, weight_decay=float(recipe.get("weight_decay", 0.0))
    )
    # Fixed dev windows and masks: comparable across checkpoints.
    dev_x = torch.from_numpy(source.batch(np.random.default_rng([seed, 0xDE5]), 64))
    config = {
        "encoder": card.name,
        "data": [str(p) for p in data],
        "traces": len(source),
        "steps": steps,
        "batch_size": bs,
        "learning_rate": base_lr,
        "warmup_steps": warmup,
        "seed": seed,
        "limit": limit,
        "card": json.loads(card.to_json()),
    }
    state = {"step": 0, "history": [], "seconds": 0.0}
    if resume:
        if not (ckpt / "state.json").is_file():
            raise PretrainError(f"nothing to resume in {ckpt}")
        saved = json.loads((ckpt / "state.json").read_text())
        if saved["config"]["encoder"] != card.name:
            raise PretrainError(f"{ckpt} holds a run of {saved['config']['encoder']}")
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ckpt / "encoder.safetensors")))
        _load_optimizer(optimizer, ckpt / "optimizer.safetensors", saved["optimizer"], device)
        state = saved["state"]
    out_dir.mkdir(parents=True, exist_ok=True)

    def dev_loss() -> dict[str, float]:
        model.eval()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            loss, stats = model.pretrain_loss(dev_x.to(device), _tau(steps, steps, recipe), gen)
        model.train()
        return {"loss": float(loss), **stats}

    def checkpoint() -> None:
        ckpt.mkdir(parents=True, exist_ok=True)
        save_encoder(model, ckpt / "encoder.safetensors")
        rest = _save_optimizer(optimizer, ckpt / "optimizer.safetensors")
        _atomic_write_text(
            ckpt / "state.json",
            json.dumps({"config": config, "state": state, "optimizer": rest}, indent=1),
        )

    started = time.monotonic()
    seconds_before = float(state["seconds"])
    window_stats: dict[str, float] = {}
    n_logged, t_log = 0, time.monotonic()
    bar = tqdm(
        total=steps,
        initial=state["step"],
        desc=f"pretrain {card.name}",
        unit="step",
        disable=not progress,
    )
    model.train()
    stopped = "steps"
    while state["step"] < steps:
        step = state["step"]
        for g in optimizer.param_groups:
            g["lr"] = _lr(step, steps, base_lr, warmup)
        # Windows, masks, distractors and Gumbel noise drawn from the step number alone: a
        # resumed run continues exactly as an uninterrupted one would.
        rng = np.random.default_rng([seed, step, 0x9E7])
        torch.manual_seed(seed * 1_000_003 + step)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x = torch.from_numpy(source.batch(rng, bs)).to(device)
        loss, stats = model.pretrain_loss(x, _tau(step, steps, recipe), gen)
        if not torch.isfinite(loss):
            raise PretrainError(f"{card.name}: non-finite loss at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = float(recipe.get("gradient_clip", 0.0))
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        state["step"] = step + 1
        for k, v in {"loss": float(loss.detach()), **stats}.items():
            window_stats[k] = window_stats.get(k, 0.0) + v
        n_logged += 1
        bar.update(1)
        done = state["step"] >= steps
        if state["step"] % log_every == 0 or done:
            elapsed = time.monotonic() - t_log
            row = {k: v / n_logged for k, v in window_stats.items()}
            row.update(
                step=state["step"],
                lr=optimizer.param_groups[0]["lr"],
                windows_per_s=n_logged * bs / max(elapsed, 1e-9),
            )
            if "perplexity" in stats:
                row["gumbel_tau"] = _tau(step, steps, recipe)
            state["history"].append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            window_stats, n_logged, t_log = {}, 0, time.monotonic()
        over = max_minutes is not None and time.monotonic() - started > max_minutes * 60
        if state["step"] % checkpoint_every == 0 or done or over:
            state["seconds"] = seconds_before + time.monotonic() - started
            state.setdefault("dev", []).append({"step": state["step"], **dev_loss()})
            checkpoint()
        if over:
            stopped = "time_budget"
            break
    bar.close()
    state["stopped"] = stopped
    final = out_dir / f"{card.name}.safetensors"
    save_encoder(
        model, final, extra={"steps": str(state["step"]), "data": json.dumps(config["data"])}
    )
    _atomic_write_text(
        out_dir / "history.json", json.dumps({"config": config, "state": state}, indent=1)
    )
    return final
