"""`export_run` on a run whose data moved (`data=` / `--data`) and the calibration default on a
dataset with fewer training windows than the default: a real teacher and audio student trained
on the small paired toy manifest, whose folder is then moved away."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import ConfigError
from edgekd.export.exporter import DEFAULT_CALIB, export_run
from tests.conftest import run_cli
from tests.toy_manifest import make_toy_manifest

pytestmark = pytest.mark.slow  # trains a toy teacher and student, then exports


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(student run trained on <root>/data/manifest.jsonl, the manifest after the data folder
    was moved to <root>/moved)."""
    root = tmp_path_factory.mktemp("toy")
    manifest = make_toy_manifest(root / "data", n_per_class=12, classes=3, seed=0)
    teacher, student = root / "teacher", root / "student"
    fast = ["--epochs", "2", "--batch-size", "16", "--quiet"]
    assert (
        run_cli(["teacher", "--data", str(manifest), "--out", str(teacher), *fast]).exit_code == 0
    )
    args = ["distill", "--teacher", str(teacher), "--out", str(student), "--recipe", "kd"]
    assert run_cli([*args, *fast]).exit_code == 0
    (root / "data").rename(root / "moved")
    return student, root / "moved" / "manifest.jsonl"


def _train_windows(manifest: Path, student: Path) -> int:
    from edgekd.checkpoint import load_run
    from edgekd.data import load_dataset

    run = load_run(student)
    ds = load_dataset(manifest, limit=run.config.data.limit, seed=run.config.train.seed)
    return int((ds.splits["train"].y >= 0).sum())


def test_moved_data_needs_data_and_default_calib_uses_every_window(
    moved_run: tuple[Path, Path], tmp_path: Path
) -> None:
    student, moved = moved_run
    out = tmp_path / "toy.edgekd"
    with pytest.raises(ConfigError, match=r"data/manifest.jsonl, which does not exist any more; "
                       r"pass --data PATH"):  # fmt: skip
        export_run(student, out, max_drop=100.0, progress=False)
    assert not out.exists()

    n = _train_windows(moved, student)
    assert 0 < n < DEFAULT_CALIB
    result = export_run(student, out, data=moved, max_drop=100.0, progress=False)
    record = result.manifest["calibration"]
    assert record["samples"] == n and record["requested"] == DEFAULT_CALIB
    assert record["source"] == f"{moved}:train"
    assert record["reason"] == f"{moved} has only {n} labelled training windows"
    assert f"calibrating on all {n} training windows (default {DEFAULT_CALIB})" in result.notices[0]
    assert result.manifest["export"]["options"]["data"] == str(moved)
    acc = result.manifest["accuracy"]
    assert {"fp32", "int8_onnxruntime", "int8_openvino"} <= set(acc)
    assert acc["fp32"]["accuracy"] == acc["torch_fp32"]["accuracy"]

    # an explicit --calib above the count is still an error, before any artifact is made
    with pytest.raises(ConfigError, match=re.escape(f"--calib {n + 1} is more than the {n} train")):
        export_run(student, tmp_path / "x.edgekd", data=moved, calib=n + 1, progress=False)
    # an explicit --calib within the count is used as given, with no shortfall fields
    exact = export_run(
        student, tmp_path / "exact.edgekd", data=moved, calib=n, max_drop=100.0, progress=False
    )
    assert exact.manifest["calibration"].keys() == {"method", "samples", "data_sha256", "source"}
    assert exact.manifest["calibration"]["data_sha256"] == record["data_sha256"]  # same windows
    assert not (tmp_path / "x.edgekd").exists()


def test_data_that_is_not_the_runs_is_refused_with_the_difference(
    moved_run: tuple[Path, Path], tmp_path: Path
) -> None:
    student, _ = moved_run
    four = make_toy_manifest(tmp_path / "four", n_per_class=6, classes=4)
    with pytest.raises(ConfigError) as err:
        export_run(student, tmp_path / "a.edgekd", data=four, progress=False)
    assert str(err.value) == (
        f"{student} was not trained on the data at --data {four}: it has labels "
        "['c0', 'c1', 'c2', 'c3'] (the run has ['c0', 'c1', 'c2'])"
    )
    shorter = make_toy_manifest(tmp_path / "short", n_per_class=6, classes=3)
    yaml = shorter.parent / "modalities.yaml"
    yaml.write_text(yaml.read_text().replace("window_s: 0.5", "window_s: 0.25"))
    result = CliRunner().invoke(
        app, ["export", str(student), "--out", str(tmp_path / "b.edgekd"), "--data", str(shorter)]
    )
    assert result.exit_code == 2, result.output
    assert "voice.window 4000 (the run has 8000)" in result.output
    assert not (tmp_path / "a.edgekd").exists() and not (tmp_path / "b.edgekd").exists()


def test_calibration_windows_are_the_seeded_training_windows(
    moved_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """The capped default calibrates on exactly the run's labelled training windows."""
    from edgekd.checkpoint import load_run
    from edgekd.data import load_dataset
    from edgekd.export.quantize import data_sha256
    from edgekd.modalities import ModalitySpec, preprocess

    student, moved = moved_run
    result = export_run(student, tmp_path / "c.edgekd", data=moved, max_drop=100.0, progress=False)
    run = load_run(student)
    ds = load_dataset(moved, limit=run.config.data.limit, seed=run.config.train.seed)
    train = ds.splits["train"]
    raw = train.x["voice"][train.y >= 0]  # all of them, in order (a sorted full draw)
    feats = preprocess(ModalitySpec.from_dict(run.sidecar["specs"]["voice"]), raw)
    assert result.manifest["calibration"]["data_sha256"] == data_sha256(
        np.ascontiguousarray(feats, dtype=np.float32)
    )


def test_export_reads_only_the_windows_it_uses(
    moved_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training and validation windows stay memory-mapped; PTQ export reads `calib` training
    windows and the held-out ones, never a whole split."""
    from edgekd.data import load_dataset
    from edgekd.data.pipeline import Windows
    from edgekd.export.run_data import load_run_data

    student, moved = moved_run
    data = load_run_data(student, 0, str(moved))
    for windows in (data.train, data.val):
        ((split, _),) = windows.parts
        assert all(isinstance(arr, np.memmap) for arr in split.x.values())
    test = load_dataset(moved).splits["test"]
    n_test = int((test.y >= 0).sum())
    assert len(data.eval_y) == n_test

    reads: dict[int, int] = {}  # windows read per split (by its number of windows)
    fetch = Windows.fetch

    def counted(self: Windows, idx: np.ndarray, modalities: list[str]):  # noqa: ANN202
        for split, _ in self.parts:
            reads[len(split)] = reads.get(len(split), 0) + len(idx)
        return fetch(self, idx, modalities)

    monkeypatch.setattr(Windows, "fetch", counted)
    calib = 8
    export_run(student, tmp_path / "m.edgekd", data=moved, calib=calib, max_drop=100.0,
               progress=False)  # fmt: skip
    n_train = len(data.train.parts[0][0])
    assert reads == {n_train: calib, len(test): n_test}
