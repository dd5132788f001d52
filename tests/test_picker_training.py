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
