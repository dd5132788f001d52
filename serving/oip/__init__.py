"""Generated gRPC code for the Open Inference Protocol, KServe v2 (protos/seismag/serving/oip).

Do not edit: regenerate with ``python -m seismag.serving.codegen``.
"""
