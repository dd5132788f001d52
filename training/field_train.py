"""Training of the sparse-field reconstruction model (FieldFlow) on generated fields.

Every step draws fresh fields from the card's family (``training/field_data.py``; the training
prior ``train`` is broader than the benchmark it is scored on), observes a random share of each
(log-uniform between the card's ``fraction_low`` and ``fraction_high``, one share per step), and
scores ``query_pixels`` random grid points per field, drawn afresh each step.

- ``objective = "flow"``: conditional flow matching on the straight path (Lipman et al. 2023),
  ``x_t = (1 - t) x0 + t x1``, ``t ~ U(0, 1)``; the network predicts ``x1`` and the loss is its
  squared error (``models/field_sampler.py`` turns that into a velocity).
- ``objective = "regress"``: the same network in one pass, squared error to the field: the
  plain-regressor baseline of the same size and budget.

A card with a prior (``kwargs.prior = "gp"``, :mod:`seismag.models.field_prior`) trains on a
pool instead: ``pool_fields`` fields at each of ``pool_fractions``, their GP fitted once (over
``--workers`` processes) and cached (``--pool``); each step draws fields from one share, fresh
query points and noise, and the target is the standardised residual ``(field - mean) / std``.
A ``shakemap`` prior (ShakeFlow) is first fitted on ``prior_maps`` training maps (seed
``prior_seed``) and written into the card the weights carry (``prior_params``); the pool's prior
then uses each map's source.

The budget is a number of steps (results do not depend on how busy the machine was), optionally
cut short by ``max_minutes``; Adam with a linear warm-up and a cosine decay. The run ends with a
score on held-out ``benchmark`` fields (seed 999 999, never drawn in training) at 5 % observed.
Outputs in ``out``: ``FieldFlow.safetensors`` (card in the metadata) and ``history.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from seismag.models.field_card import FieldCard, get_field_card, grid_coords
from seismag.training.field_data import make_fields, observe, psnr

VALIDATION_SEED = 999_999


def override_card(card: FieldCard, settings: list[str]) -> FieldCard:
    """Apply ``key=value`` settings (``kwargs.learn_fourier=false``, ``training.steps=500``,
    ``objective=regress``); values are parsed as TOML scalars."""
    import tomllib

    data = dataclasses.asdict(card)
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        value = tomllib.loads(f"v = {raw}")["v"] if raw not in ("",) else ""
        section, _, name = key.partition(".")
        if name:
            if section not in ("kwargs", "training"):
                raise ValueError(f"--set: unknown section {section!r} (kwargs or training)")
            data[section] = {**data[section], name: value}
        else:
            data[section] = value
    return FieldCard.from_dict(data)


def card_fields(
    card: FieldCard, n: int, seed: int, validation: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, H, W) fields of the card's training family and their sources (n, 4) where the family
    has them: ``shaking`` is log10 PGV maps of the training regimes
    (:mod:`seismag.training.shaking_fields`); the sinusoid families validate on ``benchmark``
    fields and have no source."""
    h, w = card.training.get("grid", [32, 32])
    family = card.training.get("family", "train")
    if family == "shaking":
        from seismag.training.shaking_fields import make_shaking_maps

        maps = make_shaking_maps(n, (h, w), extent_km=extent_km(card), seed=seed)
        return maps.log_pgv, maps.sources()
    return make_fields(n, "benchmark" if validation else family, (h, w), seed=seed), None


def extent_km(card: FieldCard) -> float:
    """The side of a shaking card's square in km (the maps' default)."""
    from seismag.training.shaking_fields import DEFAULT_EXTENT_KM

    return float(card.training.get("extent_km", DEFAULT_EXTENT_KM))


def with_fitted_prior(card: FieldCard) -> FieldCard:
    """The card with its ``shakemap`` prior fitted (``prior_params``) on ``prior_maps`` maps of
    the training regimes (seed ``prior_seed``, below the evaluation seeds), as the ShakeMap
    baseline is fitted; other cards unchanged."""
    if not card.needs_source or card.prior_params:
        return card
    from seismag.models.ground_motion import fit_shaking_prior
    from seismag.training.shaking_fields import make_shaking_maps

    tr = card.training
    h, w = tr.get("grid", [32, 32])
    maps = make_shaking_maps(
        int(tr.get("prior_maps", 1000)), (h, w), extent_km(card), seed=int(tr.get("prior_seed", 1))
    )
    fitted = fit_shaking_prior(
        maps.log_pgv, maps.magnitude, maps.epicentre_km, maps.depth_km, maps.extent_km
    )
    return dataclasses.replace(card, prior_params=fitted.to_dict())


def _batch(
    card: FieldCard, rng: np.random.Generator, step: int, batch: int
) -> tuple[np.ndarray, ...]:
    tr = card.training
    h, w = tr.get("grid", [32, 32])
    fields, _ = card_fields(card, batch, seed=int(rng.integers(2**31)))
    lo, hi = math.log(tr["fraction_low"]), math.log(tr["fraction_high"])
    fraction = math.exp(rng.uniform(lo, hi))
    coords, values, _ = observe(fields, fraction, seed=int(rng.integers(2**31)))
    q = min(int(tr["query_pixels"]), h * w)
    # Raster order, so a Mamba mixer scans the scored points as it scans the full grid.
    idx = np.sort(np.argsort(rng.random((batch, h * w)), axis=1)[:, :q], axis=1)
    qcoords = grid_coords(h, w)[idx]
    target = fields.reshape(batch, -1)[np.arange(batch)[:, None], idx]
    return coords, card.to_unit(values), qcoords, card.to_unit(target)


def _prior_chunk(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    card, coords, values, query, sources = args
    from seismag.models.field_prior import field_prior

    return field_prior(card, coords, values, query, sources)


def compute_prior(
    card: FieldCard,
    coords: np.ndarray,
    values_unit: np.ndarray,
    query: np.ndarray,
    workers: int = 1,
    sources: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The card's prior (unit scale) for every field, over ``workers`` processes."""
    if card.prior == "none":
        return None
    if workers <= 1:
        return _prior_chunk((card, coords, values_unit, query, sources))
    from concurrent.futures import ProcessPoolExecutor

    parts = np.array_split(np.arange(len(coords)), workers * 4)
    jobs = [
        (card, coords[p], values_unit[p], query[p], None if sources is None else sources[p])
        for p in parts
        if len(p)
    ]
    with ProcessPoolExecutor(workers) as ex:
        outs = list(ex.map(_prior_chunk, jobs))
    return np.concatenate([m for m, _ in outs]), np.concatenate([s for _, s in outs])


def prior_pool(card: FieldCard, path: Path, seed: int, workers: int) -> list[dict]:
    """Fields, observations and their prior for a model with a prior, computed once (a GP fit
    per field costs 0.05-0.3 s, too slow for every step) and cached in ``path``: for each of
    the card's ``pool_fractions``, ``pool_fields`` fields."""
    tr = card.training
    h, w = tr.get("grid", [32, 32])
    key = json.dumps(
        [
            card.kwargs.get("prior"),
            tr.get("family"),
            tr["pool_fractions"],
            tr["pool_fields"],
            [h, w],
            seed,
            card.value_low,
            card.value_high,
            card.prior_params,
        ]
    )
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                n = len(tr["pool_fractions"])
                return [
                    {k: z[f"{k}{g}"] for k in ("truth", "coords", "values", "mean", "std")}
                    for g in range(n)
                ]
    groups = []
    for g, fraction in enumerate(tr["pool_fractions"]):
        fields, sources = card_fields(card, int(tr["pool_fields"]), seed=seed * 1000 + g)
        truth = card.to_unit(fields)
        coords, values, _ = observe(truth, fraction, seed=seed * 1000 + 500 + g)
        query = np.ascontiguousarray(np.broadcast_to(grid_coords(h, w), (len(truth), h * w, 2)))
        mean, std = compute_prior(card, coords, values, query, workers, sources)
        groups.append(
            {
                "truth": truth.reshape(len(truth), -1),
                "coords": coords,
                "values": values,
                "mean": mean,
                "std": std,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"{k}{g}": v for g, grp in enumerate(groups) for k, v in grp.items()}
    np.savez(path, key=np.array(key), **flat)
    return groups


def _pool_batch(
    card: FieldCard, pool: list[dict], rng: np.random.Generator, batch: int
) -> tuple[np.ndarray, ...]:
    from seismag.models.field_flow import RESIDUAL_BOUND

    grp = pool[int(rng.integers(len(pool)))]
    rows = rng.integers(0, len(grp["truth"]), batch)
    hw = grp["truth"].shape[1]
    q = min(int(card.training["query_pixels"]), hw)
    h, w = card.training.get("grid", [32, 32])
    idx = np.sort(np.argsort(rng.random((batch, hw)), axis=1)[:, :q], axis=1)
    pick = (rows[:, None], idx)
    mean, std = grp["mean"][pick], grp["std"][pick]
    residual = np.clip((grp["truth"][pick] - mean) / std, -RESIDUAL_BOUND, RESIDUAL_BOUND)
    return (
        grp["coords"][rows],
        grp["values"][rows],
        grid_coords(h, w)[idx],
        residual.astype(np.float32),
        mean,
        std,
    )


def torch_predictor(model):
    """The model as a :data:`seismag.models.field_sampler.Predict` (numpy in, numpy out)."""
    import torch

    def predict(*arrays):
        with torch.no_grad():
            out = model(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        return out.numpy()

    return predict


def validate(
    model, card: FieldCard, fields: int = 64, samples: int = 4, workers: int = 1
) -> dict[str, float]:
    """Mean PSNR (values in [0, 1]) and RMSE (field units) on held-out fields at 5 % observed
    with the card's sampler defaults."""
    from seismag.models.field_sampler import reconstruct

    h, w = card.training.get("grid", [32, 32])
    truth, sources = card_fields(card, fields, seed=VALIDATION_SEED, validation=True)
    coords, values, _ = observe(truth, 0.05, seed=VALIDATION_SEED + 1)
    query = np.ascontiguousarray(np.broadcast_to(grid_coords(h, w), (fields, h * w, 2)))
    unit = card.to_unit(values)
    mean, _ = reconstruct(
        torch_predictor(model),
        card.objective,
        coords,
        unit,
        query,
        samples,
        card.steps,
        seed=0,
        prior=compute_prior(card, coords, unit, query, workers, sources),
        sampler=card.sampler,
    )
    pred = card.from_unit(mean).reshape(truth.shape)
    rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
    return {"psnr_5pct": float(psnr(pred, truth).mean()), "rmse_5pct": rmse}


def train_field_model(
    card: FieldCard,
    out: str | Path,
    steps: int | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    threads: int | None = None,
    log_every: int = 100,
    pool_path: str | Path | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from seismag.models.field_flow import build_field_model, save_field_weights

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tr = card.training
    total = int(steps or tr["steps"])
    out = Path(out)
    card = with_fitted_prior(card)
    pool = None
    if card.prior != "none":
        pool = prior_pool(card, Path(pool_path or out / "prior_pool.npz"), seed, workers)
    model = build_field_model(card)
    opt = torch.optim.Adam(model.parameters(), lr=tr["learning_rate"])
    warmup = min(200, total // 10)

    def lr_at(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(total - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history: list[dict[str, float]] = []
    start = time.monotonic()
    running = 0.0
    done = 0
    for i in tqdm(range(total), desc=f"train {card.name}", mininterval=5):
        if pool is None:
            arrays, extra = _batch(card, rng, i, tr["batch_size"]), ()
        else:
            *arrays, m, sd = _pool_batch(card, pool, rng, tr["batch_size"])
            extra = (torch.from_numpy(m), torch.from_numpy(sd))
        cc, cv, qc, x1 = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
        if card.objective == "flow":
            t = torch.rand(len(x1))
            x0 = torch.randn_like(x1)
            xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        else:
            t = torch.zeros(len(x1))
            xt = torch.zeros_like(x1)
        loss = torch.mean((model(cc, cv, qc, xt, t, *extra) - x1) ** 2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        done = i + 1
        if done % log_every == 0:
            history.append(
                {
                    "step": done,
                    "loss": running / log_every,
                    "minutes": (time.monotonic() - start) / 60,
                }
            )
            running = 0.0
        if max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
            break
    minutes = (time.monotonic() - start) / 60
    model.eval()
    trained = dataclasses.replace(
        card, training={**tr, "steps_done": done, "minutes": round(minutes, 2)}
    )
    save_field_weights(model, trained, out / f"{card.name}.safetensors")
    score = validate(model, trained, workers=workers)
    summary = {
        "card": dataclasses.asdict(trained),
        "steps": done,
        "minutes": minutes,
        "params": sum(p.numel() for p in model.parameters()),
        **score,
        "history": history,
    }
    (out / "history.json").write_text(json.dumps(summary, indent=1))
    return summary


def add_arguments(p) -> None:
    """``seismag field train``'s options (registered by the CLI and by :func:`main`)."""
    p.add_argument("--card", default="FieldFlow", help="field model card (models/cards/fields)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the card's)")
    p.add_argument("--max-minutes", type=float, help="stop after this much wall clock")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--workers", type=int, default=1, help="processes fitting a prior's GPs")
    p.add_argument(
        "--pool", help="cache of the prior's training pool (default: OUT/prior_pool.npz)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a card entry, e.g. kwargs.learn_fourier=false (repeatable)",
    )


def run(args) -> int:
    card = override_card(get_field_card(args.card), args.set)
    s = train_field_model(
        card,
        args.out,
        args.steps,
        args.max_minutes,
        args.seed,
        args.threads,
        pool_path=args.pool,
        workers=args.workers,
    )
    print(
        f"{card.name}: {s['steps']} steps in {s['minutes']:.1f} min, {s['params']:,} "
        f"parameters, held-out at 5 %: PSNR {s['psnr_5pct']:.2f} dB, RMSE "
        f"{s['rmse_5pct']:.4f} -> {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="seismag field train", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
