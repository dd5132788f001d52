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


# A module that starts a gRPC server defines its own ``server`` fixture (with the settings it
# tests); these two connect to whichever server that module has.
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
