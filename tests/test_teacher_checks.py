"""`edgekd teacher inspect`: each check on a tiny paired IMU manifest and a teacher made without
edgekd (tests/plain_teachers.py), correct and broken in one way at a time."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_cli
from tests.plain_teachers import (
    ACC_INPUT,
    GYRO_INPUT,
    TEACHER_LABELS,
    card_body,
    export_onnx,
    make_imu_manifest,
    sha256,
    train_plain_teacher,
)

ALL_CHECKS = {
    "sha256 and loading", "signature", "batch invariance", "determinism", "label order",
    "normalisation of acc", "normalisation of gyr", "output entropy", "accuracy vs chance",
    "embedding collapse",
}  # fmt: skip
# Python-source teachers (importable from the card's folder): the plain teacher broken once each.
ODD_TEACHERS = '''\
import torch
from tests.plain_teachers import PlainTeacher


class BatchCentred(PlainTeacher):
    """Embeddings centred on the batch mean: a window's output depends on its batch."""

    def forward(self, acc, gyr):
        logits, emb = super().forward(acc, gyr)
        return logits, emb - emb.mean(0, keepdim=True)


class ConstantEmbedding(PlainTeacher):
    def forward(self, acc, gyr):
        logits, emb = super().forward(acc, gyr)
        return logits, torch.full_like(emb, 0.5)


class DropoutOn(PlainTeacher):
    def forward(self, acc, gyr):
        logits, emb = super().forward(acc, gyr)
        return torch.nn.functional.dropout(logits, 0.5, training=True), emb
'''


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The manifest and the plain teacher as ONNX and as a state dict (made once)."""
    import torch

    root = tmp_path_factory.mktemp("inspect")
    manifest = make_imu_manifest(root / "data")
    model = train_plain_teacher(root / "data")
    torch.save(model.state_dict(), root / "plain.pt")
    (root / "inspect_odd_teachers.py").write_text(ODD_TEACHERS)
    return {"root": root, "manifest": manifest, "onnx": export_onnx(model, root / "plain.onnx"),
            "state": root / "plain.pt"}  # fmt: skip


def write_card(made: dict[str, Path], name: str, **fields: Any) -> Path:
    """`name`.yaml beside the models: the correct ONNX card with `fields` replaced."""
    model = made["state"] if fields.get("source") == "python" else made["onnx"]
    body = card_body(model, **fields)
    path = made["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def python_card(made: dict[str, Path], factory: str) -> Path:
    return write_card(made, factory, source="python", factory=f"inspect_odd_teachers:{factory}",
                      outputs={"logits": {"name": "0"}, "embedding": {"name": "1"}})  # fmt: skip


def test_a_correct_card_passes_every_check_and_the_teacher_is_accurate(
    made: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = run_cli(["teacher", "inspect", str(write_card(made, "good")), "--data",
                      str(made["manifest"]), "--json", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {c["name"] for c in report["checks"]} == ALL_CHECKS
    assert [c for c in report["checks"] if c["status"] != "ok"] == []
    assert report["refused"] is False
    assert report["accuracy"]["test"] > 0.8 and report["windows"]["test"] > 0
    assert "usable" in result.output and "accuracy" in result.output


def test_at_most_max_windows_per_split_are_checked_the_same_on_every_run(
    made: dict[str, Path],
) -> None:
    from edgekd.teachers.checks import inspect_teacher

    card = write_card(made, "good")
    first = inspect_teacher(card, str(made["manifest"]), max_windows=5)
    again = inspect_teacher(card, str(made["manifest"]), max_windows=5)
    assert first.windows == {"train": 5, "val": 5, "test": 5}
    assert first == again


def test_a_permuted_labels_list_is_refused_with_the_right_order_suggested(
    made: dict[str, Path],
) -> None:
    permuted = sorted(TEACHER_LABELS)
    assert tuple(permuted) != TEACHER_LABELS
    result = run_cli(["teacher", "inspect", str(write_card(made, "perm", labels=permuted)),
                      "--data", str(made["manifest"])])  # fmt: skip
    assert result.exit_code == 2, result.output
    line = next(x for x in result.output.splitlines() if "label order" in x)
    assert "FAIL" in line and "labels order looks wrong" in line
    suggested = re.search(r"with labels: (\[[^\]]*\])", line)
    assert suggested is not None, line
    assert tuple(yaml.safe_load(suggested.group(1))) == TEACHER_LABELS
    assert "refused" in result.output


def test_a_missing_accelerometer_normalisation_warns_naming_the_input(
    made: dict[str, Path],
) -> None:
    from edgekd.teachers.checks import inspect_teacher

    raw_acc = {"modality": "accel", "layout": "NCT"}  # gravity 9.8 goes in as it is
    card = write_card(made, "nonorm", inputs={"acc": raw_acc, "gyr": GYRO_INPUT})
    report = inspect_teacher(card, str(made["manifest"]))
    check = report.check("normalisation of acc")
    assert check is not None and check.status == "warn", report.render()
    assert "input acc" in check.message and "normalize" in check.message
    assert report.check("normalisation of gyr").status == "ok"  # type: ignore[union-attr]


def test_a_modality_the_data_lacks_fails_naming_it(made: dict[str, Path]) -> None:
    from edgekd.teachers.checks import inspect_teacher

    inputs = {"acc": {**ACC_INPUT, "modality": "magnet"}, "gyr": GYRO_INPUT}
    report = inspect_teacher(write_card(made, "magnet", inputs=inputs), str(made["manifest"]))
    check = report.check("signature")
    assert check is not None and check.status == "fail"
    assert "magnet" in check.message and "accel, gyro" in check.message
    assert report.refused


def test_outputs_that_depend_on_the_batch_warn(made: dict[str, Path]) -> None:
    from edgekd.teachers.checks import inspect_teacher

    report = inspect_teacher(python_card(made, "BatchCentred"), str(made["manifest"]))
    check = report.check("batch invariance")
    assert check is not None and check.status == "warn", report.render()
    assert "embedding" in check.message and "BatchNorm" in check.message
    assert report.check("determinism").status == "ok"  # type: ignore[union-attr]
    assert not report.refused


def test_dropout_left_on_warns_about_determinism(made: dict[str, Path]) -> None:
    from edgekd.teachers.checks import inspect_teacher

    report = inspect_teacher(python_card(made, "DropoutOn"), str(made["manifest"]))
    check = report.check("determinism")
    assert check is not None and check.status == "warn", report.render()
    assert "dropout" in check.message


def test_a_constant_embedding_warns_of_collapse(made: dict[str, Path]) -> None:
    from edgekd.teachers.checks import inspect_teacher

    report = inspect_teacher(python_card(made, "ConstantEmbedding"), str(made["manifest"]))
    check = report.check("embedding collapse")
    assert check is not None and check.status == "warn", report.render()
    assert report.check("batch invariance").status == "ok"  # type: ignore[union-attr]


def test_inspect_without_data_prints_the_card_facts(made: dict[str, Path]) -> None:
    shutil.copy(write_card(made, "good"), made["root"] / "teacher.yaml")
    result = run_cli(["teacher", "inspect", str(made["onnx"])])  # the card beside the model
    assert result.exit_code == 0, result.output
    out = result.output
    assert sha256(made["onnx"]) in out and "CC-BY-4.0" in out and "source      onnx" in out
    assert "acc <- accel: normalize mean [0, 0, 9.8] std [0.5, 0.5, 0.5], layout NCT" in out
    assert "[c2, c0, c1]" in out
    assert "OK    sha256 and loading" in out and "batch invariance" not in out


def test_inspect_without_data_fails_a_changed_weights_file(made: dict[str, Path]) -> None:
    card = write_card(made, "badsha", sha256="0" * 64)
    result = run_cli(["teacher", "inspect", str(card)])
    assert result.exit_code == 2, result.output
    assert "FAIL  sha256 and loading" in result.output
    assert "does not match the card's sha256" in result.output
