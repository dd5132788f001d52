"""The between-regime sigma benchmark: recovers the terms it fits and scores what it fitted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seismag.benchmarks import sigma_terms


def _table(rng, biases: dict[str, float], n: int = 4000, noise: float = 0.2, head: float = 0.4):
    """Per regime: errors = its bias + N(0, noise); the head's sigma says ``head``."""
    parts = []
    for regime, bias in biases.items():
        y = rng.uniform(1, 6, n)
        parts.append(
            pd.DataFrame(
                {
                    "source_magnitude": y,
                    "pred_full": y + bias + rng.normal(0, noise, n),
                    "sigma_full": np.full(n, head),
                    "source_regime": regime,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_fit_separates_the_regime_levels_from_the_scatter_within_them():
    rng = np.random.default_rng(0)
    terms = sigma_terms.fit(_table(rng, {"a": 0.3, "b": -0.3, "c": 0.0}))
    assert terms.regime_bias["a"] == pytest.approx(0.3, abs=0.01)
    assert terms.tau == pytest.approx(np.sqrt((0.09 + 0.09) / 3), abs=0.01)
    # Within a regime the errors are N(0, 0.2) against a head sigma of 0.4: half of it.
    assert terms.s == pytest.approx(0.5, abs=0.02)
    assert terms.sigma(np.array([0.4]))[0] == pytest.approx(np.hypot(0.2, terms.tau), abs=0.01)


def test_scores_an_unseen_regime_with_the_shipped_and_the_total_sigma():
    rng = np.random.default_rng(1)
    dev = _table(rng, {"a": 0.25, "b": -0.25})
    unseen = _table(rng, {"u": -0.25}, head=0.2).drop(columns="source_regime")
    results = sigma_terms.run(dev, {"unseen": unseen})
    (score,) = results["scores"]
    assert score["bias"] == pytest.approx(-0.25, abs=0.01)
    # Shipped sigma 0.2 against errors N(-0.25, 0.2): about 40 % within one sigma; the total
    # sigma (0.1 within, tau 0.25) covers the level the dev regimes' spread foresaw.
    assert score["shipped"]["within_1_sigma"] == pytest.approx(0.40, abs=0.03)
    assert score["terms"]["within_1_sigma"] > 0.5
    assert score["terms"]["median_sigma"] == pytest.approx(np.hypot(0.1, 0.25), abs=0.01)


def test_cli_reads_evaluate_predictions_and_refuses_what_it_cannot_fit(tmp_path, capsys):
    rng = np.random.default_rng(2)
    dev, test = tmp_path / "dev.csv", tmp_path / "test.csv"
    _table(rng, {"a": 0.1, "b": -0.1}, n=200).to_csv(dev, index=False)
    _table(rng, {"u": 0.0}, n=200).to_csv(test, index=False)
    out = tmp_path / "r.json"
    assert sigma_terms.main(["--dev", str(dev), "--test", f"t={test}", "--json", str(out)]) == 0
    assert "| t | 200 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["terms"]["regime_bias"].keys() == {"a", "b"}
    one = tmp_path / "one.csv"
    _table(rng, {"a": 0.1}, n=200).to_csv(one, index=False)
    assert sigma_terms.main(["--dev", str(one), "--test", f"t={test}"]) == 2
    assert "two or more" in capsys.readouterr().err
    no_sigma = tmp_path / "no_sigma.csv"
    pd.read_csv(dev).drop(columns="sigma_full").to_csv(no_sigma, index=False)
    assert sigma_terms.main(["--dev", str(no_sigma), "--test", f"t={test}"]) == 2
    assert "sigma_full" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not exist"):
        sigma_terms.main(["--dev", str(tmp_path / "missing.csv"), "--test", f"t={test}"])
