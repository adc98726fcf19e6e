"""Names that export, the targets and the torch-free runtime must agree on, defined once.

Pure Python (no numpy, no torch, no backend library): anything may import it.
"""

from __future__ import annotations

# Inference backends; the order is the runtime's `auto` preference: TensorRT (needs a CUDA GPU)
# > OpenVINO > ONNX Runtime.
BACKENDS = ("tensorrt", "openvino", "onnxruntime")
# Precisions export writes, targets accept and TensorRT builds.
PRECISIONS = ("fp32", "fp16", "int8")
# Precisions the runtime runs: the exported ones plus bf16, an OpenVINO CPU inference precision
# applied to the FP32 artifact (no bf16 file exists).
RUNTIME_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# The dynamo exporter's minimum; TensorRT 10 and OpenVINO 2024+ read it.
ONNX_OPSET = 18
