"""OpenVINO IR from ONNX (FP32, or int8 from the QDQ model), NNCF PTQ, and proof of int8 execution.

OpenVINO reads Q/DQ pairs as FakeQuantize and, on CPUs with VNNI/AMX, runs the convolutions and
matmuls behind them as int8 kernels. `int8_evidence` shows that from the compiled model itself
(see `edgekd.runtime.ov_int8`, shared with the runtime), not from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import ExportError
from edgekd.export.onnx import quiet_toolchain
from edgekd.runtime.ov_int8 import Int8Evidence, weighted_layers

if TYPE_CHECKING:
    import openvino as ov

# On bf16-capable CPUs OpenVINO's default inference precision is bf16: an honest FP32 number needs
# the hint.
F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def convert_ir(onnx_path: Path, xml_path: Path) -> Path:
    """ONNX -> OpenVINO IR (`xml_path` + `.bin`), weights kept at their stored precision (no
    FP16 compression). A QDQ ONNX becomes an IR with FakeQuantize nodes that the CPU plugin runs
    in int8."""
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
    except Exception as exc:  # OpenVINO raises RuntimeError / OpConversionFailure
        raise ExportError(f"OpenVINO could not convert {onnx_path}: {exc}") from exc
    return xml_path


def compile_cpu(model: Path | ov.Model, *, f32: bool = True) -> ov.CompiledModel:
    """Compile an IR (path or Model) for the CPU plugin; `f32` pins FP32 inference precision."""
    import openvino as ov

    core = ov.Core()
    source = core.read_model(str(model)) if isinstance(model, (str, Path)) else model
    return core.compile_model(source, "CPU", F32_CONFIG if f32 else {})


def int8_evidence(model: Path | ov.Model) -> Int8Evidence:
    """Compile on CPU and read, from the runtime model, the precision each conv/matmul ran in."""
    return weighted_layers(compile_cpu(model, f32=True))


def ov_logits(
    model: Path | ov.Model, x: np.ndarray, *, f32: bool = True, batch: int = 256
) -> np.ndarray:
    """Logits (N, K) of an IR on the CPU plugin for features x (N, ...)."""
    compiled = compile_cpu(model, f32=f32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.concatenate([compiled(x[i : i + batch])[0] for i in range(0, len(x), batch)])


def nncf_quantize_ir(
    fp32_xml: Path,
    out_xml: Path,
    calib: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    max_drop_points: float,
) -> Path:
    """NNCF PTQ with accuracy control on an FP32 IR: layers are reverted to float until accuracy
    on (val_x, val_y) is within `max_drop_points` (percentage points) of FP32.

    The result is OpenVINO-only: NNCF quantizes activations after ReLU as uint8, which TensorRT
    rejects. Use a validation split here, never the test split the accuracy report uses.
    """
    import nncf
    import openvino as ov

    if len(val_x) == 0 or len(calib) == 0:
        raise ExportError("NNCF accuracy control needs calibration and validation windows")
    batches = [
        (np.ascontiguousarray(val_x[i : i + 256], dtype=np.float32), val_y[i : i + 256])
        for i in range(0, len(val_x), 256)
    ]

    def accuracy(compiled: ov.CompiledModel, data: Any) -> float:
        hits = [int((compiled(x)[0].argmax(1) == y).sum()) for x, y in data]
        return float(sum(hits) / len(val_y))

    model = ov.Core().read_model(str(fp32_xml))
    calibration = nncf.Dataset(
        list(np.ascontiguousarray(calib, dtype=np.float32)), lambda s: s[None]
    )
    validation = nncf.Dataset(batches, lambda item: item[0])
    try:
        with quiet_toolchain():
            quantized = nncf.quantize_with_accuracy_control(
                model,
                calibration,
                validation,
                validation_fn=accuracy,
                max_drop=max_drop_points / 100.0,
                subset_size=len(calib),
            )
    except Exception as exc:  # nncf raises its own and OpenVINO's errors
        raise ExportError(f"NNCF quantization with accuracy control failed: {exc}") from exc
    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml
