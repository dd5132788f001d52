"""Windows per second of every model on a CUDA GPU with PyTorch, fp32 and fp16.

    python -m seismag.benchmarks.gpu_throughput --batch 256 --repeats 50

The shipped weights (or the cards' initial weights where none ship) run in
``torch.inference_mode`` on batches of the cards' preprocessed noise windows: fp32 with TF32 off
(the exported graphs' arithmetic), and fp16 under autocast. Each figure is the median of
``--repeats`` timed batches after warm-up, timed with CUDA events; "fp16 max |diff|" is the
largest difference of the fp16 outputs from the fp32 outputs on the same windows, in magnitude
units. This is PyTorch eager, the floor any compiled engine (TensorRT) should beat, not a
TensorRT figure. Exits 2 with a message where no CUDA device is present.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np


def _median_ms(run, repeats: int) -> float:
    import torch

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(name: str, batch: int, repeats: int) -> dict:
    import torch

    from seismag.models import build_model, load_cards
    from seismag.models.preprocess import model_inputs
    from seismag.models.weights import model_from_weights, shipped_weights

    shipped = shipped_weights(load_cards()[name])
    model = (model_from_weights(shipped, name) if shipped else build_model(name)).eval()
    card = model.card
    raw = np.random.default_rng(0).normal(size=(batch, card.in_channels, card.in_samples)) * 1e-6
    x, amp = (torch.from_numpy(a).cuda() for a in model_inputs(raw, card))
    model = model.cuda()
    with torch.inference_mode():

        def fp32():
            return model(x, amp)

        def fp16():
            with torch.autocast("cuda", dtype=torch.float16):
                return model(x, amp)

        ms32, ms16 = _median_ms(fp32, repeats), _median_ms(fp16, repeats)
        out32, out16 = fp32(), fp16()
    first = lambda o: o[0] if isinstance(o, (tuple, list)) else o  # noqa: E731
    diff = (first(out16).float() - first(out32).float()).abs().max().item()
    return {
        "model": name,
        "weights": "shipped" if shipped is not None else "initial",
        "fp32_ms": ms32,
        "fp32_wps": batch / ms32 * 1e3,
        "fp16_ms": ms16,
        "fp16_wps": batch / ms16 * 1e3,
        "fp16_max_diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_throughput: needs torch (pip install 'seismag[train]')", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from seismag.models import load_cards

    names = args.models or list(load_cards())
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, batch {args.batch}")
    print(
        "| model | weights | fp32 ms/batch | fp32 windows/s | fp16 ms/batch | fp16 windows/s "
        "| fp16 max abs diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = measure(name, args.batch, args.repeats)
        print(
            f"| {r['model']} | {r['weights']} | {r['fp32_ms']:.2f} | {r['fp32_wps']:,.0f} | "
            f"{r['fp16_ms']:.2f} | {r['fp16_wps']:,.0f} | {r['fp16_max_diff']:.2g} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
