"""`edgekd teacher export`: an edgekd teacher run becomes an outside teacher (ONNX + card) that
gives the run's own outputs and that `distill --teacher DIR` takes through the card path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "har-teacher"
    result = run_cli(["teacher", "export", str(teacher_run), "--out", str(out),
                      "--licence", "CC-BY-4.0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(out / "teacher.yaml") in result.output
    assert "12 classes reading accel, gyro" in " ".join(result.output.split())
    assert sorted(os.listdir(out.parent)) == ["har-teacher"]  # no staging folder left behind
    return out


def test_the_card_parses_and_names_the_onnx_file(exported: Path, teacher_run: Path) -> None:
    from edgekd.checkpoint import read_sidecar
    from edgekd.teachers import read_card
    from edgekd.teachers.card import file_sha256, verify_sha256

    card = read_card(exported)
    sidecar = read_sidecar(teacher_run, expect_role="teacher")
    assert card.source == "onnx" and card.file == (exported / "teacher.onnx").resolve()
    assert card.sha256 == file_sha256(exported / "teacher.onnx")
    verify_sha256(card)
    assert list(card.labels) == sidecar["labels"]
    assert card.licence == "CC-BY-4.0" and card.name == teacher_run.name
    assert {i.name: i.modality for i in card.inputs} == {"accel": "accel", "gyro": "gyro"}
    for i in card.inputs:
        spec = sidecar["specs"][i.modality]
        assert i.layout == "NCT" and i.mean == tuple(spec["mean"]) and i.std == tuple(spec["std"])
    assert {o.kind: o.name for o in card.outputs} == {"logits": "logits",
                                                      "embedding": "embedding"}  # fmt: skip
    assert "#" not in (exported / "teacher.yaml").read_text()  # no comments


def test_the_exported_teacher_gives_the_runs_own_outputs(exported: Path, teacher_run: Path) -> None:
    import torch

    from edgekd.checkpoint import load_run
    from edgekd.data import load_dataset
    from edgekd.modalities import ModalitySpec, preprocess
    from edgekd.teachers.teacher import OutsideTeacher

    ds = load_dataset("har")
    val = ds.splits["val"]
    pick = np.linspace(0, len(val) - 1, 64).astype(int)
    raw = {m: np.asarray(val.x[m][pick], dtype=np.float32) for m in ("accel", "gyro")}
    got = OutsideTeacher.open(exported, ds.specs).outputs(raw)

    run = load_run(teacher_run, expect_role="teacher")
    specs = {m: ModalitySpec.from_dict(d) for m, d in run.sidecar["specs"].items()}
    with torch.inference_mode():
        x = {m: torch.from_numpy(preprocess(specs[m], raw[m])) for m in specs}
        logits = run.model(x).numpy()
        embedding = run.model.forward_features(x).numpy()
    assert got.logits.shape == (64, len(ds.labels))
    assert np.max(np.abs(got.logits - logits)) <= 1e-4 * max(1.0, np.abs(logits).max())
    assert np.max(np.abs(got.embedding - embedding)) <= 1e-4 * max(1.0, np.abs(embedding).max())


def test_an_existing_out_is_refused_and_left_alone(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(["teacher", "export", str(teacher_run), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "already exists" in result.output
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_audio_teachers_are_refused_as_a_card_cannot_say_log_mel() -> None:
    from edgekd.errors import ConfigError
    from edgekd.modalities import ModalitySpec
    from edgekd.teachers.export import card_inputs

    audio = ModalitySpec("mic", "audio", 16000.0, 1, 16000, 8000)
    with pytest.raises(ConfigError, match="log-mel"):
        card_inputs({"mic": audio})
    image = ModalitySpec("cam", "image", 0.0, 3, 0, 0, (0.5,) * 3, (0.25,) * 3, size=(8, 8))
    assert card_inputs({"cam": image})["cam"] == {
        "modality": "cam", "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}, "layout": "NCHW"
    }  # fmt: skip


def test_distill_takes_the_exported_teacher_through_its_card(
    exported: Path, tmp_path: Path
) -> None:
    from edgekd.teachers import read_card

    out = tmp_path / "student"
    result = run_cli(["distill", "--teacher", str(exported), "--data", "har", "--out", str(out),
                      "--epochs", "1", "--limit", "300", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["teacher"]["source"] == "onnx"
    assert plan["teacher"]["sha256"] == read_card(exported).sha256
    assert plan["teacher"]["licence"] == "CC-BY-4.0"
