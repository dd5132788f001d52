"""Open Inference Protocol (KServe v2 gRPC) servicer: the protocol Triton speaks.

It exposes the raw model - tensors in, tensors out, no miniSEED, no preprocessing - so existing
KServe/Triton clients, ``perf_analyzer`` and load balancers that probe ServerReady work against
seismag unchanged. Tensors travel as ``raw_input_contents`` (little-endian bytes, the fast path)
or as typed ``contents.fp32_contents``; replies always use ``raw_output_contents``.

(The module is not named ``oip.py`` because ``seismag.serving.oip`` is the generated package.)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor

import grpc
import numpy as np

from seismag import __version__
from seismag.serving.errors import InvalidInput, ModelNotFound, NotReady
from seismag.serving.executor.statistics import Duration, Snapshot, StatisticsTable
from seismag.serving.oip import grpc_service_pb2 as pb
from seismag.serving.oip import grpc_service_pb2_grpc as pb_grpc
from seismag.serving.pipeline.limits import check_model_name, shown
from seismag.serving.protocols.rpc import check_deadline, rpc

PLATFORM = "onnxruntime_onnx"
_LE_FP32 = np.dtype("<f4")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """KServe v2 endpoints over a ``ModelRegistry``; readiness comes from the server."""

    def __init__(
        self,
        registry,
        is_ready: Callable[[], bool],
        work: Executor,
        *,
        statistics: StatisticsTable | None = None,
    ) -> None:
        self._registry = registry
        self._is_ready = is_ready
        self._work = work  # threads for the blocking batcher wait; the event loop never blocks
        self._statistics = statistics or StatisticsTable(
            (rt.statistics for rt in registry), registry.default_name
        )

    def _runtime(self, name: str, version: str):
        runtime = self._registry.get(check_model_name(name))
        if version and version != str(runtime.version):
            raise ModelNotFound(
                f"model {runtime.name!r} has version {runtime.version!r}, not {shown(version)}"
            )
        return runtime

    @rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._is_ready())

    @rpc
    async def ModelReady(self, request, context):
        # Like Triton: an unknown model (or version) is "not ready", not an error.
        try:
            self._runtime(request.name, request.version)
        except (ModelNotFound, InvalidInput):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._is_ready())

    @rpc
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name="seismag", version=__version__, extensions=["statistics"]
        )

    @rpc
    async def ModelMetadata(self, request, context):
        rt = self._runtime(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=rt.name,
            versions=[str(rt.version)],
            platform=PLATFORM,
            inputs=[_tensor_meta(s) for s in rt.input_specs()],
            outputs=[_tensor_meta(s) for s in rt.output_specs()],
        )

    @rpc
    async def ModelInfer(self, request, context):
        if not self._is_ready():
            raise NotReady("server is not ready (warming up or draining)")
        rt = self._runtime(request.model_name, request.model_version)
        inputs = _decode_inputs(request)
        timeout = await check_deadline(context)
        run = functools.partial(rt.infer_raw, inputs, timeout)
        outputs = await asyncio.get_running_loop().run_in_executor(self._work, run)
        wanted = [o.name for o in request.outputs] or list(outputs)
        unknown = [n for n in wanted if n not in outputs]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; the model has {sorted(outputs)}")
        reply = pb.ModelInferResponse(
            model_name=rt.name, model_version=str(rt.version), id=request.id
        )
        for name in wanted:
            arr = np.ascontiguousarray(outputs[name], dtype=_LE_FP32)
            reply.outputs.add(name=name, datatype="FP32", shape=list(arr.shape))
            reply.raw_output_contents.append(arr.tobytes())
        return reply

    @rpc
    async def ModelStatistics(self, request, context):
        # As Triton: no name = every model; a name (and version) that is not served: NOT_FOUND.
        if not request.name:
            found = list(self._statistics)
        else:
            one = self._statistics.find(check_model_name(request.name), request.version)
            if one is None:
                raise ModelNotFound(
                    f"no model {shown(request.name)}"
                    + (f" version {shown(request.version)}" if request.version else "")
                    + f"; this server has: {', '.join(m.name for m in self._statistics)}"
                )
            found = [one]
        return pb.ModelStatisticsResponse(model_stats=[_model_stats(m.snapshot()) for m in found])


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _model_stats(s: Snapshot) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=s.name,
        version=s.version,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=b.batch_size,
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
            for b in s.batches
        ],
    )


def _tensor_meta(spec) -> pb.ModelMetadataResponse.TensorMetadata:
    name, datatype, shape = spec
    return pb.ModelMetadataResponse.TensorMetadata(
        name=name, datatype=datatype, shape=[int(d) for d in shape]
    )


def _decode_inputs(request) -> dict[str, np.ndarray]:
    """Request tensors as float32 arrays, checked against their declared shapes."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; "
            "send one per input, in order"
        )
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.datatype != "FP32":
            raise InvalidInput(
                f"input {tensor.name!r}: datatype must be FP32, got {tensor.datatype!r}"
            )
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"input {tensor.name!r}: negative dimension in shape {list(shape)}")
        count = int(np.prod(shape, dtype=np.int64))
        if raw:
            if len(raw[i]) != count * 4:
                raise InvalidInput(
                    f"input {tensor.name!r}: {len(raw[i])} bytes, shape {list(shape)} FP32 "
                    f"needs {count * 4}"
                )
            flat = np.frombuffer(raw[i], dtype=_LE_FP32)
        else:
            flat = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
            if flat.size != count:
                raise InvalidInput(
                    f"input {tensor.name!r}: {flat.size} fp32_contents, shape {list(shape)} "
                    f"needs {count}"
                )
        if tensor.name in arrays:
            raise InvalidInput(f"input {tensor.name!r} given twice")
        arrays[tensor.name] = flat.astype(np.float32, copy=False).reshape(shape)
    return arrays


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
