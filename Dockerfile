# syntax=docker/dockerfile:1
# seismag server image: the torch-free runtime with the embedded default model.
#
#   docker build -t seismag .
#   docker run --rm -p 8500:8500 -p 9100:9100 seismag                      # default model
#   docker run --rm -p 8500:8500 -v $PWD/exported:/models seismag \
#       seismag serve --models /models                                      # your exports
#
# Settings come from SEISMAG_* variables (every `seismag serve` flag has one, e.g.
# -e SEISMAG_PORT=9000, -e SEISMAG_TLS_CERT=/certs/server.pem): the server and the health
# check (`seismag health`) read the same ones, so the check follows the port and TLS.
# Needs BuildKit (Docker's default builder since 23.0) for the wheel mount below.

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
# Wheels for the package and every dependency: the only place the network is used.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
# Installed from the build stage's wheels alone (--no-index: no network); they are mounted,
# not copied, so no layer of the image keeps them. The fused scan kernel (numba +
# onnxruntime-extensions) is optional: build its wheels with ".[kernels]" above and install
# "seismag[kernels]" here for the Mamba models.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels seismag \
    && useradd --create-home --uid 10001 seismag
USER seismag
WORKDIR /home/seismag
ENV SEISMAG_HOST=0.0.0.0 SEISMAG_PORT=8500 SEISMAG_METRICS_PORT=9100
EXPOSE 8500 9100
# Healthy = the gRPC health service reports SERVING (models loaded and warmed up).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["seismag", "health"]
CMD ["seismag", "serve"]
