"""The tensor executor: exported model artifacts loaded into a runtime backend, behind a dynamic
batcher that only sees ready tensors. It knows nothing of stations, streams or gRPC."""
