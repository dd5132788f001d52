"""The local-magnitude stacking benchmark: fits what it should and scores what it fitted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seismag.benchmarks import ml_stacking


def _table(rng, n, *, ml_bias=0.0, ml_noise=0.5, model_noise=0.2, model_bias=0.0, ml_missing=0):
    y = rng.uniform(1, 6, n)
    out = {"source_magnitude": y}
    for cut in ml_stacking.DEFAULT_CUTS:
        out[f"pred_{cut}"] = y + model_bias + rng.normal(0, model_noise, n)
        out[f"sigma_{cut}"] = np.full(n, model_noise)
        ml = y + ml_bias + rng.normal(0, ml_noise, n)
        ml[:ml_missing] = np.nan
        out[f"ml_{cut}"] = ml
    return pd.DataFrame(out)


def test_fit_weights_the_inputs_by_their_information():
    rng = np.random.default_rng(0)
    # Equal noise: the least-squares blend takes half of each and removes ML's offset.
    stack = ml_stacking.fit(_table(rng, 20000, ml_bias=-0.3, ml_noise=0.2, model_noise=0.2), "full")
    assert stack.a == pytest.approx(0.5, abs=0.03) and stack.b == pytest.approx(0.5, abs=0.03)
    assert stack.ml_offset == pytest.approx(-0.3, abs=0.01)
    assert stack.ml_scatter == pytest.approx(0.2, abs=0.01)
    # ML much noisier than the model: it gets almost no weight.
    stack = ml_stacking.fit(_table(rng, 20000, ml_noise=1.0, model_noise=0.1), "3s")
    assert stack.b < 0.02 < 0.97 < stack.a


def test_scores_show_a_blend_helping_only_where_the_model_is_off():
    rng = np.random.default_rng(1)
    stack = ml_stacking.fit(_table(rng, 5000, ml_noise=0.2, model_noise=0.2), "full")
    same = ml_stacking.score(
        stack, _table(rng, 5000, ml_noise=0.2, model_noise=0.2, ml_missing=100)
    )
    shifted = ml_stacking.score(
        stack, _table(rng, 5000, ml_noise=0.2, model_noise=0.2, model_bias=0.5)
    )
    assert same["n"] == 5000
    assert same["linear MAE"] < same["model MAE"]  # two independent estimates beat one
    # The model reads 0.5 high on the shifted set: half of that is left after the blend.
    assert shifted["model bias"] == pytest.approx(0.5, abs=0.02)
    assert shifted["linear bias"] == pytest.approx(0.25, abs=0.03)
    assert shifted["inverse variance bias"] == pytest.approx(0.25, abs=0.03)
    # A model without sigma: the inverse-variance blend is the model itself, not NaN.
    no_sigma = _table(rng, 200)
    for cut in ml_stacking.DEFAULT_CUTS:
        no_sigma[f"sigma_{cut}"] = np.nan
    plain = ml_stacking.score(stack, no_sigma)
    assert plain["inverse variance MAE"] == pytest.approx(plain["model MAE"])


def test_cli_reads_evaluate_tables_and_refuses_a_missing_cut(tmp_path, capsys):
    rng = np.random.default_rng(2)
    dev, test = tmp_path / "dev.csv", tmp_path / "test.csv"
    _table(rng, 400).to_csv(dev, index=False)
    _table(rng, 300, model_bias=0.3).to_csv(test, index=False)
    out = tmp_path / "r.json"
    assert (
        ml_stacking.main(["--dev", str(dev), "--test", f"unseen={test}", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "| full | unseen | 300 |" in printed
    results = json.loads(out.read_text())
    assert [f["cut"] for f in results["fits"]] == list(ml_stacking.DEFAULT_CUTS)
    assert ml_stacking.main(["--dev", str(dev), "--test", f"unseen={test}", "--cuts", "7s"]) == 2
    assert "no column(s) pred_7s" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not exist"):
        ml_stacking.main(["--dev", str(tmp_path / "none.csv"), "--test", f"unseen={test}"])
