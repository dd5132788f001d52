import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def registry():
    """The packaged default model behind a batcher; modules that need other models override it."""
    from seismag.serving.executor.runtime import ModelRegistry, default_model_path

    reg = ModelRegistry.from_paths([default_model_path()], max_queue_delay_ms=2.0)
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def server(registry):
    """A server with default settings on a free loopback port (metrics on one too); a module
    that tests other settings defines its own ``server``, which takes precedence."""
    from seismag.serving.protocols.server import build_server

    srv = build_server(registry, address="127.0.0.1:0", metrics_port=0).start()
    yield srv
    srv.stop(1)


# These two connect to whichever server the module has.
@pytest.fixture(scope="module")
def channel(server):
    import grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

    return pb_grpc.MagnitudeServiceStub(channel)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The shipped default model plus a freshly exported (untrained) scalar model, ViTMag, in
    one folder: for tests that need two models or a scalar one (exported once per session)."""
    import shutil

    torch = pytest.importorskip("torch")
    from seismag.export.onnx_export import export_onnx
    from seismag.models import build_model
    from seismag.serving.executor.runtime import default_model_path

    folder = tmp_path_factory.mktemp("models")
    shutil.copy(default_model_path(), folder / "PhaseNetMag.onnx")
    torch.manual_seed(0)
    export_onnx(build_model("ViTMag").eval(), folder / "ViTMag.onnx")
    return folder
