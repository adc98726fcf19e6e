"""The benchmark library: statistics, timing modes, a reference row, skipped backends."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from edgekd.errors import ConfigError
from edgekd.runtime.bench import (
    MIN_SAMPLES,
    environment,
    latency_stats,
    render_table,
    run_benchmark,
    time_calls,
)


def test_latency_stats_golden() -> None:
    s = latency_stats(np.array([4e-3, 1e-3, 3e-3, 2e-3]))
    assert (s["unit"], s["count"], s["min"], s["max"]) == ("ms", 4, 1.0, 4.0)
    assert s["mean"] == pytest.approx(2.5) and s["p50"] == pytest.approx(2.5)
    assert s["stdev"] == pytest.approx(math.sqrt(5 / 3))  # sample stdev of 1, 2, 3, 4
    assert s["p90"] == pytest.approx(3.7)  # linear interpolation: 3 + 0.7 * (4 - 3)
    assert s["values"] == [4.0, 1.0, 3.0, 2.0]


def test_time_calls_modes() -> None:
    calls = []
    out = time_calls(lambda: calls.append(1), warmup=3, iterations=7, duration_s=None)
    assert len(out) == 7 and len(calls) == 10
    slow = time_calls(lambda: time.sleep(0.002), warmup=0, iterations=None, duration_s=0.001)
    assert len(slow) == MIN_SAMPLES and slow.min() >= 0.002


def test_environment_record() -> None:
    env = environment(threads=2)
    assert env["threads"] == 2 and env["cores_logical"] >= 1 and env["cpu"]
    assert env["versions"]["numpy"] == np.__version__
    assert set(env["cuda"]) == {"cuda", "gpus", "cuda_version", "tensorrt", "error"}


def test_reference_row_and_skips(bundle_path: Path, cache_root: Path) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle_path / "model.fp32.onnx"),
                                providers=["CPUExecutionProvider"])
    calls = []

    def reference(features: np.ndarray) -> np.ndarray:
        calls.append(len(features))
        return sess.run(None, {"input": features})[0]

    report = run_benchmark(bundle_path, backends=["all"], precisions=["fp32", "fp16"],
                           batch_sizes=[1, 4], iterations=5, warmup=1, cache_dir=cache_root,
                           reference=reference, reference_name="direct-ort")
    names = [r["name"] for r in report["rows"]]
    assert names == ["openvino/fp32", "onnxruntime/fp32", "direct-ort"]
    ref = report["rows"][-1]
    assert ref["stream"] is None and ref["load_s"] is None and ref["backend"] == "reference"
    assert set(calls) >= {1, 4}  # timed at both batch sizes
    assert ref["accuracy"] == report["rows"][1]["accuracy"]  # same FP32 model as onnxruntime
    skipped = {(s["backend"], s.get("precision")) for s in report["skipped"]}
    assert ("tensorrt", None) in skipped or any(r["backend"] == "tensorrt" for r in report["rows"])
    assert ("openvino", "fp16") in skipped and ("onnxruntime", "fp16") in skipped
    console = Console(width=250, record=True)
    console.print(render_table(report))
    text = console.export_text()  # export clears the record
    assert "direct-ort" in text and "openvino/fp32" in text


def test_bad_settings(bundle_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch sizes must be >= 1"):
        run_benchmark(bundle_path, batch_sizes=[0])
    with pytest.raises(ConfigError, match="unknown precision 'int3'"):
        run_benchmark(bundle_path, precisions=["int3"])
