"""The field model's ablation: the design documents' failures, one switch at a time.

Each variant is the FieldFlow card with ``--set`` overrides (``seismag field train``), trained
for the same number of steps without the GP prior (the network alone, as the design documents
built it), then scored on the same held-out benchmark fields at 5 % observed with both mean
estimators (the network's t = 0 estimate and the mean of the draws) and the calibration of the
draws' standard deviation. ``--out DIR`` holds one run folder per variant; variants already
trained there are scored, not retrained.

    python -m seismag.training.field_ablation --out runs/field_ablation --steps 1000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from seismag.models.field_card import get_field_card, grid_coords
from seismag.training.field_data import make_fields, observe, psnr

NO_PRIOR = ['kwargs.prior="none"']
SEEDS_FAILURES = [
    "kwargs.learn_fourier=false",
    "kwargs.fourier_scale=10.0",
    "kwargs.bounded=false",
    "kwargs.norm=false",
    "training.query_pixels=51",
    'kwargs.query_mixer="mamba"',
    "kwargs.seeds_dt=true",
]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("every fix, cross-attention only (the network alone)", []),
    "regress": ("the same network as a plain regressor", ['objective="regress"']),
    "fixed_fourier": (
        "fixed random Fourier features (randn x 10)",
        ["kwargs.learn_fourier=false", "kwargs.fourier_scale=10.0"],
    ),
    "unbounded": ("unbounded output", ["kwargs.bounded=false"]),
    "no_norm": ("no LayerNorm", ["kwargs.norm=false"]),
    "q51": ("51 query pixels per field in training", ["training.query_pixels=51"]),
    "attn": ("+ self-attention among queries", ['kwargs.query_mixer="attention"']),
    "mamba": ("+ bidirectional Mamba over queries, learnt dt", ['kwargs.query_mixer="mamba"']),
    "mamba_seeds_dt": (
        "+ bidirectional Mamba, dt = 1 / number of queries",
        ['kwargs.query_mixer="mamba"', "kwargs.seeds_dt=true"],
    ),
    "seeds_all": ("all the design documents' choices at once", SEEDS_FAILURES),
}


def score(weights: Path, fields: int, seed: int, samples: int) -> dict[str, float]:
    from seismag.models.field_flow import load_field_model
    from seismag.models.field_sampler import reconstruct
    from seismag.training.field_train import torch_predictor

    model, card = load_field_model(weights)
    truth = make_fields(fields, "benchmark", seed=seed)
    coords, values, idx = observe(truth, 0.05, seed=seed + 1)
    query = np.ascontiguousarray(np.broadcast_to(grid_coords(32, 32), (fields, 1024, 2)))
    out: dict[str, float] = {}
    for how in ("t0", "draws"):
        mean, std = reconstruct(
            torch_predictor(model), card.objective, coords, card.to_unit(values), query,
            samples, card.steps, seed=0, mean=how, sampler=card.sampler,
        )  # fmt: skip
        pred = card.from_unit(mean)
        out[f"psnr_{how}"] = float(psnr(pred, truth).mean())
        if how == "draws" and card.objective == "flow":
            err = np.abs(pred - truth.reshape(fields, -1))
            sd = card.spread_from_unit(std)
            free = np.ones_like(err, bool)
            free[np.arange(fields)[:, None], idx] = False
            out["within_1sd"] = float((err <= sd)[free].mean())
            out["within_2sd"] = float((err <= 2 * sd)[free].mean())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder of run folders, one per variant")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--fields", type=int, default=200)
    p.add_argument("--seed", type=int, default=1000, help="field seed (observations: + 1)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a card override for every variant (as seismag field train --set)",
    )
    args = p.parse_args(argv)

    from seismag.training.field_train import override_card, train_field_model

    rows = []
    for name in args.variants:
        what, settings = VARIANTS[name]
        run = Path(args.out) / name
        weights = run / "FieldFlow.safetensors"
        if not weights.is_file():
            card = override_card(get_field_card(), NO_PRIOR + args.set + settings)
            train_field_model(card, run, steps=args.steps, threads=args.threads)
        history = json.loads((run / "history.json").read_text())
        rows.append((name, what, history, score(weights, args.fields, args.seed, args.samples)))
    print(
        "| variant | change | steps | PSNR, t = 0 mean (dB) | PSNR, mean of draws (dB) | "
        "within 1 / 2 sd |"
    )
    print("|---|---|---:|---:|---:|---|")
    for name, what, history, s in rows:
        cover = (
            f"{100 * s['within_1sd']:.0f} / {100 * s['within_2sd']:.0f} %"
            if "within_1sd" in s
            else "-"
        )
        print(
            f"| {name} | {what} | {history['steps']} | {s['psnr_t0']:.2f} | "
            f"{s['psnr_draws']:.2f} | {cover} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
