"""Generated gRPC code for the MagnitudeService and FieldService (protos/seismag/serving/v1).

Do not edit: regenerate with ``python -m seismag.serving.codegen`` (grpcio-tools 1.72.2,
protobuf gencode 6.30.0: runs on protobuf >= 6.30.0 and grpcio >= 1.72.2).
"""
