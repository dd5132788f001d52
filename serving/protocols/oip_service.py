"""Open Inference Protocol (KServe v2 gRPC) servicer: the protocol Triton speaks.

It exposes the raw model - tensors in, tensors out, no miniSEED, no preprocessing - so existing
KServe/Triton clients, ``perf_analyzer`` and load balancers that probe ServerReady work against
seismag unchanged. Tensors travel as ``raw_input_contents`` (little-endian bytes, the fast path)
or as typed ``contents.fp32_contents``; replies always use ``raw_output_contents``.

Beyond inference it answers what Triton's tools ask first: ``ModelConfig`` (the configuration
``seismag export --to triton`` writes, built by the same function), ``ModelStreamInfer``, and the
model repository extension, honestly: the models are fixed when the server starts, so loading a
served model succeeds (it is loaded) and unloading is refused with FAILED_PRECONDITION.

(The module is not named ``oip.py`` because ``seismag.serving.oip`` is the generated package.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor

import grpc
import numpy as np

from seismag import __version__
from seismag.models.triton_config import ONNX_PLATFORM, TensorConfig, model_config
from seismag.models.triton_config import ModelConfig as TritonConfig
from seismag.serving.errors import InvalidInput, ModelNotFound, NotReady, ServingError
from seismag.serving.executor.encoder_runtime import EncoderRuntime, EncoderSet
from seismag.serving.executor.statistics import Duration, Snapshot, StatisticsTable
from seismag.serving.oip import grpc_service_pb2 as pb
from seismag.serving.oip import grpc_service_pb2_grpc as pb_grpc
from seismag.serving.oip import model_config_pb2 as mc
from seismag.serving.pipeline.limits import check_model_name, shown
from seismag.serving.protocols.rpc import Undecodable, check_deadline, rpc, status_of, time_left

log = logging.getLogger("seismag.serving")

PLATFORM = ONNX_PLATFORM
_LE_FP32 = np.dtype("<f4")
STREAM_IN_FLIGHT = 64
"""Requests of one ModelStreamInfer being run at once: enough to keep the batcher's batches full
for a pipelining client; beyond it the stream stops reading, so gRPC flow control holds the
client back instead of the server buffering without bound."""


class ModelControlRefused(ServingError):
    """The served models are fixed at start; a request to change them cannot be honoured."""

    code_name = "FAILED_PRECONDITION"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """KServe v2 endpoints over a ``ModelRegistry``; readiness comes from the server."""

    def __init__(
        self,
        registry,
        is_ready: Callable[[], bool],
        work: Executor,
        *,
        statistics: StatisticsTable | None = None,
        encoders: EncoderSet | None = None,
    ) -> None:
        self._registry = registry
        self._encoders = encoders or EncoderSet()
        self._is_ready = is_ready
        self._work = work  # threads for the blocking batcher wait; the event loop never blocks
        self._statistics = statistics or StatisticsTable(
            [*(rt.statistics for rt in registry), *(e.statistics for e in self._encoders)],
            registry.default_name,
        )

    def _models(self) -> list:
        """Every model this protocol lists: the magnitude models, then the encoders."""
        return [*self._registry, *self._encoders]

    def _runtime(self, name: str, version: str):
        """The magnitude model or encoder (``--encoder``) called ``name`` ("" = the default
        model); both answer input_specs, output_specs and infer_raw."""
        name = check_model_name(name)
        runtime = self._encoders.find(name) if name else None
        if runtime is None:
            try:
                runtime = self._registry.get(name)
            except ModelNotFound as exc:
                if not len(self._encoders):
                    raise
                encoders = ", ".join(self._encoders.names())
                raise ModelNotFound(f"{exc}; encoders: {encoders}") from None
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
            name="seismag",
            version=__version__,
            extensions=["statistics", "model_configuration", "model_repository"],
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
        self._check_ready()
        rt = self._runtime(request.model_name, request.model_version)
        return await self._infer(rt, request, await check_deadline(context))

    @rpc
    async def ModelStreamInfer(self, request_iterator, context):
        # Requests run concurrently (a pipelining client keeps the batcher busy); replies go out
        # in request order, one per request; a failed request answers error_message, as Triton.
        replies: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    replies.put_nowait(asyncio.ensure_future(self._stream_one(request, context)))
            finally:
                replies.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (reply := await replies.get()) is not None:
                yield await reply
                slots.release()
            await reader  # a broken request stream ends the call with its status
        finally:
            reader.cancel()
            while not replies.empty():
                if (left := replies.get_nowait()) is not None:
                    left.cancel()

    async def _stream_one(self, request, context) -> pb.ModelStreamInferResponse:
        """One request of a stream: its reply, or its error as ``error_message``. Counted in the
        model's statistics here (the interceptor sees only the whole stream)."""
        t0, rt = time.perf_counter_ns(), None
        try:
            if isinstance(request, Undecodable):
                raise InvalidInput(request.details)
            self._check_ready()
            rt = self._runtime(request.model_name, request.model_version)
            timeout = time_left(context)
            if timeout is not None and timeout <= 0:
                raise TimeoutError("deadline exceeded before the model ran")
            reply = await self._infer(rt, request, timeout)
        except (ServingError, TimeoutError) as exc:
            if rt is not None:
                rt.statistics.record_request(False, time.perf_counter_ns() - t0)
            return pb.ModelStreamInferResponse(error_message=status_of(exc)[1])
        except Exception as exc:  # the stream goes on; the traceback goes to the log
            log.error("ModelStreamInfer request failed", exc_info=exc)
            if rt is not None:
                rt.statistics.record_request(False, time.perf_counter_ns() - t0)
            return pb.ModelStreamInferResponse(error_message=status_of(exc)[1])
        rt.statistics.record_request(True, time.perf_counter_ns() - t0)
        return pb.ModelStreamInferResponse(infer_response=reply)

    def _check_ready(self) -> None:
        if not self._is_ready():
            raise NotReady("server is not ready (warming up or draining)")

    async def _infer(self, rt, request, timeout: float | None) -> pb.ModelInferResponse:
        inputs = _decode_inputs(request)
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
    async def ModelConfig(self, request, context):
        rt = self._runtime(request.name, request.version)
        config = rt.triton_config() if isinstance(rt, EncoderRuntime) else model_config(rt.card)
        return pb.ModelConfigResponse(config=_config_message(config))

    @rpc
    async def RepositoryIndex(self, request, context):
        # One repository: the models this server was started with ("" or any name lists them).
        ready = self._is_ready()
        state, reason = ("READY", "") if ready else ("UNAVAILABLE", "warming up or draining")
        models = [] if request.ready and not ready else self._models()
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=rt.name, version=str(rt.version), state=state, reason=reason
                )
                for rt in models
            ]
        )

    @rpc
    async def RepositoryModelLoad(self, request, context):
        rt = self._runtime(request.model_name, "")
        if request.parameters:
            raise ModelControlRefused(
                f"model {rt.name!r} is loaded; load parameters "
                f"({', '.join(sorted(shown(k) for k in request.parameters))}) cannot change it: "
                "the models are fixed when seismag serve starts"
            )
        return pb.RepositoryModelLoadResponse()  # already loaded, as Triton answers a reload

    @rpc
    async def RepositoryModelUnload(self, request, context):
        rt = self._runtime(request.model_name, "")
        raise ModelControlRefused(
            f"model {rt.name!r} cannot be unloaded: the models are fixed when seismag serve "
            "starts (restart it without this model)"
        )

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


def _tensor_message(t: TensorConfig, cls):
    reshape = mc.ModelTensorReshape(shape=t.reshape) if t.reshape is not None else None
    return cls(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=t.dims, reshape=reshape)


def _config_message(c: TritonConfig) -> mc.ModelConfig:
    """The protobuf form of the configuration ``seismag export --to triton`` writes as text."""
    return mc.ModelConfig(
        name=c.name,
        platform=c.platform,
        max_batch_size=c.max_batch_size,
        input=[_tensor_message(t, mc.ModelInput) for t in c.inputs],
        output=[_tensor_message(t, mc.ModelOutput) for t in c.outputs],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=c.preferred_batch_sizes,
            max_queue_delay_microseconds=c.max_queue_delay_us,
        ),
        instance_group=[
            mc.ModelInstanceGroup(
                kind=mc.ModelInstanceGroup.Kind.Value(c.instance_kind), count=c.instance_count
            )
        ],
        parameters={k: mc.ModelParameter(string_value=v) for k, v in c.parameters.items()},
    )


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
        count = math.prod(shape)  # Python ints: numpy's int64 product wraps ([2**32, 2**32] -> 0)
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
