"""The sparse-field reconstruction model: card, fields, sampler, network, training and export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seismag.models.card import CardError
from seismag.models.field_card import get_field_card, grid_coords
from seismag.models.field_sampler import euler_sample, reconstruct
from seismag.training.field_data import FAMILIES, make_fields, observe, psnr


def test_card_and_grid_conventions() -> None:
    card = get_field_card()
    assert card.objective == "flow"
    values = np.array([card.value_low, card.value_high, 0.25], np.float32)
    assert np.allclose(card.to_unit(values)[:2], [-1.0, 1.0])
    assert np.allclose(card.from_unit(card.to_unit(values)), values)
    g = grid_coords(4, 2)
    assert g.shape == (8, 2)
    assert np.allclose(g[0], [0.125, 0.25]) and np.allclose(g[1], [0.125, 0.75])
    with pytest.raises(CardError, match="unknown field model"):
        get_field_card("nope")


@pytest.mark.parametrize("family", FAMILIES)
def test_fields_are_in_range_and_reproducible(family: str) -> None:
    a = make_fields(20, family, seed=3)
    assert a.shape == (20, 32, 32) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.std() > 0.1
    assert np.array_equal(a, make_fields(20, family, seed=3))
    assert not np.array_equal(a, make_fields(20, family, seed=4))


def test_observe_draws_distinct_pixels_per_field() -> None:
    fields = make_fields(5, seed=0)
    coords, values, idx = observe(fields, 0.05, seed=1)
    assert coords.shape == (5, 51, 2) and values.shape == (5, 51)
    assert all(len(set(row)) == 51 for row in idx)
    assert not np.array_equal(idx[0], idx[1])
    assert np.allclose(values, fields.reshape(5, -1)[np.arange(5)[:, None], idx])
    assert np.allclose(coords, grid_coords(32, 32)[idx])
    with pytest.raises(ValueError, match="cannot observe"):
        observe(fields, 2.0)


def test_psnr_of_the_truth_is_large_and_of_the_mean_is_small() -> None:
    fields = make_fields(10, seed=0)
    assert (psnr(fields, fields) > 200).all()
    assert np.allclose(psnr(np.full_like(fields, 0.5), fields), 20 * np.log10(1 / 0.25), atol=2)


def test_sampler_lands_on_the_prediction_and_averages_samples() -> None:
    truth = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)

    def oracle(cc, cv, qc, xt, t):  # a perfect denoiser: always the clean field
        return truth[np.asarray(cc[:, 0, 0], int)]

    cc = np.zeros((2, 3, 2), np.float32)
    cc[1] = 1.0
    qc = np.zeros((2, 6, 2), np.float32)
    x, x0 = euler_sample(oracle, cc, np.zeros((2, 3), np.float32), qc, 5, np.random.default_rng(0))
    assert np.allclose(x0, truth)
    assert np.allclose(x, truth, atol=1e-6)
    mean, std = reconstruct(oracle, "flow", cc, np.zeros((2, 3), np.float32), qc, 4, 3, max_rows=3)
    assert np.allclose(mean, truth, atol=1e-6) and np.allclose(std, 0, atol=1e-6)


def test_network_is_invariant_to_the_order_of_observations() -> None:
    torch = pytest.importorskip("torch")
    from seismag.models.field_flow import build_field_model

    torch.manual_seed(0)
    from seismag.training.field_train import override_card

    model = build_field_model(override_card(get_field_card(), ['kwargs.prior="none"'])).eval()
    cc, cv = torch.rand(2, 9, 2), torch.rand(2, 9)
    qc, xt, t = torch.rand(2, 16, 2), torch.randn(2, 16), torch.rand(2)
    perm = torch.randperm(9)
    with torch.no_grad():
        a = model(cc, cv, qc, xt, t)
        b = model(cc[:, perm], cv[:, perm], qc, xt, t)
    assert a.shape == (2, 16) and a.abs().max() <= 1.0
    assert torch.allclose(a, b, atol=1e-5)


def test_train_export_and_run_in_onnx_runtime(tmp_path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from seismag.export.field_export import example_inputs, export_field_model
    from seismag.models.field_card import FIELD_CARD_KEY, INPUT_NAMES
    from seismag.training.field_train import main, override_card

    card = override_card(get_field_card(), ["kwargs.d_model=16", "kwargs.query_layers=1"])
    assert card.kwargs["d_model"] == 16
    with pytest.raises(ValueError, match="key=value"):
        override_card(card, ["steps"])
    rc = main(
        [
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "12",
            "--threads",
            "1",
            "--set",
            "kwargs.d_model=16",
            "--set",
            "training.batch_size=4",
            "--set",
            'kwargs.prior="none"',
        ]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "history.json").read_text())
    assert summary["steps"] == 12 and np.isfinite(summary["psnr_5pct"])
    exported = export_field_model(
        weights=tmp_path / "run" / "FieldFlow.safetensors", out=tmp_path / "f.onnx"
    )
    assert exported.max_abs_diff <= exported.card.tolerance
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta[FIELD_CARD_KEY])["kwargs"]["d_model"] == 16
    out = session.run(None, dict(zip(INPUT_NAMES, example_inputs(5, 30, 100), strict=True)))[0]
    assert out.shape == (5, 100)


def test_mamba_mixer_and_the_seeds_step() -> None:
    torch = pytest.importorskip("torch")
    from seismag.models.field_flow import FieldFlow

    torch.manual_seed(0)
    model = FieldFlow(d_model=16, query_layers=1, query_mixer="mamba", seeds_dt=True).eval()
    args = (
        torch.rand(1, 5, 2),
        torch.rand(1, 5),
        torch.rand(1, 8, 2),
        torch.rand(1, 8),
        torch.rand(1),
    )
    with torch.no_grad():
        seeds = model(*args)
        model.query_blocks[0].mixer.seeds_dt = False
        learnt = model(*args)
    assert seeds.shape == learnt.shape == (1, 8)
    assert not torch.allclose(seeds, learnt)


def test_a_mamba_mixer_exports_through_selective_scan_and_serves(tmp_path) -> None:
    pytest.importorskip("torch")
    import onnx
    import onnxruntime as ort

    from seismag.export.field_export import example_inputs, export_field_model
    from seismag.export.onnx_export import ExportError
    from seismag.models.field_card import OUTPUT_NAME
    from seismag.models.scan_kernel import OP_DOMAIN, OP_TYPE
    from seismag.serving.executor.field_runtime import FieldRuntime
    from seismag.serving.executor.ort_backend import kernel_available
    from seismag.training.field_train import override_card

    base = ['kwargs.query_mixer="mamba"', "kwargs.d_model=16", "kwargs.query_layers=2"]
    card = override_card(get_field_card(), [*base, 'kwargs.prior="none"'])
    exported = export_field_model(card, out=tmp_path / "mamba.onnx")
    # Two scans (forward and backward) per query block, each one custom node with its function.
    assert exported.scan_nodes == 4
    proto = onnx.load(str(exported.path))
    assert sum(n.domain == OP_DOMAIN and n.op_type == OP_TYPE for n in proto.graph.node) == 4
    assert [f.name for f in proto.functions] == [OP_TYPE]
    assert exported.max_abs_diff <= card.tolerance

    runtime = FieldRuntime(exported.path, threads=1)
    fused, why = kernel_available()
    assert runtime.kernel == ("fused-scan" if fused else "onnxruntime"), why
    plain = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    feed = dict(zip(card.input_names(), example_inputs(2, 20, 300, seed=3), strict=True))
    a = runtime.session.run([OUTPUT_NAME], feed)[0]
    b = plain.run([OUTPUT_NAME], feed)[0]
    assert np.abs(a - b).max() <= card.tolerance
    truth = make_fields(2, seed=5)
    coords, values, _ = observe(truth, 0.05, seed=6)
    mean, std = runtime.reconstruct(coords, values, (32, 32), samples=2, steps=2)
    assert mean.shape == std.shape == (2, 32, 32)
    assert np.isfinite(mean).all() and (std >= 0).all()

    seeds = override_card(card, ["kwargs.seeds_dt=true"])
    with pytest.raises(ExportError, match="tied to the query count"):
        export_field_model(seeds, out=tmp_path / "seeds.onnx")
    assert not (tmp_path / "seeds.onnx").exists()


def test_field_train_and_export_cli_for_a_mamba_mixer(tmp_path, capsys) -> None:
    pytest.importorskip("torch")
    from seismag.cli import main as cli
    from seismag.training.field_train import main

    sets = ['kwargs.query_mixer="mamba"', "kwargs.d_model=16", "kwargs.query_layers=1"]
    sets += ['kwargs.prior="none"', "training.batch_size=4"]
    argv = ["--out", str(tmp_path / "run"), "--steps", "2", "--threads", "1"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    weights = tmp_path / "run" / "FieldFlow.safetensors"
    out = tmp_path / "mamba.onnx"
    assert cli(["field", "export", str(weights), "--out", str(out)]) == 0
    assert "2 SelectiveScan nodes" in capsys.readouterr().out
    assert out.is_file()


def test_sampler_maps_residual_draws_back_through_the_prior() -> None:
    prior_mean = np.array([[0.2, -0.4, 0.9]], np.float32)
    prior_std = np.array([[0.1, 0.5, 0.01]], np.float32)

    def zero_residual(cc, cv, qc, xt, t, m, s):  # the network agrees with the prior
        assert np.array_equal(m, np.broadcast_to(prior_mean, m.shape))
        assert np.array_equal(s, np.broadcast_to(prior_std, s.shape))
        return np.zeros_like(xt)

    args = (np.zeros((1, 2, 2), np.float32), np.zeros((1, 2), np.float32))
    qc = np.zeros((1, 3, 2), np.float32)
    for objective in ("flow", "regress"):
        mean, std = reconstruct(
            zero_residual, objective, *args, qc, 3, 4, prior=(prior_mean, prior_std)
        )
        assert np.allclose(mean, prior_mean) and np.allclose(std, 0.0, atol=1e-6)


def test_a_model_with_a_gp_prior_exports_and_runs_in_the_field_runtime(tmp_path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from seismag.export.field_export import export_field_model
    from seismag.serving.executor.field_runtime import FieldRuntime
    from seismag.training.field_train import override_card

    card = override_card(get_field_card(), ['kwargs.prior="gp"', "kwargs.d_model=16"])
    assert card.input_names()[-2:] == ("prior_mean", "prior_std")
    exported = export_field_model(card, out=tmp_path / "prior.onnx")
    assert exported.max_abs_diff <= card.tolerance
    runtime = FieldRuntime(exported.path, threads=1)
    truth = make_fields(2, seed=5)
    coords, values, idx = observe(truth, 0.05, seed=6)
    mean, std = runtime.reconstruct(coords, values, (32, 32), samples=2, steps=2)
    assert mean.shape == std.shape == (2, 32, 32)
    assert np.isfinite(mean).all() and (std >= 0).all()
    # Residuals are bounded to 6 prior standard deviations, which vanish at the observations.
    at_obs = mean.reshape(2, -1)[np.arange(2)[:, None], idx]
    assert np.abs(at_obs - values).max() < 0.05


def test_a_request_too_costly_for_the_gp_prior_is_refused() -> None:
    from seismag.serving.errors import Overloaded
    from seismag.serving.pipeline.field import check_request
    from seismag.training.field_train import override_card

    card = override_card(get_field_card(), ['kwargs.prior="gp"'])
    fields = make_fields(100, seed=0)
    coords, values, _ = observe(fields, count=300, seed=1)
    with pytest.raises(Overloaded, match="points\\^3"):
        check_request(card, coords, values, (32, 32), 2, 2, 0)
    check_request(card, coords[:2], values[:2], (32, 32), 2, 2, 0)  # two fields are fine


def test_ablation_trains_missing_variants_and_prints_their_row(tmp_path, capsys) -> None:
    pytest.importorskip("torch")
    from seismag.training.field_ablation import main

    argv = ["--out", str(tmp_path), "--steps", "3", "--variants", "base", "unbounded",
            "--fields", "2", "--samples", "2", "--set", "steps=2", "--set",
            "training.batch_size=4", "--set", "kwargs.d_model=16"]  # fmt: skip
    assert main(argv) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| base")]
    assert len(rows) == 1 and rows[0].count("|") == 7
    assert (tmp_path / "unbounded" / "FieldFlow.safetensors").is_file()
    card = json.loads((tmp_path / "base" / "history.json").read_text())["card"]
    assert card["kwargs"]["prior"] == "none"


def test_training_with_the_gp_prior_fits_its_pool_once(tmp_path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from seismag.training.field_train import main

    argv = ["--out", str(tmp_path / "run"), "--steps", "3", "--threads", "1", "--set",
            "training.pool_fields=3", "--set", "training.batch_size=2", "--set", "steps=2",
            "--set", "kwargs.d_model=16", "--pool", str(tmp_path / "pool.npz")]  # fmt: skip
    assert main(argv) == 0
    with np.load(tmp_path / "pool.npz") as pool:
        assert pool["truth0"].shape == (3, 1024) and pool["std0"].min() >= 1e-3
        mtime = (tmp_path / "pool.npz").stat().st_mtime_ns
    assert main(argv) == 0  # the cached pool is reused
    assert (tmp_path / "pool.npz").stat().st_mtime_ns == mtime
    summary = json.loads((tmp_path / "run" / "history.json").read_text())
    assert summary["card"]["kwargs"]["prior"] == "gp" and summary["psnr_5pct"] > 20


def test_a_network_started_at_its_prior_returns_the_prior() -> None:
    torch = pytest.importorskip("torch")
    from seismag.models.field_flow import FieldFlow

    with pytest.raises(ValueError, match="needs a prior"):
        FieldFlow(d_model=16, heads=2, start_at_prior=True)
    net = FieldFlow(d_model=16, heads=2, prior="gp", start_at_prior=True)
    n, k, q = 2, 5, 7
    out = net(torch.rand(n, k, 2), torch.rand(n, k), torch.rand(n, q, 2), torch.randn(n, q),
              torch.rand(n), torch.rand(n, q), torch.rand(n, q) + 0.1)  # fmt: skip
    assert out.shape == (n, q) and torch.count_nonzero(out) == 0  # a zero residual


def test_heuns_steps_keep_the_spread_eulers_shrink() -> None:
    """With the exact posterior-mean network of a standard normal target (x1_hat = t x_t /
    ((1 - t)^2 + t^2)), the draws' sd after S steps: Euler's shrink it, Heun's keep it, at
    2 S - 1 network runs."""
    from seismag.models.field_sampler import network_runs

    calls = []

    def exact(cc, cv, qc, x, t):
        calls.append(1)
        t = t[:, None]
        return t * x / ((1 - t) ** 2 + t**2)

    qc = np.zeros((500, 40, 2), np.float32)
    sds = {}
    for sampler in ("euler", "heun"):
        calls.clear()
        x, _ = euler_sample(exact, None, None, qc, 5, np.random.default_rng(0), (), sampler)
        sds[sampler] = float(x.std())
        assert len(calls) == network_runs(sampler, 5)
    assert 0.74 < sds["euler"] < 0.80 and 0.95 < sds["heun"] < 0.99
    with pytest.raises(ValueError, match="sampler"):
        euler_sample(exact, None, None, qc, 5, np.random.default_rng(0), (), "rk4")
