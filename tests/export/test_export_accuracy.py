"""The accuracy report: drops in points against torch FP32, the guard, the table."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.export.accuracy import drop_points, format_table, over_limit, score

REPORT = {
    "torch_fp32": {"accuracy": 0.875, "macro_f1": 0.80, "n": 8},
    "fp32": {"accuracy": 0.875, "macro_f1": 0.80, "n": 8},
    "int8_onnxruntime": {"accuracy": 0.865, "macro_f1": 0.79, "n": 8},
    "int8_openvino": {"accuracy": 0.85, "macro_f1": 0.78, "n": 8},
    "qat_fake_quant": {"accuracy": 0.80, "macro_f1": 0.70, "n": 8},
}


def test_score_by_hand() -> None:
    # y = [0, 0, 1, 1], pred = [0, 1, 1, 1]: 3/4 right; F1 class 0 = 2*1/(2+1), class 1 = 2*2/(2+3)
    s = score(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), 2)
    assert s["accuracy"] == 0.75 and s["n"] == 4
    assert s["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_drop_in_points_and_the_guard() -> None:
    assert drop_points(REPORT, "int8_onnxruntime") == pytest.approx(1.0)
    assert drop_points(REPORT, "int8_openvino") == pytest.approx(2.5)
    # Only int8_/fp16_ artifacts are guarded; the QAT fake-quant row is information only.
    assert over_limit(REPORT, 1.0) == ["int8_openvino"]
    assert over_limit(REPORT, 2.5) == []
    assert over_limit(REPORT, 0.5) == ["int8_onnxruntime", "int8_openvino"]


def test_table_rows_and_limit_marks() -> None:
    lines = format_table(REPORT, max_drop=1.0).splitlines()
    assert lines[0].split() == [
        "model",
        "/",
        "backend",
        "accuracy",
        "%",
        "macro-F1",
        "%",
        "drop",
        "(pts)",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["torch_fp32"] == ["87.50", "80.00"]
    assert rows["int8_onnxruntime"] == ["86.50", "79.00", "+1.00"]
    assert rows["int8_openvino"] == ["85.00", "78.00", "+2.50", ">", "limit"]
