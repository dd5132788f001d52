"""Generated gRPC code for the seismag MagnitudeService (protos/seismag/serving/v1).

Do not edit: regenerate with ``python -m seismag.serving.codegen``.
"""
