"""The export accuracy report: torch FP32 vs every exported artifact on every backend present.

Stored in the manifest under `accuracy` as `{key: {"accuracy", "macro_f1", "n"}}` (fractions).
Keys: `torch_fp32` (the reference), `fp32` (the FP32 ONNX on ONNX Runtime), then
`<precision>_<backend>` for each artifact the runtime loads, e.g. `fp32_openvino`,
`int8_onnxruntime`, `int8_openvino`, `int8_tensorrt`; `qat_fake_quant` is the QAT model in torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekd.metrics import classification_report

REFERENCE = "torch_fp32"
# Keys whose drop against the reference is held to --max-drop: the reduced-precision artifacts.
GUARDED_PREFIXES = ("int8_", "fp16_")


def score(pred: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, Any]:
    """{"accuracy", "macro_f1", "n"} of predicted class indices against labels."""
    return classification_report(np.asarray(y), np.asarray(pred), num_classes)


def drop_points(report: dict[str, dict[str, Any]], key: str) -> float:
    """Accuracy drop of `key` against torch FP32, in percentage points (positive = worse),
    rounded to 1e-6 so that a drop of exactly the limit is not over it by float error."""
    return round(100.0 * (report[REFERENCE]["accuracy"] - report[key]["accuracy"]), 6)


def over_limit(report: dict[str, dict[str, Any]], max_drop: float) -> list[str]:
    """Guarded keys that lose more than `max_drop` points of accuracy against torch FP32."""
    return [
        key
        for key in report
        if key.startswith(GUARDED_PREFIXES) and drop_points(report, key) > max_drop
    ]


def format_table(report: dict[str, dict[str, Any]], max_drop: float | None = None) -> str:
    """Plain-text table: one row per key with accuracy, macro-F1 (percent) and the drop."""
    rows = [("model / backend", "accuracy %", "macro-F1 %", "drop (pts)")]
    for key, m in report.items():
        drop = "" if key == REFERENCE else f"{drop_points(report, key):+.2f}"
        if (
            max_drop is not None
            and key.startswith(GUARDED_PREFIXES)
            and drop_points(report, key) > max_drop
        ):
            drop += " > limit"
        rows.append((key, f"{100 * m['accuracy']:.2f}", f"{100 * m['macro_f1']:.2f}", drop))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
