"""Generated gRPC code for the Open Inference Protocol, KServe v2 (protos/seismag/serving/oip).

Do not edit: regenerate with ``python -m seismag.serving.codegen`` (grpcio-tools 1.72.2,
protobuf gencode 6.30.0: runs on protobuf >= 6.30.0 and grpcio >= 1.72.2).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
"""The descriptor pool of every OIP module (imports resolve within it; see codegen.py)."""
