"""`edgekd demo --quick`: the whole pipeline end to end on real HAR data, as CI runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

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
    # Both students: one config but the losses, stated in the report with the recipes and epochs.
    setup = summary["setup"]
    assert [r["recipe"] for r in setup["recipes"].values()] == ["ce", "default"]
    assert setup["shared"]["train"]["epochs"] == 1 and setup["shared"]["data"]["limit"] == 600
    assert setup["recipes"]["student (distilled)"]["classifier_loss"] == "logit_kd"
    assert "## Training setup" in report
    assert "Both students: `tcn_tiny` on `accel`, 1 epochs" in report
    assert "1 epochs, batch 64, lr 0.003, seed 0" in report
    # What else the distilled student's plan has, told from the two plans, not by hand.
    assert "plan differs from the CE student's in: loss 0.5 cross-entropy + 0.5 logit_kd" in report
    assert "unlabelled windows" in report and "optimizer steps" in report
    assert "| student (distilled) | `default` | logit_kd | none | 2.0 | 0.5 | 0.5 |" in report
    assert 'docs/results.md, "Distillation with the defaults' in report
    assert "students: same settings" in result.output and "; ce vs" in result.output
    # A second run reuses the finished runs and bundle instead of retraining.
    again = run_cli(["demo", "--quick", "--quiet", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["timings"]["train_s"] < 5

    # Without matplotlib the demo says so before any work and writes everything but the PNGs.
    for png in out.glob("*.png"):
        png.unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
        bare = run_cli(["demo", "--quick", "--out", str(out)])
    assert bare.exit_code == 0, bare.output
    note = "plots skipped: matplotlib is not installed (pip install 'edgekd[report]')"
    assert bare.output.splitlines()[0] == f"demo {note}: report.md and summary.json only"
    assert not list(out.glob("*.png"))
    assert json.loads((out / "summary.json").read_text())["plots_skipped"] == note
    report = (out / "report.md").read_text()
    assert f"No figures: {note}." in report and ".png)" not in report

    # A finished run made with other settings is not passed off as this demo's.
    config = out / "student-ce" / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    saved["train"]["epochs"] = 30
    config.write_text(yaml.safe_dump(saved))
    clash = run_cli(["demo", "--quick", "--quiet", "--out", str(out)])
    assert clash.exit_code == 2
    assert "holds a run with other settings (epochs 30, limit 600)" in clash.output


def test_student_setup_refuses_students_that_differ_beyond_the_losses(tmp_path: Path) -> None:
    from dataclasses import replace

    from edgekd.config import RunConfig, override, resolve_recipe, save_config
    from edgekd.demo import student_setup
    from edgekd.errors import ConfigError

    runs = {
        name: tmp_path / name for name in ("teacher", "student (CE only)", "student (distilled)")
    }
    base = override(RunConfig(), "train", epochs=3)
    for run in runs.values():
        run.mkdir()
    save_config(base, runs["teacher"] / "config.yaml")
    save_config(
        replace(base, distill=resolve_recipe("ce")), runs["student (CE only)"] / "config.yaml"
    )
    kd = replace(base, distill=resolve_recipe("default"))
    save_config(kd, runs["student (distilled)"] / "config.yaml")
    assert student_setup(runs)["recipes"]["student (CE only)"]["classifier_loss"] == "none"
    save_config(override(kd, "train", lr=0.1), runs["student (distilled)"] / "config.yaml")
    with pytest.raises(ConfigError, match="differ in train, not only in the distillation losses"):
        student_setup(runs)
