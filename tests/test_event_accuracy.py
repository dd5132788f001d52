"""The event benchmark's statistics: the intervals it prints next to every figure."""

import numpy as np
import pytest

from seismag.benchmarks.event_accuracy import against_best_member, score, wilson


def test_wilson_interval_matches_the_published_formula():
    # 68 of 100: the textbook Wilson 95 % interval is 0.583-0.763 (Wilson 1927).
    lo, hi = wilson(68, 100)
    assert lo == pytest.approx(0.5834, abs=5e-4) and hi == pytest.approx(0.7633, abs=5e-4)
    lo, hi = wilson(0, 20)  # never outside [0, 1], not empty at the edge
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.1 < hi < 0.2


def test_score_intervals_hold_the_point_and_do_not_depend_on_row_order():
    rng = np.random.default_rng(0)
    rows = {"full": [(f"ev{i}", rng.normal(0, 0.2), 0.2) for i in range(150)]}
    s = score(rows)["full"]
    assert s["mae_interval"][0] < s["mae"] < s["mae_interval"][1]
    assert s["mae_interval"][1] - s["mae_interval"][0] < 0.1
    assert s["within_1sigma_interval"][0] < s["within_1sigma"] < s["within_1sigma_interval"][1]
    shuffled = {"full": list(reversed(rows["full"]))}
    assert score(shuffled)["full"] == s


def test_ensemble_against_its_best_member_is_paired_and_picks_the_best():
    rng = np.random.default_rng(1)
    truth_err = rng.normal(0, 0.3, size=120)
    ids = [f"ev{i}" for i in range(120)]
    rows = {
        "good": {"full": [(i, e, 0.2) for i, e in zip(ids, truth_err, strict=True)]},
        "bad": {"full": [(i, e + 0.3, 0.2) for i, e in zip(ids, truth_err, strict=True)]},
        # The ensemble: the good member's errors shrunk by a fifth, so its MAE is 0.8 times.
        "ens": {"full": [(i, 0.8 * e, 0.2) for i, e in zip(ids, truth_err, strict=True)]},
    }
    out = against_best_member(rows, ["good", "bad"], "ens")["full"]
    assert out["best_member"] == "good" and out["n"] == 120
    expected = -0.2 * np.mean(np.abs(truth_err))
    assert out["difference"] == pytest.approx(expected)
    lo, hi = out["difference_interval"]
    # Paired: the interval is as narrow as the per-event differences, far from zero here.
    assert lo < expected < hi < 0
