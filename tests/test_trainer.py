"""Teacher training and distillation on real HAR windows: metrics, determinism, resume, DDP,
faults."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgekd.checkpoint import MODEL_FILE, load_run, read_sidecar
from tests.conftest import STUDENT_ARGS, distill_kd, run_cli

NUM_HAR_CLASSES = 12


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_teacher_run_folder(teacher_run: Path) -> None:
    metrics = _metrics(teacher_run)
    for split in ("val", "test"):
        assert set(metrics[split]) >= {"accuracy", "macro_f1"}
        assert 0.0 <= metrics[split]["macro_f1"] <= metrics[split]["accuracy"] + 0.5
    # Twelve classes: chance is ~1/6 on HAR's imbalanced test split; 3 short epochs beat it easily.
    assert metrics["test"]["accuracy"] > 0.5
    assert len(json.loads((teacher_run / "history.json").read_text())) == 3
    sidecar = read_sidecar(teacher_run, "teacher")
    assert set(sidecar["specs"]) == {"accel", "gyro"}
    for name in ("config.yaml", "checkpoint.json", "model.safetensors", "train_state.safetensors"):
        assert (teacher_run / name).is_file()


def test_student_is_single_modality_and_keeps_the_last_epoch(student_run: Path) -> None:
    run = load_run(student_run, expect_role="student")
    assert run.sidecar["student_modality"] == "accel"
    assert list(run.sidecar["specs"]) == ["accel"]
    history = json.loads((student_run / "history.json").read_text())
    best = max(history, key=lambda h: h["val"]["accuracy"])
    metrics = _metrics(student_run)
    assert metrics["select"] == "last"
    assert metrics["selected_epoch"] == history[-1]["epoch"] == run.sidecar["epoch"]
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["val"]["accuracy"] == pytest.approx(history[-1]["val"]["accuracy"])
    assert history[0]["train"]["classifier"] > 0  # logit-KD term was active
    assert run.model(torch.zeros(2, 3, 128)).shape == (2, NUM_HAR_CLASSES)


def test_best_val_selection_keeps_the_most_accurate_epoch(
    teacher_run: Path, tmp_path: Path
) -> None:
    config = tmp_path / "select.yaml"
    config.write_text("train:\n  select: best_val\n")
    out = tmp_path / "best"
    args = ["distill", "--teacher", str(teacher_run), "--out", str(out), "--recipe", "kd"]
    result = run_cli([*args, "--config", str(config), *STUDENT_ARGS])
    assert result.exit_code == 0, result.output
    history = json.loads((out / "history.json").read_text())
    best = max(history, key=lambda h: h["val"]["accuracy"])
    metrics = _metrics(out)
    assert metrics["selected_epoch"] == metrics["best_epoch"] == best["epoch"]
    assert metrics["val"]["accuracy"] == pytest.approx(best["val"]["accuracy"])


def test_unknown_selection_is_refused() -> None:
    from edgekd.config import TrainConfig
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="train.select='best'"):
        TrainConfig(select="best")


def test_same_seed_same_metrics(teacher_run: Path, student_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    result = distill_kd(teacher_run, out)
    assert result.exit_code == 0, result.output
    assert _metrics(out)["test"] == _metrics(student_run)["test"]
    assert (out / MODEL_FILE).read_bytes() == (student_run / MODEL_FILE).read_bytes()


def saved_state(run: Path) -> dict:
    """The scalars (epoch, history, best ...) of a run folder's train_state.safetensors."""
    from safetensors import safe_open

    with safe_open(str(run / "train_state.safetensors"), framework="pt") as fh:
        return json.loads(fh.metadata()["edgekd"])["scalars"]


def test_sigkill_then_resume_matches_uninterrupted(
    teacher_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs = 5
    args = ["--teacher", str(teacher_run), "--recipe", "paper", "--epochs", str(epochs),
            "--limit", "1000", "--no-unlabelled", "--seed", "1", "--quiet"]  # fmt: skip
    reference = tmp_path / "reference"
    assert run_cli(["distill", "--out", str(reference), *args]).exit_code == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "edgekd", "distill", "--out", str(out), *args]
    proc = subprocess.Popen(
        cmd, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    history = out / "history.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if history.exists() and len(json.loads(history.read_text() or "[]")) >= 2:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    written = json.loads(history.read_text())  # per-epoch entries, each with its own seconds
    saved = saved_state(out)  # what --resume must start from (history.json may lag it by one)
    assert saved["epoch"] in (len(written), len(written) + 1)
    assert 2 <= saved["epoch"] < epochs

    from edgekd.data.pipeline import Loader

    trained: list[int] = []  # epochs the resumed process trains (0-based)
    epoch_batches = Loader.epoch

    def counted(self: Loader, epoch: int):  # noqa: ANN202 - the generator of Loader.epoch
        trained.append(epoch)
        return epoch_batches(self, epoch)

    monkeypatch.setattr(Loader, "epoch", counted)
    result = run_cli(["distill", "--out", str(out), "--resume", *args])
    assert result.exit_code == 0, result.output
    # Finished epochs were not trained again: the resumed process trained only the rest, and
    # the history of the finished ones is the one written before the kill (its timings too).
    assert trained == list(range(saved["epoch"], epochs)), trained
    resumed = json.loads(history.read_text())
    assert [h["epoch"] for h in resumed] == list(range(1, epochs + 1))
    assert resumed[: len(written)] == written
    assert resumed[: saved["epoch"]] == saved["history"]
    assert _metrics(out)["test"] == _metrics(reference)["test"]
    assert (out / MODEL_FILE).read_bytes() == (reference / MODEL_FILE).read_bytes()


def test_still_improving_is_the_best_epoch_in_the_last_tenth() -> None:
    from edgekd.distill.loop import still_improving

    def flagged(epochs: int) -> list[int]:
        return [best for best in range(1, epochs + 1) if still_improving(best, epochs)]

    assert flagged(1) == [1] and flagged(3) == [3] and flagged(10) == [10]  # at least the last
    assert flagged(11) == [10, 11]  # ceil(1.1) = 2 epochs
    assert flagged(15) == [14, 15] and flagged(20) == [19, 20]
    assert flagged(100) == list(range(91, 101))
    assert not still_improving(-1, 5)  # no epoch scored yet


def test_metrics_say_whether_training_was_still_improving(
    teacher_run: Path, student_run: Path
) -> None:
    from edgekd.distill.loop import still_improving

    for run in (teacher_run, student_run):
        metrics = _metrics(run)
        epochs = metrics["train"]["epochs"]
        assert epochs == 3
        assert metrics["still_improving"] is still_improving(metrics["best_epoch"], epochs)
        assert metrics["still_improving"] is (metrics["best_epoch"] == 3)


def test_ddp_two_processes(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    cmd = [
        torchrun, "--standalone", "--nproc-per-node", "2", "-m", "edgekd", "distill",
        "--teacher", str(teacher_run), "--out", str(out), "--recipe", "kd",
        "--epochs", "2", "--limit", "800", "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _metrics(out)
    assert metrics["train"]["world_size"] == 2
    assert metrics["test"]["accuracy"] > 0.3
    assert load_run(out).sidecar["role"] == "student"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["teacher", "--data", "no-such-data"], "no-such-data"),
        (["teacher", "--data", "har", "--limit", "0"], "--limit"),
        (["distill", "--teacher", "{missing}"], "not found"),
        (["distill", "--teacher", "{student}"], "expected a teacher run"),
        (
            ["distill", "--teacher", "{teacher}", "--modality", "magnetometer"],
            "not among the teacher's",
        ),
        (["distill", "--teacher", "{teacher}", "--feature-loss", "l1"], "feature_loss"),
    ],
)
def test_bad_input_exits_nonzero_and_leaves_nothing(
    args: list[str], message: str, teacher_run: Path, student_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    filled = [
        a.format(missing=tmp_path / "nope", student=student_run, teacher=teacher_run) for a in args
    ]
    result = run_cli([*filled, "--out", str(out), "--epochs", "1", "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_refuses_to_overwrite_a_run(teacher_run: Path, student_run: Path) -> None:
    result = run_cli(
        [
            "distill",
            "--teacher",
            str(teacher_run),
            "--out",
            str(student_run),
            "--epochs",
            "1",
            "--quiet",
        ]
    )
    assert result.exit_code == 2
    assert "already holds a run" in result.output


def test_audio_student_from_audio_image_teacher(tmp_path: Path) -> None:
    from tests.toy_manifest import make_toy_manifest

    manifest = make_toy_manifest(tmp_path / "data", n_per_class=12, classes=3, seed=0)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    fast = ["--epochs", "4", "--batch-size", "16", "--quiet"]
    result = run_cli(["teacher", "--data", str(manifest), "--out", str(teacher), *fast])
    assert result.exit_code == 0, result.output
    assert set(read_sidecar(teacher)["specs"]) == {"voice", "face"}
    result = run_cli(
        ["distill", "--teacher", str(teacher), "--out", str(student), "--recipe", "paper", *fast]
    )
    assert result.exit_code == 0, result.output
    run = load_run(student)
    assert run.sidecar["student_modality"] == "voice"
    assert run.sidecar["arch"] == "dscnn_audio"
    # Three tone classes are separable from the log-mel alone; chance is 1/3.
    assert _metrics(student)["test"]["accuracy"] >= 0.8


def test_teacher_ensemble_run(teacher_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "teacher-wide"
    same_data = ["--limit", "1500", "--seed", "0", "--epochs", "1", "--quiet"]
    args = ["teacher", "--data", "har", "--out", str(other), *same_data]
    assert run_cli([*args, "--arch-args", '{"width": 32}']).exit_code == 0
    ens = tmp_path / "ensemble"
    result = run_cli(["ensemble", str(teacher_run), str(other), "--out", str(ens)])
    assert result.exit_code == 0, result.output
    run = load_run(ens, expect_role="teacher")
    members = [load_run(teacher_run).model, load_run(other).model]
    x = {m: torch.randn(4, *shape) for m, shape in run.sidecar["arch_args"]["input_shapes"].items()}
    with torch.no_grad():
        expected = torch.stack([m(x) for m in members]).mean(0)
        torch.testing.assert_close(run.model(x), expected, rtol=0, atol=1e-5)
    assert 0.5 < _metrics(ens)["test"]["accuracy"] <= 1.0

    student = tmp_path / "student"
    fast = ["--epochs", "1", "--limit", "1500", "--quiet"]
    result = run_cli(["distill", "--teacher", str(ens), "--out", str(student), *fast])
    assert result.exit_code == 0, result.output

    other_data = tmp_path / "teacher-other-data"
    args = ["teacher", "--data", "har", "--out", str(other_data), "--limit", "300"]
    assert run_cli([*args, "--epochs", "1", "--quiet"]).exit_code == 0
    bad = run_cli(["ensemble", str(teacher_run), str(other_data), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "differ in 'specs'" in bad.output
    assert not (tmp_path / "x").exists()


def test_recipe_is_beneath_the_config_file_and_set_reaches_fields(
    teacher_run: Path, tmp_path: Path
) -> None:
    import yaml

    config = tmp_path / "tau.yaml"
    config.write_text("distill:\n  tau: 3.0\n")
    out = tmp_path / "layered"
    args = ["distill", "--teacher", str(teacher_run), "--out", str(out), "--recipe", "kd",
            "--config", str(config), "--set", "train.weight_decay=0", "--set", "data.limit=300",
            "--epochs", "1", "--quiet"]  # fmt: skip
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["distill"]["tau"] == 3.0  # the file edits the recipe ...
    assert (saved["distill"]["lambda_task"], saved["distill"]["lambda_classifier"]) == (1.0, 1.0)
    assert saved["train"]["weight_decay"] == 0.0 and saved["data"]["limit"] == 300
    plan = json.loads((out / "plan.json").read_text())
    assert plan["loss"][1]["name"] == "logit_kd(tau=3)"

    bad = run_cli([*args[:3], "--out", str(tmp_path / "bad"), "--set", "train.weigth_decay=0"])
    assert bad.exit_code == 2 and "did you mean weight_decay?" in bad.output
    assert not (tmp_path / "bad").exists()
