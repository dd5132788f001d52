# seismag server image: the torch-free runtime with the embedded default model.
#
#   docker build -t seismag .
#   docker run --rm -p 8500:8500 -p 9100:9100 seismag                      # default model
#   docker run --rm -p 8500:8500 -v $PWD/exported:/models seismag \
#       seismag serve --host 0.0.0.0 --models /models --metrics-port 9100   # your exports
#
# The install steps are the README's first command (pip install of the package with no extras);
# no Docker engine runs on the project's CI machines, so CI runs the same pip steps, not this file.

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
# The fused scan kernel (numba + onnxruntime-extensions) is optional; add "[kernels]" to the
# install below to get it for the Mamba models.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/seismag-*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 seismag
USER seismag
WORKDIR /home/seismag
EXPOSE 8500 9100
# Healthy = the gRPC health service reports SERVING (models loaded and warmed up).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
s = g.HealthStub(grpc.insecure_channel('127.0.0.1:8500')).Check(h.HealthCheckRequest(), timeout=3); \
sys.exit(0 if s.status == h.HealthCheckResponse.SERVING else 1)"
CMD ["seismag", "serve", "--host", "0.0.0.0", "--port", "8500", "--metrics-port", "9100"]
