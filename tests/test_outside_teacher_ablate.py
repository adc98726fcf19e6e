"""`edgekd ablate` and `edgekd search` with an outside teacher (a card), on the tiny paired IMU
manifest and plain-PyTorch ONNX teacher of tests/plain_teachers.py: the rows run through
`distill` with the card, its provenance is recorded, and what needs an edgekd teacher is refused
before anything is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.plain_teachers import export_onnx, make_imu_manifest, sha256, train_plain_teacher
from tests.test_outside_teacher import card

FAST = ["--epochs", "1", "--batch-size", "16", "--threads", "1"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The manifest and a card over the plain teacher's ONNX export."""
    root = tmp_path_factory.mktemp("imu")
    manifest = make_imu_manifest(root / "data")
    model = train_plain_teacher(root / "data")
    (root / "models").mkdir()
    onnx = export_onnx(model, root / "models" / "plain.onnx")
    return {"manifest": manifest, "onnx": onnx, "card": card(root / "teacher", onnx)}


def ablate(teacher: Path, data: Path | None, out: Path, *extra: str) -> Any:
    args = ["ablate", "--teacher", str(teacher), "--out", str(out), *FAST, *extra]
    return run_cli([*args, *(["--data", str(data)] if data else [])])


def test_ablate_runs_the_rows_with_the_card_and_names_its_sha256(
    made: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "abl"
    digest = sha256(made["onnx"])
    result = ablate(made["card"], made["manifest"], out, "--runs", "teacher,ce,default",
                    "--seeds", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"teacher: outside, onnx sha256 {digest[:12]}" in result.output
    # the KD row ran through distill with the card: its plan names the teacher's weights
    plan = json.loads((out / "runs" / "default" / "seed1" / "final" / "plan.json").read_text())
    assert plan["teacher"]["source"] == "onnx" and plan["teacher"]["sha256"] == digest
    assert plan["source"] == str(made["manifest"])  # --data reached the runs
    settings = json.loads((out / "settings.json").read_text())
    assert settings["teacher_card"]["sha256"] == digest
    assert settings["base"]["data"]["source"] == str(made["manifest"])
    report = json.loads((out / "ablate.json").read_text())
    teacher = report["teacher"]
    assert teacher["sha256"] == digest and teacher["source"] == "onnx"
    assert teacher["licence"] == "CC-BY-4.0"
    # the card's teacher was scored on the data (the plain teacher is good on it)
    assert teacher["test"]["accuracy"] > 80 and 0 < teacher["val"]["accuracy"] <= 100
    assert report["runs"]["default"]["gap_closed"]["accuracy"] is not None or (
        teacher["test"]["accuracy"] <= report["runs"]["ce"]["test"]["accuracy"]["mean"]
    )
    assert f"| teacher (onnx {digest[:12]}) | - | - |" in result.output
    # the rows differ from ce in the teacher only as intended: the card is never an "other"
    # difference, while the unlabelled windows the default adds still are
    default = report["runs"]["default"]["differences"]
    assert not any("teacher" in d for d in default)
    assert any("unlabelled windows" in d for d in default)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--runs", "default_restricted"],
         "default_restricted: the restricted control zeroes every modality but the student's"),
        (["--runs", "ce,logit_kd_unimodal"],
         "logit_kd_unimodal: the unimodal control trains a teacher"),
        (["--runs", "ce,logit_kd", "--seeds", "2", "--teacher-seeds", "0,1"],
         "--teacher-seeds retrains the teacher from its edgekd config"),
        (["--runs", "ce,logit_kd", "--unimodal-teacher", "elsewhere"],
         "--unimodal-teacher serves the NAME_unimodal control"),
        (["--runs", "ce,paper"],
         "cannot serve these runs: paper: this teacher cannot serve the recipe: "
         "soft_teacher_head"),
    ],
)  # fmt: skip
def test_ablate_refuses_what_needs_an_edgekd_teacher_and_writes_nothing(
    made: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "abl"
    result = ablate(made["card"], made["manifest"], out, *extra)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert message in said, said
    assert "not a finished teacher run" not in said
    assert not out.exists()


def test_ablate_with_a_card_needs_data_and_a_scorable_teacher_row(
    made: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "abl"
    no_data = ablate(made["card"], None, out, "--runs", "ce,logit_kd")
    assert no_data.exit_code == 2 and "pass --data har or --data PATH" in no_data.output
    assert not out.exists()
    # an embedding-only teacher cannot be scored: the teacher row is refused, not faked
    emb_only = card(tmp_path / "emb", made["onnx"], outputs={"embedding": {"name": "emb"}},
                    labels=[])  # fmt: skip
    refused = ablate(emb_only, made["manifest"], out, "--runs", "teacher,ce,hard_l2")
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert "the teacher row scores the teacher's own predictions" in said
    assert "it gives no logits" in said
    assert not out.exists()


def test_row_plans_read_the_card_as_distill_does(made: dict[str, Path], tmp_path: Path) -> None:
    from edgekd.config import DataConfig, RunConfig, TrainConfig
    from edgekd.distill.ablate.core import AblationSpec, read_teacher, row_plans, unintended
    from edgekd.teachers.card import TeacherCard

    base = RunConfig(data=DataConfig(source=str(made["manifest"])),
                     train=TrainConfig(epochs=2, batch_size=16))  # fmt: skip
    names = ["ce", "ce_steps", "logit_kd", "default", "default_nounl"]
    model = made["card"].parent / made["onnx"].name  # a model file with its card beside it
    spec = AblationSpec(teacher=model, out=tmp_path, runs=tuple(names), base=base)
    data, teacher = read_teacher(spec)
    assert isinstance(teacher, TeacherCard) and teacher.sha256 == sha256(made["onnx"])
    plans = row_plans(spec, names, (data, teacher))
    assert plans["ce"].teacher is None
    assert plans["logit_kd"].teacher.sha256 == sha256(made["onnx"])
    assert unintended("ce_steps", plans) == []
    assert unintended("default_nounl", plans) == []
    assert unintended("logit_kd", plans) == unintended("default", plans)


# --- search -------------------------------------------------------------------------------

TINY_SEARCH = ["--epochs", "1", "--batch-size", "16", "--no-unlabelled", "--timing-s", "0.05",
               "--archs", "tcn_tiny", "--seed", "0", "--threads", "1", "--no-export",
               "--finalists", "1", "--final-seeds", "1", "--final-epochs", "1"]  # fmt: skip


def test_search_with_a_card_trains_its_trials_on_the_data(
    made: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("optuna")
    out = tmp_path / "search"
    digest = sha256(made["onnx"])
    result = run_cli(["search", "--teacher", str(made["card"]), "--data", str(made["manifest"]),
                      "--out", str(out), "--trials", "2", *TINY_SEARCH,
                      "--final-seeds", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "search.json").read_text())
    assert report["teacher"]["sha256"] == digest and report["modality"] == "accel"
    # the card gives no classifier weights: soft_teacher_head recipes are left out of the space
    assert "paper" in report["recipes_not_searched"] and "paper" not in report["recipes"]
    trained = [t for t in report["trials"] if t["state"] == "complete"]
    assert len(trained) == 2
    for t in trained:
        assert t["recipe"] in report["recipes"]
        plan = json.loads((Path(t["folder"]) / "plan.json").read_text())
        assert plan["source"] == str(made["manifest"])
        if plan["teacher"] is not None:
            assert plan["teacher"]["sha256"] == digest
    settings = json.loads((out / "settings.json").read_text())
    assert settings["teacher_card"]["sha256"] == digest
    assert settings["data"] == str(made["manifest"])
    # the final stage planned and trained CE with the card too; with no unlabelled windows a
    # finalist's run differs from CE in its losses and teacher alone (the teacher-only
    # gyroscope's augmentation is the teacher's, not another difference)
    for entry in report["finalists"]:
        assert entry["differences_from_ce"] == [], entry["differences_from_ce"]
        assert entry["val"]["accuracy"]["kd_minus_ce"]["n"] == 2


def test_search_with_a_card_needs_data(made: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    out = tmp_path / "search"
    result = run_cli(["search", "--teacher", str(made["card"]), "--out", str(out), "--trials",
                      "1", *TINY_SEARCH])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "pass --data har or --data PATH" in result.output
    assert not out.exists()
