"""Train one magnitude model from its card's recipe, resumably, without pickle.

The recipe is the card's :class:`~seismag.models.card.TrainingDefaults`: Adam or AdamW, learning
rate, batch size, weight decay, gradient clipping (0 = off), a linear warm-up over the first
``warmup_epochs`` (per step), then ReduceLROnPlateau on the dev loss, and early stopping on the dev
per-waveform MAE. Loss is MSE against :func:`seismag.training.windows.target`, in the model's
output units (magnitudes): over the samples for series models (the label, zero before P and
magnitude + the card's offset after, shifted by the offset the model removes), per waveform for
scalar models (the catalogue magnitude, never a window mean of the series label). Cards with
``uncertainty = "gaussian"`` train the magnitude and its standard deviation together with the
beta-NLL of Seitzer et al. (2022, ICLR) at beta = 1: the Gaussian negative log-likelihood with
each value's term weighted by its (detached) variance. The magnitude then gets exactly the MSE
gradient (the plain NLL would down-weight hard examples and trade accuracy for large sigmas), and
sigma still converges to the error's standard deviation. With beta = 0.5 the gradient of the
mean scales as 1/sigma, so the per-sample series models chase the easy pre-P zeros, whose sigma
is smallest: PhaseNetMag's dev MAE after its first epoch on the regime data was 2.0 at beta 0.5
and 1.0 at beta 1 (one run each).

Examples are windows ending at a drawn time (:mod:`seismag.training.windows`), normalised by the
one preprocessing path (:func:`seismag.models.preprocess.model_inputs`). Splits are the dataset's
event-based ``split`` column, so no event is in both train and test.

Memory: a split is held in RAM (``load_all``) when it fits in ``cache_gb`` (default 2 GB, about
27,000 traces of 3 x 6000 float32); otherwise traces are read on the fly with ``get_waveform``
each batch (slower, constant memory). Dev windows are fixed (drawn once) so dev numbers compare
across epochs.

BatchNorm statistics are recomputed before every dev pass as the plain average over
``PRECISE_BN_BATCHES`` training batches ("precise BN", Wu & Johnson 2021, "Rethinking 'Batch' in
BatchNorm", arXiv:2105.07576). The running averages BatchNorm keeps while training (momentum 0.1)
follow the last few augmented batches: with them PhaseNetMag's dev MAE jumped between 0.21 and
0.48 from one epoch to the next at a learning rate of 2.5e-5, and the epoch-19 weights scored
0.361 as saved and 0.211 with recomputed statistics, so the best epoch was chosen by chance.

Checkpoints (``<out>/checkpoint/``, rewritten after every epoch): ``model.safetensors`` (via
:func:`~seismag.models.weights.save_weights`, card included), ``optimizer.safetensors`` (optimizer
state tensors) and ``state.json`` (epoch, scheduler, early-stopping counters, history, optimizer
scalars). The best weights go to ``<out>/<model>.safetensors``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seismag.models.card import ModelCard, get_card
from seismag.training.digitiser_band import band_limit_some
from seismag.training.evaluate import window_magnitudes
from seismag.training.windows import make_batch, onset_sample, training_ends

DEFAULT_EPOCHS = 100
BETA_NLL = 1.0
DEV_EPOCH = 2**31 - 1
"""The (seed, epoch) stream the fixed dev windows are drawn from."""
CHECKPOINT_FORMAT = 1
MIN_IMPROVEMENT = 1e-4
"""Dev MAE must drop by this much to count as an improvement for early stopping."""
PRECISE_BN_BATCHES = 100
"""Training batches whose BatchNorm statistics are averaged before every dev pass."""


class TrainingError(RuntimeError):
    """Training cannot start or resume as asked (the message says why)."""


def resolve_device(device: str) -> str:
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA request on a CPU host fails."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} asked for, but CUDA is not available here")
    return device


@dataclass
class SplitTraces:
    """The usable traces of one split: metadata columns plus the waveforms (cached or lazy)."""

    dataset: object
    rows: np.ndarray  # positions in ``dataset``
    p_samples: np.ndarray
    magnitudes: np.ndarray
    lengths: np.ndarray
    cache: np.ndarray | None = None  # (len(rows), C, N) when held in RAM

    def __len__(self) -> int:
        return len(self.rows)

    def traces(self, positions: np.ndarray) -> list[np.ndarray]:
        if self.cache is not None:
            return [self.cache[j] for j in positions]
        return [np.asarray(self.dataset.get_waveform(int(self.rows[j]))) for j in positions]


def load_split(
    dataset,
    name: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    cache_gb: float = 2.0,
) -> SplitTraces:
    """One split's traces that have a P pick and a magnitude; ``limit`` keeps a seeded subset.

    When the traces fit in ``cache_gb`` they are read once into RAM (the whole split through the
    dataset's ``load_all``, one read per HDF5 bucket; a subset trace by trace); otherwise they
    stay on disk and every batch reads its traces with ``get_waveform``.
    """
    sub = dataset.split(name)
    meta = sub.metadata
    p = meta["trace_p_arrival_sample"].to_numpy(dtype=np.float64)
    mag = meta["source_magnitude"].to_numpy(dtype=np.float64)
    rows = np.flatnonzero(np.isfinite(p) & np.isfinite(mag) & (p >= 0))
    subset = limit is not None and limit < len(rows)
    if subset:
        rng = np.random.default_rng([int(seed), 0x11A1])
        rows = np.sort(rng.choice(rows, size=int(limit), replace=False))
    if len(rows) == 0:
        empty = np.zeros(0)
        return SplitTraces(sub, rows, empty, empty, np.zeros(0, dtype=np.int64))
    first = np.asarray(sub.get_waveform(int(rows[0])))
    size_gb = len(rows) * first.size * 4 / 1e9
    cache = None
    if size_gb <= cache_gb:
        if subset:
            cache = np.stack([np.asarray(sub.get_waveform(int(i)), np.float32) for i in rows])
        else:
            sub.load_all()
        lengths = np.array([sub.get_waveform(int(i)).shape[-1] for i in rows], dtype=np.int64)
    elif "trace_npts" in meta:
        lengths = meta["trace_npts"].to_numpy(dtype=np.int64)[rows]
    else:  # streamed, length unknown until read: assume the first trace's, clip when cut
        lengths = np.full(len(rows), first.shape[-1], dtype=np.int64)
    keep = onset_sample(p[rows]) < lengths  # P must lie inside the trace
    return SplitTraces(
        dataset=sub,
        rows=rows[keep],
        p_samples=p[rows][keep],
        magnitudes=mag[rows][keep],
        lengths=lengths[keep],
        cache=None if cache is None else cache[keep],
    )


def _batches(
    split: SplitTraces,
    order: np.ndarray,
    ends: np.ndarray,
    card: ModelCard,
    size: int,
    augment: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
):
    for i in range(0, len(order), size):
        pos = order[i : i + size]
        traces = split.traces(pos)
        if augment is not None:
            traces = augment(traces)
        # On-the-fly traces can be shorter than the metadata said: never cut past the data.
        e = np.array(
            [min(int(ends[j]), t.shape[-1]) for j, t in zip(pos, traces, strict=True)],
            dtype=np.int64,
        )
        yield make_batch(traces, split.p_samples[pos], split.magnitudes[pos], e, card)


# --- optimizer / scheduler state without pickle --------------------------------------------------


def _save_optimizer(optimizer, path: Path) -> dict:
    """Tensors of the optimizer state to safetensors; returns the JSON-able remainder."""
    import torch
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float | int | bool | None]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    save_file(tensors, str(path))
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer, path: Path, rest: dict, device: str) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path), device="cpu")
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for g in rest["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    for st in optimizer.state.values():  # load_state_dict casts to the params' device
        for key, value in st.items():
            if hasattr(value, "to") and key != "step":
                st[key] = value.to(device)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_dev_mae: float = math.inf
    best_epoch: int = 0  # 0 with init_weights: no epoch beat the starting weights
    start_dev_mae: float | None = None  # the init_weights' dev MAE, before any step
    bad_epochs: int = 0
    stopped: str | None = None
    history: list[dict] = field(default_factory=list)


def _save_checkpoint(ckpt: Path, model, optimizer, scheduler, state: TrainState, config: dict):
    from seismag.models.weights import save_weights

    ckpt.mkdir(parents=True, exist_ok=True)
    save_weights(model, ckpt / "model.safetensors.tmp", extra={"epoch": str(state.epoch)})
    os.replace(ckpt / "model.safetensors.tmp", ckpt / "model.safetensors")
    opt_rest = _save_optimizer(optimizer, ckpt / "optimizer.safetensors.tmp")
    os.replace(ckpt / "optimizer.safetensors.tmp", ckpt / "optimizer.safetensors")
    doc = {
        "format": CHECKPOINT_FORMAT,
        "model": model.card.name,
        "config": config,
        "state": state.__dict__,
        "optimizer": opt_rest,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "optimizer"},
    }
    # state.json is written last: it is the marker that the files above form one checkpoint.
    _atomic_write_text(ckpt / "state.json", json.dumps(doc, indent=1))


def _load_checkpoint(ckpt: Path, model, optimizer, scheduler, device: str) -> TrainState:
    from seismag.models.weights import WeightsError, load_weights

    state_file = ckpt / "state.json"
    if not state_file.is_file():
        raise TrainingError(f"nothing to resume: {state_file} does not exist")
    doc = json.loads(state_file.read_text(encoding="utf-8"))
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{state_file}: unknown checkpoint format {doc.get('format')!r}")
    if doc.get("model") != model.card.name:
        raise TrainingError(f"{ckpt} is a checkpoint of {doc.get('model')}, not {model.card.name}")
    try:
        load_weights(model, ckpt / "model.safetensors")
    except WeightsError as exc:
        raise TrainingError(str(exc)) from exc
    model.to(device)
    _load_optimizer(optimizer, ckpt / "optimizer.safetensors", doc["optimizer"], device)
    scheduler.load_state_dict(doc["scheduler"])
    return TrainState(**doc["state"])


# --- the loop ------------------------------------------------------------------------------------


def magnitude_loss(model, waveform, log_amp, target, card: ModelCard):
    """(loss, magnitude output) for one batch: MSE, or beta-NLL with a sigma."""
    import torch

    known = torch.isfinite(target)  # NaN: samples without a label (windows.target)
    target = torch.where(known, target, torch.zeros_like(target))
    if card.uncertainty != "gaussian":
        out = model(waveform, log_amp)
        return (((out - target) ** 2) * known).sum() / known.sum().clamp(min=1), out
    mean, sigma = model.forward_with_sigma(waveform, log_amp)
    nll = torch.log(sigma) + 0.5 * ((target - mean) / sigma) ** 2
    weight = sigma.detach() ** (2 * BETA_NLL)
    return (weight * nll * known).sum() / known.sum().clamp(min=1), mean


def batchnorm_layers(model) -> list:
    """The model's BatchNorm layers (what :func:`precise_batchnorm` recomputes)."""
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def precise_batchnorm(model, batches, device: str = "cpu") -> int:
    """Set every BatchNorm layer's running mean and variance to the average of its batch
    statistics over ``batches`` (a finite iterable of tuples of numpy arrays, the model's
    positional inputs), the weights untouched. Returns how many batches were used; 0 where the
    model has no BatchNorm (nothing is run)."""
    import torch

    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches seen
    model.train()
    used = 0
    with torch.no_grad():
        for inputs in batches:
            model(*(torch.from_numpy(x).to(device) for x in inputs))
            used += 1
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return used


def precise_bn_batches(split: SplitTraces, card: ModelCard, size: int, seed: int, epoch: int):
    """The seeded training batches :func:`precise_batchnorm` averages over for one epoch."""
    ends = training_ends(split.p_samples, split.lengths, card, seed=seed, epoch=epoch)
    rng = np.random.default_rng([int(seed), int(epoch), 0xB4])
    order = rng.permutation(len(split))[: PRECISE_BN_BATCHES * size]
    return ((b.waveform, b.log_amp) for b in _batches(split, order, ends, card, size))


def dev_pass(model, dev: SplitTraces, ends, card, batch_size, device) -> tuple[float, float]:
    """(dev loss, dev MAE per waveform in magnitude units)."""
    import torch

    model.eval()
    losses, weights, abs_err = [], [], []
    with torch.no_grad():
        for b in _batches(dev, np.arange(len(dev)), ends, card, batch_size):
            w = torch.from_numpy(b.waveform).to(device)
            a = torch.from_numpy(b.log_amp).to(device)
            y = torch.from_numpy(b.target).to(device)
            loss, out = magnitude_loss(model, w, a, y, card)
            losses.append(float(loss))
            weights.append(len(b.onset))
            mags = window_magnitudes(out.float().cpu().numpy(), card, b.onset)
            abs_err.append(np.abs(mags - b.magnitude))
    if not losses:
        return math.nan, math.nan
    return float(np.average(losses, weights=weights)), float(np.concatenate(abs_err).mean())


def _load_pretrained_encoder(encoder, path: str | Path, resume: bool) -> None:
    from seismag.models.encoders import read_encoder_card
    from seismag.models.weights import WeightsError

    if resume:
        raise TrainingError("init_encoder starts a new run; it cannot be combined with resume")
    try:
        stored = read_encoder_card(path)
        if stored.name != encoder.card.name:
            raise TrainingError(f"{path} holds {stored.name}, the model needs {encoder.card.name}")
        if stored.kwargs != encoder.card.kwargs:
            raise TrainingError(f"{path} was pretrained with other settings: {stored.kwargs}")
        from safetensors.torch import load_file

        encoder.load_state_dict(load_file(str(path)), strict=True)
    except (WeightsError, OSError, RuntimeError) as exc:
        raise TrainingError(f"cannot start from {path}: {exc}") from exc


def train(
    model_name: str,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    max_minutes: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    limit_train: int | None = None,
    limit_dev: int | None = None,
    threads: int | None = None,
    cache_gb: float = 2.0,
    progress: bool = True,
    card_overrides: dict | None = None,
    init_weights: str | Path | None = None,
    init_encoder: str | Path | None = None,
    freeze_encoder_steps: int = 100,
    linear_probe: bool = False,
    max_steps: int | None = None,
    band_limit_share: float = 0.0,
) -> Path:
    """Train ``model_name`` on ``data_dir``; returns the path of the best weights.

    ``epochs`` is the total number of epochs (a resumed run continues up to it; default
    ``DEFAULT_EPOCHS``, early stopping usually ends sooner). ``max_minutes`` is a wall-clock
    budget: training stops after the epoch at which the next one would overrun it.
    ``init_weights``: start from these weights of the same model (a warm start: a new run with
    fresh optimizer state, without the recipe's learning-rate warm-up, which the weights are
    past); not with ``resume``. They are scored on dev before the first step and returned
    unchanged unless an epoch beats them.

    ``init_encoder``: for a head on a pretraining encoder (``cards/heads/``), the encoder's
    pretrained weights (``seismag pretrain``); the encoder is frozen for the first
    ``freeze_encoder_steps`` optimizer steps (the head settles first, so its first random
    gradients do not reach the pretrained weights) and then trained with the head.
    ``linear_probe``: a linear head on the encoder, which stays frozen throughout.
    ``band_limit_share``: this share of the training traces is recorded as by a 20, 40 or 50 Hz
    digitiser and brought back to the card's rate by the server's resampler
    (:mod:`seismag.training.digitiser_band`); dev windows stay as recorded.
    ``max_steps``: a budget in optimizer steps (the last epoch may be partial; it is scored on
    dev like any other), for comparisons at equal compute such as the label-efficiency study.
    """
    import torch
    from tqdm import tqdm

    from seismag.models import build_model
    from seismag.models.weights import save_weights
    from seismag.training.dataset import dataset_for

    card = dataclasses.replace(get_card(model_name), **(card_overrides or {}))
    if linear_probe:
        card = dataclasses.replace(card, kwargs={**card.kwargs, "head": "linear"})
    recipe = card.training
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.exists():
        raise TrainingError(f"data directory not found: {data_dir}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    device = resolve_device(device)
    torch.manual_seed(seed)
    total_epochs = DEFAULT_EPOCHS if epochs is None else int(epochs)
    bs = int(batch_size or recipe.batch_size)
    base_lr = float(lr or recipe.learning_rate)

    ds = dataset_for(card, data_dir, TrainingError)
    train_set = load_split(ds, "train", limit=limit_train, seed=seed, cache_gb=cache_gb)
    dev_set = load_split(ds, "dev", limit=limit_dev, seed=seed, cache_gb=cache_gb)
    if len(train_set) == 0:
        raise TrainingError(f"{data_dir}: the train split holds no usable trace")
    if len(dev_set) == 0:
        raise TrainingError(f"{data_dir}: the dev split holds no usable trace")
    dev_ends = training_ends(dev_set.p_samples, dev_set.lengths, card, seed=seed, epoch=DEV_EPOCH)

    model = build_model(card)
    if init_weights is not None:
        from seismag.models.base import reset_sigma_calibration
        from seismag.models.weights import WeightsError, load_weights

        if resume:
            raise TrainingError("init_weights starts a new run; it cannot be combined with resume")
        try:
            load_weights(model, init_weights)
        except (WeightsError, OSError) as exc:
            raise TrainingError(f"cannot start from {init_weights}: {exc}") from exc
        old_scale = reset_sigma_calibration(model)
        if old_scale is not None and old_scale != 1.0:
            tqdm.write(f"{card.name}: sigma scale {old_scale:.3f} of {init_weights} reset to 1")
    encoder = getattr(model, "encoder", None)
    if (init_encoder is not None or linear_probe) and encoder is None:
        raise TrainingError(f"{card.name} has no pretraining encoder; see models/cards/heads/")
    if init_encoder is not None:
        _load_pretrained_encoder(encoder, init_encoder, resume)
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_name = recipe.optimizer.lower()
    if opt_name == "adam":
        optimizer = torch.optim.Adam(params, lr=base_lr, weight_decay=recipe.weight_decay)
    elif opt_name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=recipe.weight_decay)
    else:
        raise TrainingError(f"{card.name}: unknown optimizer {recipe.optimizer!r}")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=recipe.plateau_factor, patience=recipe.plateau_patience
    )
    config = {
        "model": card.name,
        "data": str(data_dir),
        "batch_size": bs,
        "learning_rate": base_lr,
        "seed": seed,
        "limit_train": limit_train,
        "init_weights": None if init_weights is None else str(init_weights),
        "init_encoder": None if init_encoder is None else str(init_encoder),
        "freeze_encoder_steps": freeze_encoder_steps if encoder is not None else None,
        "linear_probe": linear_probe,
        "max_steps": max_steps,
        "band_limit_share": band_limit_share,
        "recipe": card.to_dict()["training"],
    }
    ckpt = out_dir / "checkpoint"
    best_path = out_dir / f"{card.name}.safetensors"
    state = TrainState()
    if resume:
        state = _load_checkpoint(ckpt, model, optimizer, scheduler, device)
        state.stopped = None  # a new budget / epoch target applies to the resumed run
    out_dir.mkdir(parents=True, exist_ok=True)

    if init_weights is not None:
        # A warm start must beat where it started: the starting weights are the best so far,
        # so a continuation that only gets worse on dev ships them unchanged.
        _, state.start_dev_mae = dev_pass(model, dev_set, dev_ends, card, bs, device)
        state.best_dev_mae = state.start_dev_mae
        save_weights(
            model,
            best_path,
            extra={"epoch": "0", "dev_mae": f"{state.start_dev_mae:.6f}", "data": str(data_dir)},
        )
        if progress:
            tqdm.write(f"{card.name} from {init_weights}: dev MAE {state.start_dev_mae:.3f}")

    steps_per_epoch = math.ceil(len(train_set) / bs)
    warmup_steps = 0 if init_weights is not None else recipe.warmup_epochs * steps_per_epoch
    started = time.monotonic()
    epoch_seconds: list[float] = []

    while state.epoch < total_epochs:
        if state.bad_epochs >= recipe.early_stopping_patience:
            state.stopped = "early_stopping"
            break
        epoch = state.epoch
        t0 = time.monotonic()
        model.train()
        ends = training_ends(train_set.p_samples, train_set.lengths, card, seed=seed, epoch=epoch)
        order = np.random.default_rng([int(seed), int(epoch), 0x0D0E]).permutation(len(train_set))
        augment = None
        if band_limit_share > 0:
            band_rng = np.random.default_rng([int(seed), int(epoch), 0xBA4D])
            augment = functools.partial(
                band_limit_some,
                card_rate=card.sampling_rate,
                share=band_limit_share,
                rng=band_rng,
            )
        running, seen = 0.0, 0
        bar = tqdm(
            _batches(train_set, order, ends, card, bs, augment),
            total=steps_per_epoch,
            desc=f"{card.name} epoch {epoch + 1}/{total_epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for b in bar:
            if max_steps is not None and state.global_step >= max_steps:
                break
            if encoder is not None:
                frozen = linear_probe or (
                    init_encoder is not None and state.global_step < freeze_encoder_steps
                )
                for p in encoder.parameters():
                    p.requires_grad_(not frozen)
            if state.global_step < warmup_steps:
                for g in optimizer.param_groups:
                    g["lr"] = base_lr * (state.global_step + 1) / warmup_steps
            w = torch.from_numpy(b.waveform).to(device)
            a = torch.from_numpy(b.log_amp).to(device)
            y = torch.from_numpy(b.target).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss, _ = magnitude_loss(model, w, a, y, card)
            if not torch.isfinite(loss):
                raise TrainingError(f"{card.name}: non-finite loss at epoch {epoch + 1}")
            loss.backward()
            if recipe.gradient_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, recipe.gradient_clip)
            optimizer.step()
            state.global_step += 1
            running += loss.item() * len(b.onset)
            seen += len(b.onset)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        bar.close()

        precise_batchnorm(model, precise_bn_batches(train_set, card, bs, seed, epoch), device)
        dev_loss, dev_mae = dev_pass(model, dev_set, dev_ends, card, bs, device)
        if epoch + 1 > recipe.warmup_epochs:  # the plateau schedule starts after warm-up
            scheduler.step(dev_loss)
        improved = dev_mae < state.best_dev_mae - MIN_IMPROVEMENT
        if improved:
            state.best_dev_mae, state.best_epoch, state.bad_epochs = dev_mae, epoch + 1, 0
            save_weights(
                model,
                best_path,
                extra={"epoch": str(epoch + 1), "dev_mae": f"{dev_mae:.6f}", "data": str(data_dir)},
            )
        else:
            state.bad_epochs += 1
        state.epoch = epoch + 1
        epoch_seconds.append(time.monotonic() - t0)
        state.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": running / max(seen, 1),
                "dev_loss": dev_loss,
                "dev_mae": dev_mae,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(epoch_seconds[-1], 2),
                "best": improved,
            }
        )
        if progress:
            tqdm.write(
                f"{card.name} epoch {epoch + 1}: train loss {running / max(seen, 1):.4f}  "
                f"dev loss {dev_loss:.4f}  dev MAE {dev_mae:.3f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}{'  *' if improved else ''}"
            )
        if max_minutes is not None:
            elapsed = time.monotonic() - started
            if elapsed + float(np.mean(epoch_seconds)) > max_minutes * 60:
                state.stopped = "time_budget"
        if max_steps is not None and state.global_step >= max_steps:
            state.stopped = "max_steps"
        _save_checkpoint(ckpt, model, optimizer, scheduler, state, config)
        if state.stopped:
            break
    else:
        state.stopped = state.stopped or "epochs"
    _atomic_write_text(
        out_dir / "history.json",
        json.dumps({"config": config, "state": state.__dict__}, indent=1),
    )
    if not best_path.is_file():  # e.g. resumed past the end with no best saved: keep the latest
        save_weights(model, best_path, extra={"epoch": str(state.epoch)})
    return best_path
