"""Sparse-field reconstruction served: FieldRuntime, the checks, FieldService/Reconstruct on a
real loopback server (``field_model=`` is ``seismag serve --field-model``), the client and
``seismag field make -> eval -> plot``.

The model is a randomly initialised FieldFlow, shrunk (one small layer each; at most 64 points
and a 48-point grid side, so the limits are cheap to reach) and exported through the project's
exporter; every size the runtime and the checks use comes from the card in its metadata.
"""

from __future__ import annotations

import dataclasses
import json
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seismag.cli import main
from seismag.models.field_card import FieldCard, get_field_card
from seismag.serving.client import SeismagClient
from seismag.serving.errors import InvalidInput, Overloaded
from seismag.serving.executor.backend import ModelLoadError
from seismag.serving.executor.field_runtime import FieldRuntime
from seismag.serving.pipeline import field
from seismag.serving.protocols.server import FIELD_SERVICE, build_server
from seismag.serving.v1 import field_pb2 as fpb
from seismag.serving.v1 import field_pb2_grpc as fpb_grpc
from seismag.training.field_data import make_fields, observe

pytest.importorskip("torch")

GRID = (12, 10)


@pytest.fixture(scope="module")
def card() -> FieldCard:
    small = {"d_model": 16, "heads": 2, "context_layers": 1, "query_layers": 1, "n_fourier": 8}
    base = get_field_card()
    return dataclasses.replace(
        base, max_points=64, max_grid=48, samples=3, steps=4, kwargs={**base.kwargs, **small}
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, card) -> str:
    from seismag.export.field_export import export_field_model

    out = tmp_path_factory.mktemp("field") / "FieldFlow.onnx"
    return str(export_field_model(card, out=out, seed=0).path)


@pytest.fixture(scope="module")
def runtime(model_path) -> FieldRuntime:
    return FieldRuntime(model_path, threads=1)


@pytest.fixture(scope="module")
def server(registry, model_path):
    srv = build_server(registry, address="127.0.0.1:0", field_model=model_path).start()
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def address(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def observed() -> tuple[np.ndarray, np.ndarray]:
    fields = make_fields(3, "benchmark", GRID, seed=0)
    coords, values, _ = observe(fields, 0.1, seed=1)
    return coords, values


def _request(coords, values, **kw) -> fpb.ReconstructRequest:
    kw.setdefault("height", GRID[0])
    kw.setdefault("width", GRID[1])
    fields = [
        fpb.ObservedField(coords=c.ravel().tolist(), values=v.tolist())
        for c, v in zip(coords, values, strict=True)
    ]
    return fpb.ReconstructRequest(fields=fields, **kw)


def _call(address: str, request: fpb.ReconstructRequest) -> fpb.ReconstructResponse:
    with grpc.insecure_channel(address) as ch:
        return fpb_grpc.FieldServiceStub(ch).Reconstruct(request, timeout=30)


def test_runtime_reads_the_card_and_gives_field_units(runtime, card, observed):
    assert runtime.card == card and runtime.name == "FieldFlow"
    assert "untrained" in runtime.weights
    mean, std = runtime.reconstruct(*observed, GRID, samples=2, steps=2, seed=3)
    assert mean.shape == std.shape == (3, *GRID) and mean.dtype == std.dtype == np.float32
    assert np.all((mean >= card.value_low) & (mean <= card.value_high)) and np.all(std >= 0)
    again, _ = runtime.reconstruct(*observed, GRID, samples=2, steps=2, seed=3)
    np.testing.assert_array_equal(mean, again)  # the seed decides the noise
    other, _ = runtime.reconstruct(*observed, GRID, samples=2, steps=2, seed=4)
    assert not np.array_equal(mean, other)


def test_reconstruct_rpc_equals_the_runtime_for_the_same_seed(address, runtime, observed, card):
    reply = _call(address, _request(*observed, samples=5, steps=3, seed=11))
    assert (reply.model, reply.model_version, reply.objective) == (
        "FieldFlow",
        card.version,
        "flow",
    )
    assert (reply.height, reply.width, reply.samples, reply.steps) == (*GRID, 5, 3)
    assert len(reply.fields) == 3 and reply.timings.total_ms > 0
    got = np.array([f.mean for f in reply.fields], np.float32).reshape(3, *GRID)
    got_std = np.array([f.std for f in reply.fields], np.float32).reshape(3, *GRID)
    mean, std = runtime.reconstruct(*observed, GRID, samples=5, steps=3, seed=11)
    np.testing.assert_allclose(got, mean, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_std, std, atol=1e-5, rtol=0)


def test_client_gives_numpy_with_the_cards_defaults(address, runtime, observed, card):
    with SeismagClient(address) as client:
        mean, std = client.reconstruct(*observed, grid=GRID, seed=2)
        r = client.reconstruct_fields(*observed, GRID, seed=2, model="FieldFlow")
    assert mean.shape == std.shape == (3, *GRID) and mean.dtype == np.float32
    assert (r.samples, r.steps) == (card.samples, card.steps)
    want, want_std = runtime.reconstruct(*observed, GRID, seed=2)
    np.testing.assert_allclose(mean, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(std, want_std, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(r.mean, mean)


def _bad(coords, values):
    """Variants of a good request, each wrong in one way, with the status and a message part."""
    many = np.random.default_rng(0).random((1, 65, 2), dtype=np.float32)
    nan = values.copy()
    nan[1, 2] = np.nan
    huge = values.copy()
    huge[0, 1] = 3e38  # finite, but overflowed the unit scaling (a fuzzer's INTERNAL error)
    outside = coords.copy()
    outside[2, 0, 1] = 1.5
    ragged = _request(coords, values)
    del ragged.fields[1].values[-1]
    del ragged.fields[1].coords[-2:]
    big = _request(np.repeat(coords, 30, 0), np.repeat(values, 30, 0), height=48, width=48)
    big.samples = 64
    return [
        (_request(outside, values), "INVALID_ARGUMENT", "field 2: coords must lie in [0, 1]"),
        (_request(many, many[..., 0]), "INVALID_ARGUMENT", "65 observed points"),
        (_request(coords, nan), "INVALID_ARGUMENT", "field 1: values hold NaN"),
        (_request(coords, huge), "INVALID_ARGUMENT", "field 0: values must lie in [-1, 2]"),
        (_request(coords, values, height=49), "INVALID_ARGUMENT", "grid height must be in"),
        (_request(coords, values, width=0), "INVALID_ARGUMENT", "grid width must be in [1, 48]"),
        (_request(coords, values, samples=0), "INVALID_ARGUMENT", "samples must be in [1, 64]"),
        (_request(coords, values, steps=101), "INVALID_ARGUMENT", "steps must be in [1, 100]"),
        (_request(coords[:0], values[:0]), "INVALID_ARGUMENT", "no fields"),
        (ragged, "INVALID_ARGUMENT", "field 1 has"),
        (_request(coords, values, model="Nope"), "NOT_FOUND", "FieldFlow"),
        (big, "RESOURCE_EXHAUSTED", "points drawn at once"),
    ]


def test_invalid_requests_are_refused_with_a_status_and_message(address, observed):
    for request, code, part in _bad(*observed):
        with pytest.raises(grpc.RpcError) as err:
            _call(address, request)
        assert err.value.code().name == code, err.value.details()
        assert part in err.value.details(), err.value.details()


def test_the_checks_are_the_pipelines(card, observed):
    coords, values = observed
    ok = field.check_request(card, coords, values, GRID)
    assert (ok.samples, ok.steps, ok.seed, ok.grid) == (3, 4, 0, GRID)
    with pytest.raises(InvalidInput, match=r"values must have shape \(fields, points\)"):
        field.check_request(card, coords, values[:, :-1], GRID)
    with pytest.raises(InvalidInput, match="seed must be in"):
        field.check_request(card, coords, values, GRID, seed=-1)
    with pytest.raises(Overloaded, match="network evaluations"):
        field.check_request(card, coords, values, (48, 48), samples=64, steps=100)
    # Without a prior (whose fitting is bounded first: tests/test_field_model.py).
    kwargs = {**card.kwargs, "prior": "none"}
    big = dataclasses.replace(card, max_grid=4096, max_points=4096, kwargs=kwargs)
    many = np.random.default_rng(0).random((1, 4096, 2))
    with pytest.raises(InvalidInput, match="attention scores per draw"):
        field.check_request(big, many, many[..., 0], (1024, 1024), samples=1, steps=1)


def test_health_and_reflection_include_the_service(address):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=FIELD_SERVICE), timeout=10
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([request]), timeout=10
        )
    assert FIELD_SERVICE == "seismag.v1.FieldService"
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert FIELD_SERVICE in [s.name for s in reply.list_services_response.service]


def test_list_models_lists_the_field_model(address, card, runtime):
    from seismag.serving.v1 import seismag_pb2 as pb
    from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as ch:
        reply = pb_grpc.MagnitudeServiceStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
    (info,) = reply.field_models
    assert (info.name, info.version) == ("FieldFlow", card.version)
    assert FieldCard.from_dict(json.loads(info.card_json)) == card
    assert [i.name for i in info.inputs] == list(card.input_names())
    assert list(info.inputs[0].shape) == [-1, -1, 2]  # fields and points are dynamic
    assert [o.name for o in info.outputs] == ["x1"]
    assert json.loads(info.runtime_json)["kernel"] == runtime.kernel
    assert json.loads(info.server_config_json)["field_concurrency"] == 2
    assert "FieldFlow" not in [m.name for m in reply.models]  # not a magnitude model


def test_reconstructions_beyond_the_servers_concurrency_are_refused(registry, model_path, observed):
    coords, values = observed
    srv = build_server(
        registry, address="127.0.0.1:0", field_model=model_path, field_concurrency=1,
        work_threads=3,
    ).start()  # fmt: skip
    # 14 M network evaluations (Heun: 99 runs per draw), under the per-request limit: seconds.
    slow = _request(coords, values, height=48, width=48, samples=20, steps=50)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = fpb_grpc.FieldServiceStub(ch)
            first = stub.Reconstruct.future(slow, timeout=60)
            time.sleep(1.0)  # the first call reaches the server and takes the slot
            with pytest.raises(grpc.RpcError) as err:
                stub.Reconstruct(_request(coords, values), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "1 reconstructions are in flight (limit 1" in err.value.details()
            assert not first.done()
            first.cancel()  # its slot is free once its work thread has stopped
            deadline = time.monotonic() + 30
            while True:
                try:
                    reply = stub.Reconstruct(_request(coords, values), timeout=10)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "the cancelled call kept its slot"
                    time.sleep(0.1)
        assert len(reply.fields) == len(values)
    finally:
        srv.stop(0)
    with pytest.raises(ValueError, match="field_concurrency must be below work_threads"):
        build_server(registry, address="127.0.0.1:0", field_model=model_path, work_threads=2)


def test_without_a_field_model_the_server_is_unchanged(registry, observed):
    srv = build_server(registry, address="127.0.0.1:0").start(warm_up=False)
    try:
        with pytest.raises(grpc.RpcError) as err:
            _call(f"127.0.0.1:{srv.port}", _request(*observed))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert srv.field_model is None and FIELD_SERVICE not in srv._health_services
    finally:
        srv.stop(0)


def test_a_file_that_is_not_a_field_model_stops_the_start(registry, tmp_path):
    from seismag.serving.executor.runtime import default_model_path

    with pytest.raises(ModelLoadError, match="does not exist"):
        build_server(registry, address="127.0.0.1:0", field_model=str(tmp_path / "none.onnx"))
    with pytest.raises(ModelLoadError, match="no field model card"):
        build_server(registry, address="127.0.0.1:0", field_model=str(default_model_path()))


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("seismag: error: ") for line in err), err
    return err


def test_cli_make_eval_plot_here_and_on_the_server(address, model_path, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    inp, here, there, fig = (tmp_path / n for n in ("in.npz", "here.npz", "srv.npz", "f.png"))
    assert main(["field", "make", "--count", "5", "--grid", "16", "16", "--out", str(inp)]) == 0
    data = np.load(inp)
    assert data["coords"].shape == (5, 13, 2) and data["truth"].shape == (5, 16, 16)
    args = ["field", "eval", "--fields", str(inp), "--samples", "2", "--steps", "2", "--batch", "2"]
    assert main([*args, "--model", model_path, "--out", str(here), "--threads", "1"]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main([*args, "--server", address, "--out", str(there)]) == 0
    a, b = np.load(here), np.load(there)
    assert a["mean"].shape == a["std"].shape == (5, 16, 16) and int(a["samples"]) == 2
    np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(a["std"], b["std"], atol=1e-5, rtol=0)
    plot = ["field", "plot", "--fields", str(inp), "--result", str(here), "--out", str(fig)]
    assert main([*plot, "--index", "0", "4"]) == 0
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    assert main([*plot[:-1], str(tmp_path / "g.png"), "--index", "5"]) == 2
    assert "--index 5 is not a field" in _errors(capsys)[0]


def test_cli_refuses_bad_input_in_one_line(address, model_path, tmp_path, capsys):
    inp, out = tmp_path / "in.npz", str(tmp_path / "out.npz")
    assert main(["field", "make", "--count", "2", "--grid", "8", "8", "--out", str(inp)]) == 0
    capsys.readouterr()
    data = dict(np.load(inp))
    data["coords"][1, 0, 0] = -0.5
    bad = tmp_path / "bad.npz"
    np.savez(bad, **data)
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    local = ["field", "eval", "--model", model_path, "--out", out, "--fields"]
    cases = [
        ([*local, str(tmp_path / "none.npz")], "no such file"),
        ([*local, str(text)], "not a .npz file"),
        ([*local, str(bad)], "field 1: coords must lie in [0, 1]"),
        ([*local, str(inp), "--samples", "0"], "samples must be in [1, 64]"),
        (["field", "eval", "--model", "x.onnx", "--server", address, "--fields", str(inp),
          "--out", out], "not both"),
        (["field", "eval", "--model", str(inp), "--fields", str(inp), "--out", out], "ONNX"),
        (["field", "eval", "--server", address, "--fields", str(bad), "--out", out],
         "INVALID_ARGUMENT: field 1: coords must lie in [0, 1]"),
        (["field", "make", "--fraction", "0", "--out", out], "--fraction must be in (0, 1]"),
        ([*local, str(inp), "--out", str(tmp_path / "out.txt")], "--out must name a .npz"),
    ]  # fmt: skip
    for argv, part in cases:
        assert main(argv) == 2, argv
        (line,) = _errors(capsys)
        assert part in line, line
