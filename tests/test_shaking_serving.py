"""Shaking maps with a ground-motion prior: the random-event-term prior against ShakeMap's
conditioning, and a ``prior = "shakemap"`` field model (ShakeFlow's card, shrunk) exported, run
in the field runtime, served by FieldService/Reconstruct on a real loopback server with each
field's source, and through ``seismag field make --family shaking -> eval``."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pytest

from seismag.benchmarks.shakemap_baseline import fit_shakemap
from seismag.cli import main
from seismag.models.field_card import FieldCard, get_field_card, grid_coords
from seismag.models.field_prior import field_prior
from seismag.models.ground_motion import ShakingPrior
from seismag.serving.client import SeismagClient
from seismag.serving.errors import InvalidInput
from seismag.serving.executor.backend import ModelLoadError
from seismag.serving.executor.field_runtime import FieldRuntime
from seismag.serving.pipeline import field
from seismag.serving.protocols.server import build_server
from seismag.serving.v1 import field_pb2 as fpb
from seismag.serving.v1 import field_pb2_grpc as fpb_grpc
from seismag.training.shaking_fields import make_shaking_maps, station_observations

GRID = (32, 32)


@pytest.fixture(scope="module")
def baseline():
    return fit_shakemap(make_shaking_maps(120, GRID, seed=1))


@pytest.fixture(scope="module")
def maps():
    return make_shaking_maps(4, GRID, seed=1000, regimes=("high_attenuation",))


def test_level_only_event_terms_are_shakemaps_conditioning(baseline, maps) -> None:
    coords, values, _ = station_observations(maps, 0.05, seed=1001)
    level_only = dataclasses.replace(
        baseline.terms,
        gmm=baseline.gmm,
        term_mean=(0.0, 0.0, 0.0),
        term_cov=((baseline.tau**2, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        within=baseline.within,
    )
    shakemap = dataclasses.replace(baseline, terms=level_only)
    for i in range(2):
        m1, s1 = baseline.gmm_kriging(coords[i], values[i], GRID, maps.event(i))
        m2, s2 = shakemap.gmm_event_terms(coords[i], values[i], GRID, maps.event(i))
        assert np.abs(m1 - m2).max() < 1e-5 and np.abs(s1 - s2).max() < 1e-4


def test_event_terms_reproduce_the_stations_and_round_trip(baseline, maps) -> None:
    prior = baseline.terms
    assert np.allclose(np.asarray(prior.term_cov), np.asarray(prior.term_cov).T)
    assert ShakingPrior.from_dict(prior.to_dict()) == prior
    coords, values, idx = station_observations(maps, 0.05, seed=1001)
    source = maps.sources()[0]
    mean, std = prior.posterior(coords[0], values[0], source, grid_coords(*GRID))
    assert np.abs(mean[idx[0]] - values[0]).max() < 1e-3 and std[idx[0]].max() < 1e-2
    far = np.setdiff1d(np.arange(mean.size), idx[0])
    assert std[far].min() > 0.05


@pytest.fixture(scope="module")
def card(baseline) -> FieldCard:
    # Shrunk, and not started at its prior: a random network moves away from it, which the
    # checks below must see bounded.
    small = {"d_model": 16, "heads": 2, "context_layers": 1, "query_layers": 1, "n_fourier": 8,
             "start_at_prior": False}  # fmt: skip
    base = get_field_card("ShakeFlow")
    assert base.needs_source and base.sampler == "heun"
    return dataclasses.replace(
        base,
        samples=2,
        steps=3,
        kwargs={**base.kwargs, **small},
        prior_params=baseline.terms.to_dict(),
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, card) -> str:
    pytest.importorskip("torch")
    from seismag.export.field_export import export_field_model

    out = tmp_path_factory.mktemp("shake") / "ShakeFlow.onnx"
    return str(export_field_model(card, out=out, seed=0).path)


@pytest.fixture(scope="module")
def runtime(model_path) -> FieldRuntime:
    return FieldRuntime(model_path, threads=1)


@pytest.fixture(scope="module")
def address(registry, model_path):
    srv = build_server(registry, address="127.0.0.1:0", field_model=model_path).start()
    yield f"127.0.0.1:{srv.port}"
    srv.stop(1)


def test_the_runtime_refines_the_prior_and_keeps_the_stations(runtime, card, maps) -> None:
    coords, values, idx = station_observations(maps, 0.05, seed=1001)
    sources = maps.sources()
    mean, std = runtime.reconstruct(coords, values, GRID, sources=sources)
    assert mean.shape == std.shape == (4, *GRID) and np.isfinite(mean).all()
    # Residuals are bounded to 6 prior sds, which vanish at the stations.
    at = mean.reshape(4, -1)[np.arange(4)[:, None], idx]
    assert np.abs(at - values).max() < 0.05
    query = np.broadcast_to(grid_coords(*GRID), (4, GRID[0] * GRID[1], 2))
    prior_mean, prior_std = field_prior(card, coords, card.to_unit(values), query, sources)
    # The network moves the prior's mean by at most 6 of its sds (the residual bound).
    moved = np.abs(card.to_unit(mean).reshape(4, -1) - prior_mean)
    assert (moved <= 6 * prior_std + 1e-4).all()
    with pytest.raises(ValueError, match="source"):
        runtime.reconstruct(coords, values, GRID)


def test_reconstruct_rpc_with_sources_equals_the_runtime(address, runtime, maps) -> None:
    coords, values, _ = station_observations(maps, 0.05, seed=1001)
    want, want_std = runtime.reconstruct(coords, values, GRID, seed=3, sources=maps.sources())
    with SeismagClient(address) as client:
        mean, std = client.reconstruct(coords, values, GRID, seed=3, sources=maps.sources())
    assert np.allclose(mean, want, atol=1e-5) and np.allclose(std, want_std, atol=1e-5)


def _rpc_error(address: str, request: fpb.ReconstructRequest) -> grpc.RpcError:
    with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as info:
        fpb_grpc.FieldServiceStub(ch).Reconstruct(request, timeout=30)
    return info.value


def _fields(coords, values, sources):
    return [
        fpb.ObservedField(
            coords=c.ravel().tolist(),
            values=v.tolist(),
            source=None
            if s is None
            else fpb.EventSource(
                magnitude=s[0], epicentre_row=s[1], epicentre_column=s[2], depth_km=s[3]
            ),
        )
        for c, v, s in zip(coords, values, sources, strict=True)
    ]


def test_missing_mixed_or_implausible_sources_are_refused(address, maps) -> None:
    coords, values, _ = station_observations(maps, 0.05, seed=1001)
    src = [tuple(map(float, s)) for s in maps.sources()]
    bad_magnitude = [(15.0, *src[0][1:]), *src[1:]]
    cases = {
        "needs each field's event source": [None] * 4,
        "every field of a request has one, or none": [src[0], None, *src[2:]],
        "source magnitude must be finite and in": bad_magnitude,
        "source depth_km must be finite": [(*src[0][:3], float("nan")), *src[1:]],
    }
    for message, sources in cases.items():
        request = fpb.ReconstructRequest(
            fields=_fields(coords, values, sources), height=GRID[0], width=GRID[1]
        )
        err = _rpc_error(address, request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in err.details(), err.details()


def test_a_model_without_a_ground_motion_prior_refuses_sources(maps) -> None:
    coords, values, _ = station_observations(maps, 0.05, seed=1001)
    card = get_field_card()
    inside = np.clip(values, card.value_low, card.value_high)  # valid values: only the sources
    with pytest.raises(InvalidInput, match="takes no event source"):
        field.check_request(card, coords, inside, GRID, sources=maps.sources())


def test_a_shakemap_model_without_fitted_numbers_stops_the_load(tmp_path, card) -> None:
    pytest.importorskip("torch")
    from seismag.export.field_export import export_field_model

    unfitted = dataclasses.replace(card, prior_params={})
    path = export_field_model(unfitted, out=tmp_path / "unfitted.onnx", seed=0).path
    with pytest.raises(ModelLoadError, match="no fitted parameters"):
        FieldRuntime(path, threads=1)


def test_cli_make_shaking_then_eval_here_and_on_the_server(
    address, model_path, tmp_path, capsys
) -> None:
    fields, here, there = (str(tmp_path / n) for n in ("in.npz", "here.npz", "there.npz"))
    args = ["field", "make", "--family", "shaking", "--count", "3", "--fraction", "0.05"]
    assert main([*args, "--seed", "1000", "--out", fields]) == 0
    with np.load(fields) as data:
        assert data["sources"].shape == (3, 4) and data["truth"].shape == (3, *GRID)
    assert main(["field", "eval", "--fields", fields, "--out", here, "--model", model_path]) == 0
    printed = capsys.readouterr().out
    assert "RMSE" in printed and "PSNR" not in printed  # log10 PGV has no peak of 1
    assert main(["field", "eval", "--fields", fields, "--out", there, "--server", address]) == 0
    with np.load(here) as a, np.load(there) as b:
        assert np.allclose(a["mean"], b["mean"], atol=1e-5)


def test_sources_of_the_wrong_shape_or_kind_are_refused(card, maps) -> None:
    coords, values, _ = station_observations(maps, 0.05, seed=1001)
    sources = maps.sources()
    cases = {
        "sources must have shape": sources[:, :3],
        "must be real numbers": sources.astype(np.complex64),
        "source epicentre_row must be finite": np.where(
            np.arange(4)[None, :] == 1, np.inf, sources
        ),
    }
    for message, bad in cases.items():
        with pytest.raises(InvalidInput, match=message):
            field.check_request(card, coords, values, GRID, sources=bad)
    checked = field.check_request(card, coords, values, GRID, sources=sources)
    assert checked.sources.shape == (4, 4) and checked.sources.dtype == np.float64
