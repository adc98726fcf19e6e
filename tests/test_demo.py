"""`edgekd demo --quick`: the whole pipeline end to end on real HAR data, as CI runs it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def test_demo_quick_writes_report_and_plots(tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    result = run_cli(["demo", "--quick", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # The 1-thread benchmark must not leak into later trainings in this process.
    assert torch.get_num_threads() == threads
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"teacher", "student (CE only)", "student (distilled)"}
    names = {row["name"] for row in summary["bench"]}
    assert {"openvino/int8", "onnxruntime/int8", "openvino/fp32", "pytorch-eager/fp32"} <= names
    assert summary["stream"]["events"] > 0 and summary["stream"]["labelled_events"] > 0
    # Even one epoch on 600 windows is far above chance (1/12) on the streamed subject.
    assert summary["stream"]["agreement"] > 0.3
    report = (out / "report.md").read_text()
    for png in ("training.png", "confusion_int8.png", "latency.png", "stream.png"):
        assert (out / png).stat().st_size > 5_000
        assert f"({png})" in report
    assert "openvino/int8 batch-1 p50" in result.output
    # A second run reuses the finished runs and bundle instead of retraining.
    again = run_cli(["demo", "--quick", "--quiet", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["timings"]["train_s"] < 5
