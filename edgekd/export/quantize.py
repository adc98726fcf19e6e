"""Post-training quantization of an FP32 ONNX model into TensorRT-style QDQ with ONNX Runtime.

Signed int8 activations and weights, symmetric (zero point 0), weights per output channel, biases
left in float (TensorRT takes int8 Q/DQ only), QDQ format (not QOperator: TensorRT does not parse
QLinearConv). The result is linted (`qdq_lint`) before it is returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ConfigError, ExportError
from edgekd.export.onnx import INPUT_NAME
from edgekd.export.qdq_lint import require_clean

PTQ_METHODS = ("minmax", "percentile", "entropy")
CALIB_BATCH = 64


@dataclass(frozen=True)
class CalibrationRecord:
    """What the quantizer saw: method, number of windows, sha256 of the features, their origin."""

    method: str
    samples: int
    data_sha256: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def data_sha256(x: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes (equal arrays, equal hash)."""
    return chunked_sha256(x.shape, [x])


def chunked_sha256(shape: tuple[int, ...], chunks: Iterable[np.ndarray]) -> str:
    """`data_sha256` of the array of `shape` whose consecutive row blocks are `chunks` (same
    dtype), without ever holding the whole array."""
    digest: Any = None
    for chunk in chunks:
        arr = np.ascontiguousarray(chunk)
        if digest is None:
            digest = hashlib.sha256(f"{arr.dtype.str}{tuple(shape)}".encode())
        digest.update(arr.tobytes())
    if digest is None:
        raise ValueError("chunked_sha256 needs at least one chunk (its dtype names the data)")
    return str(digest.hexdigest())


def ptq_options(method: str) -> dict[str, Any]:
    """quantize_static keyword arguments giving TensorRT-style QDQ (besides data and paths)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    if method not in PTQ_METHODS:
        raise ConfigError(f"unknown PTQ method {method!r}; choose one of {', '.join(PTQ_METHODS)}")
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "activation_type": QuantType.QInt8,
        "weight_type": QuantType.QInt8,
        "calibrate_method": calibrate,
        "extra_options": {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,  # int32 bias DQ is not TensorRT's int8 Q/DQ
            # Keep the logits in float: quantizing the classifier's output only adds rounding.
            "OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"],
        },
    }


def quantize_ptq(
    fp32_onnx: Path,
    out: Path,
    calib: np.ndarray,
    method: str = "minmax",
    *,
    allow_float: Collection[str] = (),
) -> Path:
    """Quantize `fp32_onnx` to `out` with calibration features `calib` (N, *feature_shape).

    ExportError if there is no calibration data, if quantization fails, or if the result breaks
    TensorRT's Q/DQ rules (`allow_float`: weighted nodes allowed to stay float, see `lint_qdq`).
    """
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = ptq_options(method)
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    if calib.ndim < 2 or len(calib) == 0:
        raise ExportError(
            f"int8 PTQ needs calibration windows; got an array of shape {calib.shape}"
        )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = (
                calib[i : i + CALIB_BATCH] for i in range(0, len(calib), CALIB_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    out = Path(out)
    prepared = out.with_name(out.stem + ".pre.onnx")
    log = io.StringIO()
    try:
        # ONNX Runtime prints calibration progress to stdout.
        with contextlib.redirect_stdout(log):
            quant_pre_process(str(fp32_onnx), str(prepared))
            quantize_static(str(prepared), str(out), Reader(), **options)
    except Exception as exc:  # onnxruntime raises plain Exception / RuntimeError / onnx errors
        raise ExportError(f"PTQ ({method}) of {fp32_onnx} failed: {exc}") from exc
    finally:
        prepared.unlink(missing_ok=True)
    require_clean(out, f"PTQ ({method}) model {out.name}", allow_float=allow_float)
    return out
