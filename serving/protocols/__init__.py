"""Protocol adapters: the gRPC server (seismag.v1, Open Inference Protocol, health, reflection),
auth, metrics and message conversion. They turn wire messages into calls on the station pipeline
(:mod:`seismag.serving.pipeline`) or, for raw tensors, the executor; no model logic lives here."""
