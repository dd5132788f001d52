"""Recompute the BatchNorm statistics of trained weights (precise BN), the weights untouched.

    python release/recalibrate_bn.py --data DATA --runs IN_DIR --out OUT_DIR MODEL [MODEL ...]

For runs trained before :mod:`seismag.training.train` recomputed BatchNorm statistics before
every dev pass: takes IN_DIR/MODEL/MODEL.safetensors, prints the dev MAE of DATA's dev split with
the saved running statistics and with statistics averaged over ``PRECISE_BN_BATCHES`` training
batches (:func:`~seismag.training.train.precise_batchnorm`), and writes the latter with the run's
history.json to OUT_DIR/MODEL/, ready for ``release/train_defaults.py --from-runs OUT_DIR``.
Models without BatchNorm are copied unchanged, no data loaded. A release script: run from a
checkout.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the training dataset (train and dev)")
    parser.add_argument("--runs", required=True, help="IN_DIR: MODEL/MODEL.safetensors per model")
    parser.add_argument("--out", required=True, help="OUT_DIR for the recalibrated runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()

    import torch

    from seismag.models.weights import model_from_weights, save_weights
    from seismag.training import train as T
    from seismag.training.dataset import dataset_for

    torch.set_num_threads(args.threads)
    for name in args.models:
        src, dst = Path(args.runs) / name, Path(args.out) / name
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "history.json", dst / "history.json")
        model = model_from_weights(src / f"{name}.safetensors", name).eval()
        if not T.batchnorm_layers(model):  # nothing to recompute: no split to load
            shutil.copyfile(src / f"{name}.safetensors", dst / f"{name}.safetensors")
            print(f"{name}: no BatchNorm, copied", flush=True)
            continue
        card = model.card
        ds = dataset_for(card, args.data, T.TrainingError)
        dev = T.load_split(ds, "dev", seed=0)
        dev_ends = T.training_ends(dev.p_samples, dev.lengths, card, seed=0, epoch=T.DEV_EPOCH)
        _, before = T.dev_pass(model, dev, dev_ends, card, args.batch_size, "cpu")
        train_split = T.load_split(ds, "train", seed=0)
        batches = T.precise_bn_batches(train_split, card, args.batch_size, seed=0, epoch=0)
        used = T.precise_batchnorm(model, batches)
        _, after = T.dev_pass(model, dev, dev_ends, card, args.batch_size, "cpu")
        save_weights(
            model,
            dst / f"{name}.safetensors",
            extra={"precise_bn": f"{used} batches of {args.data}", "dev_mae": f"{after:.6f}"},
        )
        print(
            f"{name}: dev MAE {before:.3f} with the saved BatchNorm statistics, "
            f"{after:.3f} with statistics over {used} training batches",
            flush=True,
        )


if __name__ == "__main__":
    main()
