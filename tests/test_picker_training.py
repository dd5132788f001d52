"""`seismag train-picker`'s loop on a tiny synthetic dataset: weights written, warm starts kept
unless beaten."""

import math

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs the 'torch' extra")

from safetensors.numpy import load_file

from seismag.models.picker_card import get_picker_card
from seismag.models.weights import shipped_weights
from seismag.training.picker import train_picker

SHIPPED = shipped_weights(get_picker_card())


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from seismag.training.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("tiny_picks"), 8, seed=5, progress=False)


def quiet(*_args) -> None:
    pass


def test_trains_and_writes_weights(tiny_data, tmp_path):
    summary = train_picker(
        tiny_data, tmp_path / "p.safetensors", minutes=1e-4, max_traces=64, threads=2, log=quiet
    )
    assert summary["steps"] >= 1 and math.isfinite(summary["dev_loss"])
    assert summary["start_dev_loss"] is None
    assert set(load_file(tmp_path / "p.safetensors")) == set(load_file(SHIPPED))


def test_warm_start_is_kept_when_nothing_beats_it(tiny_data, tmp_path):
    # lr 1.0: every Adam step moves every weight by about 1, which wrecks the network.
    out = tmp_path / "worse.safetensors"
    summary = train_picker(
        tiny_data,
        out,
        minutes=1e-4,
        max_traces=64,
        threads=2,
        init_weights=SHIPPED,
        lr=1.0,
        log=quiet,
    )
    assert math.isfinite(summary["start_dev_loss"])
    assert summary["dev_loss"] == summary["start_dev_loss"]
    got, want = load_file(out), load_file(SHIPPED)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_cli_refuses_cuda_where_there_is_none(tiny_data, tmp_path, capsys):
    import torch

    from seismag.cli import main

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the refusal is for hosts without it")
    out = tmp_path / "p.safetensors"
    code = main(["train-picker", "--data", str(tiny_data), "--out", str(out), "--device", "cuda"])
    assert code != 0 and not out.exists()
    assert "CUDA is not available" in capsys.readouterr().err


def test_trains_on_the_gpu(tiny_data, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    summary = train_picker(
        tiny_data, tmp_path / "p.safetensors", minutes=1e-4, max_traces=64, device="cuda", log=quiet
    )
    assert summary["device"] == "cuda" and math.isfinite(summary["dev_loss"])
    assert set(load_file(tmp_path / "p.safetensors")) == set(load_file(SHIPPED))
