"""Optional int8 dynamic quantisation of an exported model (onnxruntime.quantization).

Weights of MatMul/Gemm/Conv become int8, activations are quantised on the fly. What it buys and
what it costs in accuracy is measured (benchmarks/export_report.py), not assumed: on small
convolutional models the quantise/dequantise overhead can outweigh the int8 arithmetic.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx


def quantize_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    proto = onnx.load(str(onnx_path))
    # Custom-domain nodes (the Mamba scan) stay fp32: the quantiser leaves unknown ops alone.
    # The quantiser logs a warning per integer tensor it leaves alone (shapes, pads): noise here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(proto, str(out_path), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(out_path))
    del quantized.metadata_props[:]
    for prop in proto.metadata_props:
        quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(key="seismag.quantization", value="int8 dynamic (weights)")
    onnx.save(quantized, str(out_path))
    return out_path
