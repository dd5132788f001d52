"""The event benchmark's statistics: the intervals it prints next to every figure."""

import numpy as np
import pytest

from seismag.benchmarks.event_accuracy import against_best_member, rank_ensembles, score, wilson


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


def test_rank_ensembles_scores_every_subset_against_the_best_single_model():
    rng = np.random.default_rng(2)
    ids = [f"ev{i}" for i in range(200)]
    errors = {
        "a": rng.normal(0, 0.3, size=200),
        "b": rng.normal(0, 0.3, size=200),  # as good as a, independent: a + b averages them out
        "c": rng.normal(1.0, 0.3, size=200),  # biased: any ensemble holding it is worse
    }
    single = {
        m: {"full": [(i, x, 0.3) for i, x in zip(ids, e, strict=True)]} for m, e in errors.items()
    }

    def ensemble_rows(members):
        mean = np.mean([errors[m] for m in members], axis=0)
        return {"full": [(i, x, 0.3) for i, x in zip(ids, mean, strict=True)]}

    ranked = rank_ensembles(single, ensemble_rows)
    assert ranked[0]["members"] == ["a", "b"]
    assert len(ranked) == 4  # ab, ac, bc, abc
    best_single = min(np.mean(np.abs(e)) for e in errors.values())
    top = ranked[0]
    expected = np.mean(np.abs((errors["a"] + errors["b"]) / 2)) - best_single
    assert top["difference"]["full"] == pytest.approx(expected) and top["worst"] < 0
    assert top["within_1sigma"]["full"] == pytest.approx(
        np.mean(np.abs((errors["a"] + errors["b"]) / 2) <= 0.3)
    )
    assert all(r["worst"] > 0 for r in ranked if "c" in r["members"])


def test_choose_members_end_to_end_on_a_development_split(model_dir, tmp_path):
    """The benchmark's own command on a small synthetic set: real models through the serving
    pipeline, tables fitted on train-split events, the ranking written beside the figures."""
    import json

    from seismag.benchmarks.event_accuracy import main
    from seismag.training.synthetic import generate_dataset

    data = generate_dataset(
        tmp_path / "synth", 40, stations_per_event=(3, 3), seed=3, progress=False
    )
    out = tmp_path / "events.json"
    models = [str(model_dir / "PhaseNetMag.onnx"), str(model_dir / "ViTMag.onnx")]
    main(["--data", str(data), "--models", *models, "--split", "dev", "--events", "3",
          "--table-events", "3", "--choose-members", "--json", str(out)])  # fmt: skip
    figures = json.loads(out.read_text())
    (ranked,) = figures["ensemble_ranking"]  # two models: one ensemble
    assert ranked["members"] == ["PhaseNetMag", "ViTMag"]
    ens = figures["ensemble(PhaseNetMag+ViTMag)"]["station_table"]
    for t, d in ranked["difference"].items():
        best = min(figures[m]["station_table"][t]["mae"] for m in ranked["members"])
        assert d == pytest.approx(ens[t]["mae"] - best)
    assert ranked["worst"] == max(ranked["difference"].values())
