"""Generated gRPC code for the Open Inference Protocol, KServe v2 (protos/seismag/serving/oip).

Do not edit: regenerate with ``python -m seismag.serving.codegen``.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
"""The descriptor pool of every OIP module (imports resolve within it; see codegen.py)."""
