"""The ablation: statistics by hand, CV folds, the restricted-teacher control, the CLI."""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from edgekd.checkpoint import load_run
from edgekd.config import DistillConfig
from edgekd.data.dataset import PairedDataset, Split
from edgekd.distill.ablate.jobs import Job, _Tracker
from edgekd.distill.ablate.rows import augmentation_off, run_config, run_names
from edgekd.distill.ablate.stats import gap_closed, paired_interval, summarize, t_quantile_975
from edgekd.distill.ablate.teachers import teacher_modality_dropout
from edgekd.distill.cv import fold_dataset, fold_subjects
from edgekd.errors import ConfigError
from tests.conftest import run_cli

TINY = ["--epochs", "1", "--limit", "300", "--batch-size", "64"]


# --- statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "expected"),
    # Published two-sided 95% t quantiles (e.g. NIST/SEMATECH table).
    [
        (1, 12.706),
        (2, 4.303),
        (4, 2.776),
        (9, 2.262),
        (30, 2.042),
        (40, 2.021),
        (60, 2.000),
        (120, 1.980),
    ],  # fmt: skip
)
def test_t_quantiles(df: int, expected: float) -> None:
    assert t_quantile_975(df) == pytest.approx(expected, abs=1.5e-3)


def test_t_quantile_rejects_zero_df() -> None:
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_and_standard_error_by_hand() -> None:
    # values 1..4: mean 2.5, sample variance 5/3, s.e. sqrt(5/3 / 4)
    stats = summarize([1.0, 2.0, 3.0, 4.0])
    assert stats["mean"] == pytest.approx(2.5)
    assert stats["se"] == pytest.approx(math.sqrt(5 / 12))
    assert summarize([7.0]) == {"mean": 7.0, "se": None, "n": 1}


def test_paired_interval_by_hand() -> None:
    kd = {0: 85.0, 1: 86.0, 2: 84.0, 7: 99.0}  # seed 7 has no CE partner: ignored
    ce = {0: 84.0, 1: 84.5, 2: 83.5}
    # differences 1.0, 1.5, 0.5: mean 1.0, s.d. 0.5, s.e. 0.5/sqrt(3), t_{0.975,2} = 4.303
    got = paired_interval(kd, ce)
    half = 4.303 * 0.5 / math.sqrt(3)
    assert got["n"] == 3
    assert got["mean"] == pytest.approx(1.0)
    assert (got["lo"], got["hi"]) == (pytest.approx(1.0 - half), pytest.approx(1.0 + half))
    assert paired_interval({0: 1.0}, {1: 1.0}) is None
    assert paired_interval({0: 2.0}, {0: 1.0}) == {"mean": 1.0, "lo": None, "hi": None, "n": 1}


def test_gap_closed_share() -> None:
    assert gap_closed(86.0, 84.0, 90.0) == pytest.approx(1 / 3)
    assert gap_closed(83.0, 84.0, 90.0) == pytest.approx(-1 / 6)
    assert gap_closed(86.0, 84.0, 84.0) is None  # no gap to close


def test_run_names() -> None:
    assert run_config("logit_kd_restricted")[1].teacher_view == "student"
    assert run_config("logit_kd")[1].teacher_view == "all"
    paper = run_config("paper")[1]
    assert (paper.feature_loss, paper.classifier_loss, paper.quality) == (
        "soft_margin", "soft_teacher_head", "teacher_confidence",
    )  # fmt: skip
    assert run_config("paper_corrupt")[1].teacher_corrupt > 0
    assert not run_config("ce")[1].uses_teacher
    for bad in ("bogus", "ce_restricted", "_restricted", "ce_unimodal", "ce_plain_unimodal"):
        with pytest.raises(ConfigError, match="unknown run"):
            run_config(bad)
    # The new loss rows are their recipes; controls exist for every KD run.
    for name, loss in (("dist", "dist"), ("dkd", "dkd"), ("bkd", "bkd"), ("kd_std", "logit_kd")):
        assert run_config(name)[1].classifier_loss == loss
    assert run_config("kd_std")[1].logit_standardize
    assert run_config("dkd_unimodal")[1] == run_config("dkd")[1]
    assert "student's modality only" in run_config("dkd_unimodal")[0]
    assert run_config("bkd_restricted")[1].teacher_view == "student"
    assert run_config("ce_plain")[1] == run_config("ce")[1]
    assert {"ce_plain", "default_unimodal", "paper_restricted"} <= set(run_names())


def test_shipped_default_recipe_is_the_run_config_default(tmp_path: Path) -> None:
    from edgekd.config import RECIPES, RunConfig, load_config, resolve_recipe

    default = resolve_recipe("default")
    assert RunConfig().distill == default
    assert (default.classifier_loss, default.lambda_task + default.lambda_classifier) == (
        "logit_kd", pytest.approx(1.0),
    )  # fmt: skip
    assert (RECIPES["kd"].lambda_task, RECIPES["kd"].lambda_classifier) == (1.0, 1.0)
    path = tmp_path / "cfg.yaml"
    path.write_text("distill:\n  tau: 3.0\n")  # a YAML section edits the default recipe
    cfg = load_config(path)
    assert cfg.distill == replace(default, tau=3.0)


def test_teacher_corrupt_is_validated() -> None:
    with pytest.raises(ConfigError, match="teacher_corrupt"):
        DistillConfig(teacher_corrupt=1.5)


def test_ce_plain_turns_augmentation_off() -> None:
    from edgekd.config import AugmentConfig, RunConfig

    cfg = RunConfig(augment=AugmentConfig(mix="mixup"))
    off = augmentation_off(cfg)
    assert cfg.augment.active and not off.augment.active
    assert (off.augment.policy, off.augment.mix) == ("none", "none")
    assert off.distill == cfg.distill and off.train == cfg.train


def test_teacher_modality_dropout_from_the_sidecar(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text(json.dumps({"arch_args": {"modality_dropout": 0.3}}))
    assert teacher_modality_dropout(tmp_path) == 0.3
    # An ensemble is as robust as its least robust member.
    members = [{"arch_args": {"modality_dropout": 0.3}}, {"arch_args": {}}]
    (tmp_path / "checkpoint.json").write_text(json.dumps({"arch_args": {"members": members}}))
    assert teacher_modality_dropout(tmp_path) == 0.0
    with pytest.raises(ConfigError, match="no checkpoint.json"):
        teacher_modality_dropout(tmp_path / "missing")


def _job(run: str, epochs: int, seed: int = 0) -> Job:
    from edgekd.config import RunConfig, override

    cfg = override(RunConfig(), "train", epochs=epochs)
    return Job(run, seed, None, cfg, Path("t"), Path("o"), 1)


def test_durations() -> None:
    from edgekd.distill.ablate.jobs import duration

    assert [duration(s) for s in (12, 89, 3000, 7200)] == ["12 s", "1 min", "50 min", "2.0 h"]


def test_progress_lines_name_run_seed_epoch_and_eta() -> None:
    # Two 10-epoch jobs on 2 workers. After job 0's epoch 1 at 3 s/epoch: its own eta is
    # 9 * 3 = 27 s; everything left is (9 + 10) epochs * 3 s / 2 workers = 28.5 s.
    tracker = _Tracker([_job("ce", 10), _job("dkd", 10, seed=1)], workers=2, epoch_s=None)
    assert tracker.event("start", 1, 0, 0.0) == "[0/2 done] dkd seed 1 final: started"
    line = tracker.event("epoch", 0, 1, 3.0)
    assert line == "[0/2 done] ce seed 0 final: epoch 1/10, 3.0 s/epoch, run eta 27 s, all eta 28 s"
    # Job 1 resumes at epoch 4 and runs at 5 s/epoch: the estimate averages (3 + 5) / 2 = 4 s;
    # left (9 + 5) * 4 / 2 = 28 s; job 1's own eta 5 * 5 = 25 s.
    assert tracker.event("start", 1, 4, 0.0).endswith("started (resuming after epoch 4)")
    assert tracker.event("epoch", 1, 5, 5.0).endswith("run eta 25 s, all eta 28 s")
    metrics = {"val": {"accuracy": 0.9}, "test": {"accuracy": 0.8, "macro_f1": 0.5}}
    assert tracker.finish(0, metrics) == (
        "[1/2 done] ce seed 0 final: finished, val acc 90.00  test acc 80.00 f1 50.00"
    )


# --- cross-validation folds ---------------------------------------------------------------


def _toy_dataset() -> PairedDataset:
    subjects = np.array(["3", "1", "2", "1", "5", "2"])
    x = {"a": np.arange(6, dtype=np.float32)[:, None]}
    train = Split(x=x, y=np.arange(6) % 2, subject=subjects)
    one = {"a": np.zeros((1, 1), np.float32)}
    test = Split(x=one, y=np.zeros(1, np.int64), subject=np.array(["9"]))
    return PairedDataset(
        name="toy", source="toy", labels=["x", "y"], specs={}, default_student="a",
        splits={"train": train, "val": test, "test": test, "unlabelled": test},
    )  # fmt: skip


def test_fold_subjects_round_robin_over_sorted_subjects() -> None:
    assert fold_subjects(np.array(["3", "1", "2", "1", "5"]), 2) == [["1", "3"], ["2", "5"]]
    with pytest.raises(ConfigError, match="at least 3 training subjects"):
        fold_subjects(np.array(["1", "2"]), 3)
    with pytest.raises(ConfigError, match="at least 2"):
        fold_subjects(np.array(["1", "2"]), 1)


def test_fold_dataset_holds_out_subjects_and_keeps_test() -> None:
    ds = _toy_dataset()
    fold = fold_dataset(ds, 1, 2)  # subjects 2 and 5
    assert sorted(fold.splits["val"].subject) == ["2", "2", "5"]
    assert sorted(fold.splits["train"].subject) == ["1", "1", "3"]
    assert fold.splits["val"].x["a"][:, 0].tolist() == [2.0, 4.0, 5.0]
    assert fold.splits["test"] is ds.splits["test"]
    with pytest.raises(ConfigError, match="fold index"):
        fold_dataset(ds, 2, 2)


# --- the restricted-teacher control and corrupted teacher inputs ---------------------------


class _Zeros(nn.Module):
    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.out_dim)


def test_restricted_teacher_zeroes_the_other_modality(teacher_run: Path) -> None:
    from edgekd.distill.teacher_outputs import teacher_forward as _teacher_outputs

    teacher = load_run(teacher_run, expect_role="teacher").model
    torch.manual_seed(0)
    x = {"accel": torch.randn(40, 3, 128), "gyro": torch.randn(40, 3, 128)}
    fused_logits, _ = _teacher_outputs(teacher, x, ())
    logits, emb = _teacher_outputs(teacher, x, ("gyro",))
    assert not torch.allclose(logits, fused_logits, atol=1e-3)
    # The same teacher whose gyroscope branch outputs zeros for every window.
    blind = copy.deepcopy(teacher)
    blind.encoders["gyro"] = _Zeros(teacher.encoders["gyro"].out_dim)
    blind_logits, blind_emb = _teacher_outputs(blind, x, ())
    torch.testing.assert_close(logits, blind_logits)
    torch.testing.assert_close(emb, blind_emb)
    # ...and the gyroscope's values no longer matter at all.
    other = {"accel": x["accel"], "gyro": torch.randn(40, 3, 128)}
    torch.testing.assert_close(_teacher_outputs(teacher, other, ("gyro",))[0], logits)


def test_corrupt_replaces_a_share_of_teacher_side_windows() -> None:
    from edgekd.distill.teacher_outputs import corrupt as _corrupt

    x = {"accel": torch.ones(20, 3, 8), "gyro": torch.ones(20, 3, 8)}
    _corrupt(x, "accel", 0.25, seed=3)
    changed = (x["gyro"] != 1).flatten(1).all(dim=1)
    assert int(changed.sum()) == 5  # round(0.25 * 20) whole windows, every value noise
    assert bool((x["accel"] == 1).all())
    again = {"accel": torch.ones(20, 3, 8), "gyro": torch.ones(20, 3, 8)}
    _corrupt(again, "accel", 0.25, seed=3)
    torch.testing.assert_close(again["gyro"], x["gyro"])  # seeded


# --- CLI ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_end_to_end_and_resume(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "abl"
    args = ["ablate", "--teacher", str(teacher_run), "--out", str(out), "--runs", "ce,logit_kd",
            "--seeds", "2", "--jobs", "2", *TINY]  # fmt: skip
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ablate.json").read_text())
    assert list(report["runs"]) == ["ce", "logit_kd"]
    for name in ("ce", "logit_kd"):
        assert sorted(report["runs"][name]["per_seed"]) == ["0", "1"]
        for seed in (0, 1):
            run = out / "runs" / name / f"seed{seed}" / "final"
            metrics = json.loads((run / "metrics.json").read_text())
            got = report["runs"][name]["per_seed"][str(seed)]["test"]["accuracy"]
            assert got == pytest.approx(100 * metrics["test"]["accuracy"])
    gain = report["runs"]["logit_kd"]["gain"]["accuracy"]
    per = report["runs"]
    diffs = [
        per["logit_kd"]["per_seed"][s]["test"]["accuracy"]
        - per["ce"]["per_seed"][s]["test"]["accuracy"]
        for s in ("0", "1")
    ]
    assert gain["mean"] == pytest.approx(sum(diffs) / 2)
    assert gain["lo"] <= gain["mean"] <= gain["hi"]
    assert (out / "ablate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| logit_kd | 2 |" in result.output

    # Resume: a finished run is reused as is (a planted value must come back), nothing retrains.
    planted = out / "runs" / "ce" / "seed1" / "final" / "metrics.json"
    metrics = json.loads(planted.read_text())
    metrics["test"]["accuracy"] = 0.5
    planted.write_text(json.dumps(metrics))
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/final/model.safetensors")}
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    again = json.loads((out / "ablate.json").read_text())
    assert again["runs"]["ce"]["per_seed"]["1"]["test"]["accuracy"] == pytest.approx(50.0)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # A run killed after its last epoch but before metrics.json continues from its train state.
    killed = out / "runs" / "logit_kd" / "seed0" / "final" / "metrics.json"
    before = json.loads(killed.read_text())
    killed.unlink()
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    assert json.loads(killed.read_text())["test"] == before["test"]

    # Without matplotlib: said before any run starts, ablate.json written, no ablate.png.
    (out / "ablate.png").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
        result = run_cli(args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "plots skipped: matplotlib is not installed (pip install 'edgekd[report]'): "
        "ablate.json only, no ablate.png"
    )
    assert json.loads((out / "ablate.json").read_text())["runs"] == again["runs"]
    assert not (out / "ablate.png").exists()

    # Other settings in the same folder are refused rather than mixed in.
    result = run_cli([*args[:-6], "--epochs", "2", "--limit", "300", "--batch-size", "64"])
    assert result.exit_code == 2
    assert "other settings" in result.output


@pytest.mark.slow
def test_cli_folds_score_by_cross_validation(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    result = run_cli(["ablate", "--teacher", str(teacher_run), "--out", str(out), "--runs", "ce",
                      "--seeds", "1", "--folds", "2", *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ablate.json").read_text())
    assert report["selection"] == "cv"
    seed0 = out / "runs" / "ce" / "seed0"
    folds = [json.loads((seed0 / f"fold{i}of2" / "metrics.json").read_text()) for i in (0, 1)]
    expected = 100 * (folds[0]["val"]["accuracy"] + folds[1]["val"]["accuracy"]) / 2
    assert report["runs"]["ce"]["cv"]["accuracy"]["mean"] == pytest.approx(expected)
    sidecar = json.loads((seed0 / "fold1of2" / "checkpoint.json").read_text())
    assert sidecar["fold"] == [1, 2]


@pytest.mark.slow
def test_two_run_ablate_on_a_local_ray_instance(
    teacher_run: Path, tmp_path: Path, local_ray: Any
) -> None:
    out = tmp_path / "ray"
    args = ["--runs", "ce,default", "--seeds", "1", "--jobs", "2", "--executor", "ray", *TINY]
    result = run_cli(["ablate", "--teacher", str(teacher_run), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    assert local_ray.is_initialized()  # ablate used the running instance and left it running
    # progress read from the run folders the Ray tasks wrote
    for name in ("ce", "default"):
        assert re.search(rf"\] {name} seed 0 final: epoch 1/1, ", result.output), result.output
    assert re.search(r"^\[2/2 done\] \w+ seed 0 final: finished", result.output, re.M)
    assert "| ce | 1 |" in result.output and "| default | 1 |" in result.output
    report = json.loads((out / "ablate.json").read_text())
    for name in ("ce", "default"):
        metrics = json.loads((out / "runs" / name / "seed0" / "final" / "metrics.json").read_text())
        got = report["runs"][name]["per_seed"]["0"]["test"]["accuracy"]
        assert got == pytest.approx(100 * metrics["test"]["accuracy"])


def _long_job(teacher: Path, out: Path, seed: int = 0) -> Job:
    """A student job far longer than any test waits for: it only ends by being stopped."""
    from edgekd.config import RunConfig, override

    cfg = override(override(RunConfig(), "train", epochs=500, batch_size=64), "data", limit=300)
    return Job("ce", seed, None, cfg, teacher, out, 1)


@pytest.mark.slow
def test_a_failing_job_stops_the_running_ones(teacher_run: Path, tmp_path: Path) -> None:
    import multiprocessing

    from edgekd.distill.ablate.jobs import JobFailed, run_jobs
    from edgekd.executor import make_executor

    before = set(multiprocessing.active_children())
    long = _long_job(teacher_run, tmp_path / "long")
    bad = replace(long, seed=1, teacher=tmp_path / "no-teacher", out=tmp_path / "bad")
    lines: list[str] = []
    with closing(make_executor("local", workers=2)) as ex, pytest.raises(JobFailed) as failed:
        run_jobs([long, bad], ex, 2, lines.append)
    message = str(failed.value)
    assert message.startswith("ce seed 1 final failed (ConfigError: "), message
    assert "no-teacher" in message and "stopped 1 other running job;" in message
    assert "[0/2 done] ce seed 0 final: started" in lines
    assert not any("finished" in line for line in lines)
    assert set(multiprocessing.active_children()) <= before  # the long job's process is gone
    assert not (long.out / "metrics.json").exists()


def test_keep_going_records_a_failed_job_and_finishes_the_others(
    teacher_run: Path, tmp_path: Path
) -> None:
    from edgekd.config import override
    from edgekd.distill.ablate.jobs import run_jobs
    from edgekd.executor import make_executor

    long = _long_job(teacher_run, tmp_path / "good")
    good = replace(long, cfg=override(long.cfg, "train", epochs=1))
    bad = replace(good, seed=1, teacher=tmp_path / "no-teacher", out=tmp_path / "bad")
    lines: list[str] = []
    with closing(make_executor("local", workers=2)) as ex:
        results = run_jobs([bad, good], ex, 2, lines.append, keep_going=True, show_test=False)
    assert isinstance(results[0], str) and results[0].startswith("ConfigError: ")
    assert "no-teacher" in results[0]
    assert results[1] == json.loads((good.out / "metrics.json").read_text())
    failed = next(line for line in lines if "FAILED" in line)
    assert failed.startswith("[") and "ce seed 1 final: FAILED (ConfigError: " in failed
    assert failed.endswith("the others go on")
    done = next(line for line in lines if "finished" in line)
    assert "] ce seed 0 final: finished, val acc " in done
    assert not any("test acc" in line for line in lines)  # test stays out of the log


@pytest.mark.slow
def test_an_interrupted_ablation_leaves_no_training_process(
    teacher_run: Path, tmp_path: Path
) -> None:
    import multiprocessing

    from edgekd.checkpoint import STATE_FILE
    from edgekd.distill.ablate.jobs import run_jobs
    from edgekd.executor import make_executor

    before = set(multiprocessing.active_children())
    job = _long_job(teacher_run, tmp_path / "long")

    def log(line: str) -> None:  # Ctrl-C once the job has finished an epoch
        if ": epoch " in line:
            raise KeyboardInterrupt

    with closing(make_executor("local", workers=1)) as ex, pytest.raises(KeyboardInterrupt):
        run_jobs([job], ex, 1, log)
    assert set(multiprocessing.active_children()) <= before
    # stopped after an epoch: its train state stays, for the next run to continue from
    assert (job.out / STATE_FILE).is_file() and not (job.out / "metrics.json").exists()


def test_the_executor_does_not_bind_a_resume(tmp_path: Path) -> None:
    from edgekd.distill.ablate.core import AblationSpec, _settings

    spec = AblationSpec(teacher=tmp_path / "t", out=tmp_path)
    on_ray = replace(spec, executor="ray", address="head:6379")
    assert _settings(on_ray, ["ce"]) == _settings(spec, ["ce"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--runs", "ce,bogus"], "unknown run 'bogus'"),
     (["--seeds", "0"], "--seeds must be at least 1"),
     (["--jobs", "0"], "--jobs must be at least 1"),
     (["--threads", "0"], "--threads must be at least 1"),
     (["--runs", "ce,logit_kd_restricted"], "trained without modality dropout"),
     (["--seeds", "2", "--teacher-seeds", "0"], "give 2 teacher seeds (one per --seeds), got 1"),
     (["--seeds", "2", "--teacher-seeds", "0,x"], "--teacher-seeds must be comma-separated"),
     (["--seeds", "2", "--teacher-seeds", "1,1"], "--teacher-seeds repeats a seed"),
     (["--executor", "dask"], "--executor 'dask' is not one of local, ray"),
     (["--address", "head:6379"], "--address names a Ray cluster; use it with --executor ray")],
)  # fmt: skip
def test_cli_bad_input(teacher_run: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    out = tmp_path / "bad"
    result = run_cli(["ablate", "--teacher", str(teacher_run), "--out", str(out), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert not (out / "runs").exists()


def test_cli_unimodal_teacher_must_be_of_the_student_modality(
    teacher_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bad"
    result = run_cli(["ablate", "--teacher", str(teacher_run), "--out", str(out), "--runs",
                      "ce,logit_kd_unimodal", "--unimodal-teacher", str(teacher_run)])  # fmt: skip
    assert result.exit_code == 2
    assert "teacher of the student's modality 'accel' alone" in result.output
    assert "trained on accel, gyro" in result.output
    assert not out.exists()


def _unimodal_teacher(teacher_run: Path, out: Path) -> Path:
    """A teacher run folder of the accelerometer alone: the fused teacher's architecture built on
    one modality (untrained weights: the control's plumbing is under test, not its accuracy)."""
    from edgekd.checkpoint import save_model
    from edgekd.modalities import ModalitySpec
    from edgekd.models import create_teacher

    side = load_run(teacher_run, expect_role="teacher").sidecar
    torch.manual_seed(0)
    accel = {"accel": ModalitySpec.from_dict(side["specs"]["accel"])}
    model = create_teacher(side["arch"], accel, len(side["labels"]))
    keep = {k: v for k, v in side.items() if k not in ("weights_sha256", "edgekd_version")}
    save_model(
        out,
        model,
        {**keep, "arch_args": model.arch_args, "specs": {"accel": side["specs"]["accel"]}},
    )
    for name in ("config.yaml", "metrics.json"):
        (out / name).write_bytes((teacher_run / name).read_bytes())
    return out


@pytest.mark.slow
def test_cli_controls_teacher_seeds_and_progress(teacher_run: Path, tmp_path: Path) -> None:
    unimodal = _unimodal_teacher(teacher_run, tmp_path / "unimodal")
    out = tmp_path / "abl"
    runs = "ce,logit_kd,logit_kd_restricted,logit_kd_unimodal"
    result = run_cli(["ablate", "--teacher", str(teacher_run), "--out", str(out), "--runs", runs,
                      "--seeds", "2", "--teacher-seeds", "0,1", "--allow-ood-restricted",
                      "--unimodal-teacher", str(unimodal), "--threads", "1", *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    # The plan comes first, then per-run progress from the jobs.
    lines = result.output.splitlines()
    assert lines[0].startswith(
        "ablation: 4 runs (ce, logit_kd, logit_kd_restricted, logit_kd_unimodal) x 2 seeds = "
        "8 trainings + 2 teacher trainings; 0 already finished; "
        "1 job x 1 thread (budget 1 from --threads)"
    )
    assert any("teacher_fused seed 1 training: epoch 3/3" in line for line in lines)
    assert any("logit_kd_unimodal seed 1 final: epoch 1/1" in line for line in lines)
    assert any(line.startswith("[8/8 done] ") and "finished" in line for line in lines)

    # Student seed i learns from teacher seed i; the unimodal runs from the unimodal teacher.
    def teacher_of(run: str, seed: int) -> str:
        side = json.loads(
            (out / "runs" / run / f"seed{seed}" / "final" / "checkpoint.json").read_text()
        )
        return side["teacher_dir"]

    for seed in (0, 1):
        fused = str((out / "teachers" / "fused" / f"seed{seed}").resolve())
        assert teacher_of("logit_kd", seed) == fused
        assert teacher_of("logit_kd_restricted", seed) == fused
        assert teacher_of("logit_kd_unimodal", seed) == str(unimodal.resolve())
        config = yaml.safe_load(
            (out / "teachers" / "fused" / f"seed{seed}" / "config.yaml").read_text()
        )
        assert config["train"]["seed"] == seed
        assert config["train"]["epochs"] == 3  # the teacher's own config, not the students'
    report = json.loads((out / "ablate.json").read_text())
    assert report["teacher"]["n"] == 2 and report["teacher_seeds"] == [0, 1]
    teachers = [json.loads((out / "teachers" / "fused" / f"seed{s}" / "metrics.json").read_text())
                for s in (0, 1)]  # fmt: skip
    mean = 100 * sum(t["test"]["accuracy"] for t in teachers) / 2
    assert report["teacher"]["test"]["accuracy"] == pytest.approx(mean)
    assert report["unimodal_teacher"]["n"] == 1
    assert report["runs"]["logit_kd_restricted"]["ood_teacher"] is True
    assert "ood_teacher" not in report["runs"]["logit_kd_unimodal"]
    cross = report["cross_modal"]["logit_kd"]
    per = report["runs"]
    for kind, control in (("restricted", "logit_kd_restricted"), ("unimodal", "logit_kd_unimodal")):
        diffs = [per["logit_kd"]["per_seed"][s]["test"]["accuracy"]
                 - per[control]["per_seed"][s]["test"]["accuracy"] for s in ("0", "1")]  # fmt: skip
        assert cross[kind]["gain"]["accuracy"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert "| logit_kd_restricted (OOD teacher) | 2 |" in result.output
    assert "OOD teacher: the teacher was trained without modality dropout" in result.output
    assert "fused teacher - unimodal teacher" in result.output
    assert "| teacher (student's modality only) |" in result.output


def test_cli_rejects_a_folder_that_is_not_a_teacher(tmp_path: Path) -> None:
    result = run_cli(["ablate", "--teacher", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "not a finished teacher run" in result.output


def test_settings_of_an_older_ablation_still_match(tmp_path: Path) -> None:
    from edgekd.checkpoint import STATE_FILE
    from edgekd.distill.ablate.core import AblationSpec, _check_settings, _settings

    spec = AblationSpec(teacher=tmp_path / "t", out=tmp_path)
    settings = _settings(spec, ["ce", "logit_kd"])
    # Made before data.modalities, --teacher-seeds and --unimodal-teacher existed.
    old = json.loads(json.dumps(settings))
    del old["base"]["data"]["modalities"], old["teacher_seeds"], old["unimodal_teacher"]
    (tmp_path / "settings.json").write_text(json.dumps(old))
    started = tmp_path / "runs" / "ce" / "seed0" / "final"
    started.mkdir(parents=True)
    (started / STATE_FILE).write_bytes(b"")
    assert _check_settings(tmp_path, settings)["runs"] == settings["runs"]
    old["base"]["train"]["epochs"] = 7
    (tmp_path / "settings.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"other settings \(base\)"):
        _check_settings(tmp_path, settings)


def test_settings_of_an_ablation_that_never_trained_do_not_bind(tmp_path: Path) -> None:
    from edgekd.distill.ablate.core import AblationSpec, _check_settings, _settings

    settings = _settings(AblationSpec(teacher=tmp_path / "t", out=tmp_path), ["ce"])
    old = json.loads(json.dumps(settings))
    old["base"]["train"]["epochs"] = None  # e.g. the run that crashed before training
    (tmp_path / "settings.json").write_text(json.dumps(old))
    (tmp_path / "runs" / "ce" / "seed0" / "final").mkdir(parents=True)
    assert _check_settings(tmp_path, settings) == settings


# --- plans of the rows --------------------------------------------------------------------


def test_rows_plans_differ_from_ce_only_as_declared(teacher_run: Path, tmp_path: Path) -> None:
    from edgekd.config import RunConfig
    from edgekd.distill.ablate.core import AblationSpec, describe_plan, plan, row_plans, unintended
    from edgekd.threads import plan_threads

    names = ["ce", "ce_steps", "ce_plain", "logit_kd", "default", "default_nounl"]
    spec = AblationSpec(teacher=teacher_run, out=tmp_path, runs=tuple(names), seeds=2,
                        base=RunConfig())  # full training split, epochs unset  # fmt: skip
    plans = row_plans(spec, names)
    assert plans["ce"].total_steps == 90 * 60 and plans["default"].total_steps == 148 * 60
    assert plans["ce_steps"].epochs == 99  # 99 x 90 = 8,910 steps, closest to the default's 8,880
    assert unintended("ce_steps", plans) == []
    assert unintended("ce_plain", plans) == []
    assert unintended("default_nounl", plans) == []
    assert unintended("default", plans) == [
        "+3,661 unlabelled windows",
        "x1.64 optimizer steps (8,880 instead of 5,400)",
        "~39 labelled windows per batch of 64 (instead of ~64 of 64)",
    ]
    assert unintended("logit_kd", plans) == unintended("default", plans)
    # Without --epochs the jobs take their plans' epochs and the plan line is printed.
    jobs = plan(spec, names, plans=plans)
    assert {j.run: j.cfg.train.epochs for j in jobs} == {n: p.epochs for n, p in plans.items()}
    line, _ = describe_plan(spec, names, jobs, plan_threads(1, 1))
    assert line.startswith("ablation: 6 runs")


def test_strict_refuses_rows_with_other_differences(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict"
    args = ["ablate", "--teacher", str(teacher_run), "--out", str(out), "--seeds", "1", *TINY]
    result = run_cli([*args, "--runs", "ce,default", "--strict"])
    assert result.exit_code == 2
    assert "default: +3,661 unlabelled windows" in result.output
    assert not out.exists()


def test_table_tells_differences_and_added_seeds() -> None:
    from edgekd.distill.ablate.report import format_table

    stat = {"mean": 80.0, "se": 1.0, "n": 3}
    metric = {"accuracy": stat, "macro_f1": stat}
    gain = {"mean": 1.0, "lo": 0.5, "hi": 1.5, "n": 3}
    runs = {
        "ce": {"test": metric, "val": metric},
        "default": {"test": metric, "val": metric, "gain": {"accuracy": gain, "macro_f1": gain},
                    "gap_closed": {"accuracy": 0.1},
                    "differences": ["+3,661 unlabelled windows", "x1.64 optimizer steps"]},
    }  # fmt: skip
    report = {"selection": "val", "seeds": 3, "first_seeds": 2, "cross_modal": {},
              "teacher": {"test": {"accuracy": 90.0, "macro_f1": 88.0}}, "runs": runs}  # fmt: skip
    table = format_table(report)
    assert "+3,661 unlabelled windows; x1.64 optimizer steps |" in table
    assert "+1.00 [+0.50, +1.50] (seeds added after the first result: 2 -> 3)" in table
    assert "seeds added" not in format_table({**report, "first_seeds": 3})


def test_rows_that_take_one_thing_away_report_its_effect_paired_by_seed(tmp_path: Path) -> None:
    from edgekd.distill.ablate.core import AblationSpec, summarize_runs
    from edgekd.distill.ablate.report import format_table

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "checkpoint.json").write_text(json.dumps({"arch_args": {"modality_dropout": 0.3}}))
    scores = {"accuracy": 0.95, "macro_f1": 0.9}
    (teacher / "metrics.json").write_text(json.dumps({"test": scores, "val": scores}))
    # test accuracy (%) per run and seed; macro-F1 is accuracy - 10 throughout
    acc = {"ce": (88.0, 89.0, 90.0), "ce_steps": (88.5, 89.0, 89.5),
           "default": (90.0, 90.5, 91.5), "default_nounl": (89.0, 90.5, 90.0)}  # fmt: skip
    jobs, results = [], []
    for run, values in acc.items():
        for seed, a in enumerate(values):
            jobs.append(replace(_job(run, 1, seed), teacher=teacher))
            m = {"accuracy": a / 100, "macro_f1": (a - 10) / 100}
            results.append({"test": m, "val": m})
    spec = AblationSpec(teacher=teacher, out=tmp_path / "a", runs=tuple(acc), seeds=3)
    report = summarize_runs(jobs, results, None, spec)
    effects = report["effects"]
    assert set(effects) == {"ce_steps", "default_nounl"}
    # default - default_nounl per seed: +1.0, 0.0, +1.5 -> mean 0.8333, s.e. 0.4410, t(2) 4.303
    unl = effects["default_nounl"]["gain"]["accuracy"]
    assert effects["default_nounl"]["run"] == "default"
    assert unl["mean"] == pytest.approx(2.5 / 3)
    assert unl["hi"] - unl["mean"] == pytest.approx(4.303 * math.sqrt(0.5833333 / 3), rel=1e-4)
    # default - ce_steps per seed: +1.5, +1.5, +2.0
    assert effects["ce_steps"]["gain"]["macro_f1"]["mean"] == pytest.approx(5.0 / 3)
    table = format_table({**report, "selection": "val"})
    line = "what the unlabelled windows add (default - default_nounl, test): accuracy +0.83"
    assert line in table
    # without the whole run there is nothing to subtract from
    spec = replace(spec, runs=("ce", "default_nounl"))
    keep = [i for i, j in enumerate(jobs) if j.run in spec.runs]
    report = summarize_runs([jobs[i] for i in keep], [results[i] for i in keep], None, spec)
    assert report["effects"] == {}
