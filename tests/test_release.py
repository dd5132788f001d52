"""The release scripts (``release/``): they write into the checkout, so they are not installed,
yet they run from a checkout and import ``seismag`` from the editable install."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "release"
SCRIPTS = ("train_defaults", "benchmarks_report")


def release_script(name: str):
    """A release script imported from its file, as ``python release/NAME.py`` would run it."""
    spec = importlib.util.spec_from_file_location(f"release_{name}", RELEASE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_release_is_not_an_installed_package():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not any("release" in p for p in packages["packages"])
    assert not (RELEASE / "__init__.py").exists()
    for name in SCRIPTS:
        assert not (ROOT / "training" / f"{name}.py").exists()
        assert not (ROOT / "benchmarks" / f"{name}.py").exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_runs_from_the_checkout(name):
    # From another directory too: the scripts find the checkout from their own path.
    done = subprocess.run(
        [sys.executable, str(RELEASE / f"{name}.py"), "--help"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--out" in done.stdout or "--data" in done.stdout


def test_scripts_write_into_the_checkout():
    assert release_script("train_defaults").DOC == ROOT / "docs" / "evaluation.md"
    assert release_script("train_defaults").SUMMARY == ROOT / "docs" / "evaluation.json"
    assert release_script("train_defaults").WEIGHTS_DIR == ROOT / "models" / "weights"
    assert release_script("benchmarks_report").DOC == ROOT / "docs" / "benchmarks.md"


def test_default_weights_doc_has_every_set_bins_calibration_and_keeps_commentary(
    tmp_path, monkeypatch
):
    from seismag.training.evaluate import breakdown

    train_defaults = release_script("train_defaults")

    rng = np.random.default_rng(0)
    true = rng.uniform(1, 6, 200)
    meta = pd.DataFrame(
        {
            "path_ep_distance_km": rng.uniform(5, 290, 200),
            "source_regime": np.repeat(["ena", "wna"], 100),
        }
    )

    def result(err: float, sigma: float | None) -> dict:
        pred = true + err + rng.normal(0, 0.1, 200)
        full = {"n": 200, "mae": abs(err), "rmse": abs(err), "r2": 0.9, "bias": err}
        sigmas = None if sigma is None else np.full(200, sigma)
        res = {
            "metrics": {"full": full, "1s": {"mae": 2 * abs(err)}},
            "breakdown": breakdown(true, pred, meta, sigmas),
            "baseline": {
                "metrics": {"full": {**full, "mae": 0.4, "bias": 0.0}},
                "breakdown": breakdown(true, true + 0.3, meta),
            },
        }
        if sigma is not None:
            res["calibration"] = {
                "full": {
                    "n": 200,
                    "within_1_sigma": 0.7,
                    "within_2_sigma": 0.96,
                    "median_sigma": sigma,
                }
            }
        return res

    row = {
        "minutes": 3.0,
        "epochs": 2,
        "command": "python release/train_defaults.py --data d/train",
        "evaluated_by": ["python -m seismag.training.train_defaults --evaluate-only"],
        "data": "d/train",
        "sets": {"in-distribution": {"path": "d/train", "split": "test"}},
        "evals": {"in-distribution": result(0.2, 0.25), "real": result(1.5, None)},
    }
    doc = tmp_path / "evaluation.md"
    doc.write_text("# old\n\n## Reading this run\n\nhand-written notes\n")
    monkeypatch.setattr(train_defaults, "DOC", doc)
    train_defaults._write_docs({"A": row})
    text = doc.read_text()
    assert "python release/train_defaults.py --data d/train" in text
    assert "python release/train_defaults.py --evaluate-only" in text  # recorded before the move
    assert "seismag.training.train_defaults" not in text
    assert "| A | 3.0 min, 2 ep | 0.200 | 1.500 |" in text
    assert "| ML baseline (Hutton & Boore 1987) | - | 0.400 | 0.400 |" in text
    assert "70% / 96%, 0.25" in text
    assert "### real: bias (predicted - true) by epicentral distance" in text
    assert "| 0-20 km (n=" in text
    assert "### real: by physics regime: bias / MAE (within one sigma)" in text
    assert "| model | ena (n=100) | wna (n=100) |" in text
    section = text.split("### in-distribution: by physics regime")[1].split("###")[0]
    assert re.search(r"\| A \| 0\.\d\d / 0\.\d{3} \(\d+%\) \|", section)  # with sigma
    section = text.split("### real: by physics regime")[1].split("###")[0]
    assert re.search(r"\| A \| 1\.\d\d / 1\.\d{3} \| 1\.\d\d", section)  # no sigma
    assert text.rstrip().endswith("## Reading this run\n\nhand-written notes")


def test_committed_figures_regenerate_the_committed_doc(tmp_path, monkeypatch):
    """docs/evaluation.json is the one source of docs/evaluation.md's tables: regenerating the
    doc from it changes nothing but the line naming the machine it runs on."""
    train_defaults = release_script("train_defaults")
    committed = train_defaults.DOC.read_text(encoding="utf-8")
    doc = tmp_path / "evaluation.md"
    doc.write_text(committed, encoding="utf-8")
    monkeypatch.setattr(train_defaults, "DOC", doc)
    train_defaults._write_docs(json.loads(train_defaults.SUMMARY.read_text(encoding="utf-8")))

    def tables(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("Produced by")]

    assert tables(doc.read_text(encoding="utf-8")) == tables(committed)


def test_eval_set_spec_with_split_and_sensitivity():
    _eval_set = release_script("train_defaults")._eval_set

    assert _eval_set("real=data/stead:test@6.29e8") == ("real", "data/stead", "test", 6.29e8)
    assert _eval_set("unseen=/d/heldout") == ("unseen", "/d/heldout", "test", None)
    assert _eval_set("dev=/d/x:dev") == ("dev", "/d/x", "dev", None)
    with pytest.raises(Exception, match="NAME=PATH"):
        _eval_set("no-equals-sign")
    with pytest.raises(Exception, match="bad sensitivity"):
        _eval_set("real=/d@abc")


def test_restamp_field_card_changes_only_the_sampling_defaults(tmp_path):
    """An exported field model whose card predates a change of the card's sampler gets the new
    sampling defaults, keeps its graph and training record, and a changed architecture is
    refused (that needs a real export)."""
    import dataclasses

    import onnx

    pytest.importorskip("torch")
    from seismag.export.field_export import export_field_model
    from seismag.models.field_card import FIELD_CARD_KEY, get_field_card

    restamp = release_script("restamp_field_card")
    card = get_field_card("FieldFlow")
    old = dataclasses.replace(
        card, sampler="euler", steps=10, version="0.0.9", training={**card.training, "minutes": 1}
    )
    path = export_field_model(old, out=tmp_path / "FieldFlow.onnx", seed=0).path
    graph = onnx.load(str(path)).graph.SerializeToString()
    assert restamp.main([str(path)]) == 0
    proto = onnx.load(str(path))
    stamped = json.loads({p.key: p.value for p in proto.metadata_props}[FIELD_CARD_KEY])
    assert (stamped["sampler"], stamped["steps"], stamped["version"]) == (
        card.sampler,
        card.steps,
        card.version,
    )
    assert stamped["training"]["minutes"] == 1  # the file's own record
    assert proto.graph.SerializeToString() == graph

    other = dataclasses.replace(old, kwargs={**card.kwargs, "d_model": 16, "heads": 2})
    path = export_field_model(other, out=tmp_path / "small.onnx", seed=0).path
    with pytest.raises(SystemExit, match="kwargs"):
        restamp.main([str(path)])


def test_calibration_set_specs():
    td = release_script("train_defaults")
    assert td._calibration_set("/d/wide") == ("/d/wide", "dev")
    assert td._calibration_set("/d/wide:train") == ("/d/wide", "train")
    assert td._calibration_for("AMAG_v2=/d/amp:dev") == ("AMAG_v2", ("/d/amp", "dev"))
    with pytest.raises(Exception, match="MODEL=PATH"):
        td._calibration_for("/d/amp")


def test_train_parallel_trains_on_the_chosen_regimes(tmp_path):
    # The GPU scripts run only on lent machines, where a broken script costs the lease: run the
    # whole of train_parallel.sh (gpu_setup.sh's synthesis, a warm-started run, the packing) on
    # the CPU with a tiny budget.
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PY": sys.executable,
        "DEVICE": "cpu",
        "EVENTS": "10",
        "REGIMES": "site_range",
        "MIN": "0.05",
        "WORKERS": "1",
        "OUT": str(out),
        "WORK": str(work),
        "MODELS": "PhaseNetMag,init=shipped,lr=1e-4",
    }
    done = subprocess.run(
        ["bash", str(RELEASE / "train_parallel.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    meta = pd.read_csv(work / "data" / "metadata.csv")
    assert set(meta["source_regime"]) == {"site_range"}
    with tarfile.open(out / "PhaseNetMag-shipped-1e-4.tgz") as tar:
        names = tar.getnames()
        history = json.load(tar.extractfile("PhaseNetMag-shipped-1e-4/history.json"))
    assert "PhaseNetMag-shipped-1e-4/PhaseNetMag.safetensors" in names
    assert not any("/checkpoint" in n for n in names)
    assert history["config"]["learning_rate"] == pytest.approx(1e-4)
    assert history["config"]["init_weights"] == "models/weights/PhaseNetMag.safetensors"
    assert history["state"]["start_dev_mae"] is not None
    assert history["state"]["epoch"] >= 1
