"""Distilling from teachers edgekd did not train: ONNX (from PyTorch and from scikit-learn), a
torch.export `.pt2`, a Python factory, precomputed outputs and a `teacher cache`, on a tiny
paired IMU manifest whose teachers are made without edgekd (tests/plain_teachers.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import run_cli
from tests.plain_teachers import (
    ACC_INPUT,
    TEACHER_LABELS,
    card_body,
    export_onnx,
    export_pt2,
    make_imu_manifest,
    sha256,
    sklearn_onnx,
    train_plain_teacher,
)

FAST = ["--epochs", "2", "--batch-size", "16", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The manifest, and the plain teacher as ONNX, .pt2 and a state dict, plus sklearn ONNX."""
    import torch

    root = tmp_path_factory.mktemp("imu")
    manifest = make_imu_manifest(root / "data")
    model = train_plain_teacher(root / "data")
    models = root / "models"
    models.mkdir()
    torch.save(model.state_dict(), models / "plain.pt")
    return {
        "manifest": manifest,
        "onnx": export_onnx(model, models / "plain.onnx"),
        "pt2": export_pt2(model, models / "plain.pt2"),
        "state": models / "plain.pt",
        "sklearn": sklearn_onnx(root / "data", models / "sk.onnx"),
        "root": root,
    }


def card(folder: Path, model: Path, **fields: Any) -> Path:
    """A card in `folder` for a copy of `model`; `fields` replace the defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / model.name)
    (folder / "teacher.yaml").write_text(yaml.safe_dump(card_body(model, **fields),
                                                        sort_keys=False))  # fmt: skip
    return folder / "teacher.yaml"


def distill(teacher: Path, data: Path, out: Path, *extra: str) -> Any:
    return run_cli(["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
                    *FAST, *extra])  # fmt: skip


def plan_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "plan.json").read_text())


def test_onnx_teacher_from_pytorch_distils_and_the_bundle_names_it(
    made: dict[str, Path], tmp_path: Path
) -> None:
    import edgekd.runtime as rt

    teacher = card(tmp_path / "t", made["onnx"])
    result = distill(teacher, made["manifest"], tmp_path / "s")
    assert result.exit_code == 0, result.output
    plan = plan_of(tmp_path / "s")
    assert plan["teacher"]["source"] == "onnx"
    assert plan["teacher"]["sha256"] == sha256(made["onnx"])
    assert plan["teacher"]["licence"] == "CC-BY-4.0"
    assert plan["teacher"]["mode"] == "online"
    assert plan["teacher"]["reads"] == ["accel", "gyro"]
    assert plan["unlabelled"] > 0  # the manifest's "label": null windows feed the teacher terms
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["train"]["teacher"]["sha256"] == sha256(made["onnx"])
    out = tmp_path / "b.edgekd"
    export = run_cli(["export", str(tmp_path / "s"), "--out", str(out), "--target", "cpu-ort",
                      "--calib", "32", "--max-drop", "100", "-q"])  # fmt: skip
    assert export.exit_code == 0, export.output
    manifest = rt.read_bundle(out).manifest
    assert manifest["teacher"]["sha256"] == sha256(made["onnx"])
    assert manifest["teacher"]["licence"] == "CC-BY-4.0"
    info = run_cli(["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "licence=CC-BY-4.0" in info.output and "source=onnx" in info.output
    assert f"sha256={sha256(made['onnx'])[:12]}" in info.output


def test_torch_export_and_python_factory_teachers_give_the_onnx_teachers_outputs(
    made: dict[str, Path], tmp_path: Path
) -> None:
    from edgekd.data import load_dataset
    from edgekd.teachers.teacher import OutsideTeacher

    ds = load_dataset(made["manifest"])
    (tmp_path / "py").mkdir()
    shutil.copy(Path(__file__).parent / "plain_teachers.py", tmp_path / "py" / "their_repo.py")
    by_position = {"logits": {"name": "0"}, "embedding": {"name": "1"}}  # a returned tuple
    cards = {
        "onnx": card(tmp_path / "o", made["onnx"]),
        "pt2": card(tmp_path / "p", made["pt2"], source="torch_export", outputs=by_position),
        "python": card(tmp_path / "py", made["state"], source="python",
                       factory="their_repo:PlainTeacher", outputs=by_position),
    }  # fmt: skip
    raw = {m: ds.splits["test"].x[m][:8] for m in ("accel", "gyro")}
    outs = {k: OutsideTeacher.open(c, ds.specs).outputs(raw) for k, c in cards.items()}
    for name in ("pt2", "python"):
        np.testing.assert_allclose(outs[name].logits, outs["onnx"].logits, atol=1e-4)
        np.testing.assert_allclose(outs[name].embedding, outs["onnx"].embedding, atol=1e-4)
    result = distill(cards["pt2"], made["manifest"], tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert plan_of(tmp_path / "s")["teacher"]["source"] == "torch_export"


def test_teacher_labels_in_its_own_order_are_mapped_to_the_datas(made: dict[str, Path]) -> None:
    from edgekd.data import load_dataset
    from edgekd.teachers.teacher import OutsideTeacher

    ds = load_dataset(made["manifest"])
    teacher = OutsideTeacher.open(card(made["root"] / "order", made["onnx"]), ds.specs)
    test = ds.splits["test"]
    out = teacher.outputs({m: test.x[m] for m in ("accel", "gyro")})
    assert ds.labels == ["c0", "c1", "c2"] and TEACHER_LABELS == ("c2", "c0", "c1")
    mapped = teacher.dataset_logits(out, ds.labels)
    np.testing.assert_array_equal(mapped[:, 0], out.logits[:, 1])  # c0 is the teacher's 2nd
    np.testing.assert_array_equal(mapped[:, 2], out.logits[:, 0])
    assert float(np.mean(mapped.argmax(1) == test.y)) > 0.8  # the plain teacher is good


def test_sklearn_onnx_teacher_with_flattened_input_distils(
    made: dict[str, Path], tmp_path: Path
) -> None:
    teacher = card(
        tmp_path / "sk", made["sklearn"], inputs={"X": {"modality": "gyro", "flatten": True}},
        outputs={"logits": {"name": "probabilities"}}, labels=["c0", "c1", "c2"],
    )  # fmt: skip
    result = distill(teacher, made["manifest"], tmp_path / "s", "--recipe", "kd")
    assert result.exit_code == 0, result.output
    plan = plan_of(tmp_path / "s")
    assert plan["teacher"]["reads"] == ["gyro"] and plan["modality"] == "accel"
    # QAT fine-tunes with the same teacher, recomputed through the card.
    out = tmp_path / "qat.edgekd"
    export = run_cli(["export", str(tmp_path / "s"), "--out", str(out), "--target", "cpu-ort",
                      "--qat", "--qat-epochs", "1", "--max-drop", "100"])  # fmt: skip
    assert export.exit_code == 0, export.output
    assert "logit_kd" in export.output and "task loss only" not in export.output
    info = run_cli(["info", str(out)])
    assert f"sha256={sha256(made['sklearn'])[:12]}" in info.output
    # Logits only: a feature-level recipe is refused, naming those that apply.
    refused = distill(teacher, made["manifest"], tmp_path / "f", "--set",
                      "distill.feature_loss=hard_l2")
    assert refused.exit_code == 2
    assert "need the teacher's embedding" in refused.output
    assert "Recipes that apply: ce, kd, kd_std, dist, dkd, bkd" in refused.output
    assert not (tmp_path / "f").exists()


def test_disjoint_teacher_distils_through_the_projection_head_only(
    made: dict[str, Path], tmp_path: Path
) -> None:
    teacher = card(tmp_path / "d", made["onnx"], disjoint=True,
                   labels=["walk", "run", "sit"])  # fmt: skip
    refused = distill(teacher, made["manifest"], tmp_path / "kd")
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert "disjoint: true" in said and "Recipes that apply: ce;" in said
    assert "--set distill.classifier_loss=none --set distill.feature_loss=soft_margin" in said
    ok = distill(teacher, made["manifest"], tmp_path / "feat", "--set",
                 "distill.classifier_loss=none", "--set", "distill.feature_loss=soft_margin")
    assert ok.exit_code == 0, ok.output
    loss = plan_of(tmp_path / "feat")["loss"]
    assert [t["term"] for t in loss] == ["task", "feature"]


def test_cached_from_card_and_from_teacher_cache_train_the_same_student(
    made: dict[str, Path], tmp_path: Path
) -> None:
    from edgekd.checkpoint import load_weights

    teacher = card(tmp_path / "t", made["onnx"])
    cache = tmp_path / "cache"
    made_cache = run_cli(["teacher", "cache", str(teacher), "--data", str(made["manifest"]),
                          "--out", str(cache)])  # fmt: skip
    assert made_cache.exit_code == 0, made_cache.output
    assert {p.name for p in cache.iterdir()} == {"teacher.yaml", "outputs.npz", "fingerprint.json"}
    cached = ["--set", "distill.teacher_mode=cached", "--augment", "none"]
    a = distill(teacher, made["manifest"], tmp_path / "a", *cached)
    assert a.exit_code == 0, a.output
    # A cache knows its data and is cached by nature.
    b = run_cli(["distill", "--teacher", str(cache), "--out", str(tmp_path / "b"), *FAST,
                 "--augment", "none"])  # fmt: skip
    assert b.exit_code == 0, b.output
    plan_b = plan_of(tmp_path / "b")
    assert plan_b["teacher"]["mode"] == "cached" and plan_b["teacher"]["source"] == "outputs"
    # Same teacher outputs (float32 through the cache) -> the same student, to float tolerance.
    wa, wb = load_weights(tmp_path / "a" / "model.safetensors"), \
        load_weights(tmp_path / "b" / "model.safetensors")  # fmt: skip
    for k in wa:
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-5, err_msg=k)
    # An augmenting run cannot use clean-window outputs: refused, saying what to do.
    c = run_cli(["distill", "--teacher", str(cache), "--out", str(tmp_path / "c"), *FAST])
    assert c.exit_code == 2 and "--augment none" in c.output


def test_a_stale_cache_is_refused_naming_what_changed(
    made: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(made["manifest"].parent, data)
    cache = tmp_path / "cache"
    made_cache = run_cli(["teacher", "cache", str(card(tmp_path / "t", made["onnx"])), "--data",
                          str(data / "manifest.jsonl"), "--out", str(cache)])  # fmt: skip
    assert made_cache.exit_code == 0, made_cache.output
    first = json.loads((data / "manifest.jsonl").read_text().splitlines()[0])
    gyro = np.load(data / first["gyro"])
    np.save(data / first["gyro"], gyro[::-1].copy())  # same shape, other samples
    stale = run_cli(["distill", "--teacher", str(cache), "--out", str(tmp_path / "s"), *FAST,
                     "--augment", "none"])  # fmt: skip
    assert stale.exit_code == 2
    assert "hold other samples than when it was computed" in stale.output
    assert f"{first['id']}#0" in stale.output
    assert not (tmp_path / "s").exists()
    again = run_cli(["teacher", "cache", str(tmp_path / "t" / "teacher.yaml"), "--data",
                     str(data / "manifest.jsonl"), "--out", str(cache)])  # fmt: skip
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "0" * 64}, "does not match the card's sha256"),
        ({"inputs": {"acc": ACC_INPUT}}, "needs input(s) gyr that the card does not feed"),
        ({"labels": ["c0", "c1"]}, "do not cover the data's c2"),
        ({"labels": [*TEACHER_LABELS, "c3"]}, "logits have 3 classes, but the card lists 4"),
        ({"inputs": {"acc": ACC_INPUT, "gyr": {"modality": "magnet"}}},
         "reads modality magnet, which"),
        ({"outputs": {"logits": {"name": "scores"}}}, "output 'scores' is not among"),
    ],
)  # fmt: skip
def test_a_bad_card_exits_2_with_a_specific_message_and_writes_nothing(
    made: dict[str, Path], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    teacher = card(tmp_path / "t", made["onnx"], **change)
    result = distill(teacher, made["manifest"], tmp_path / "s")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "s").exists()


def test_an_outside_teacher_needs_data(made: dict[str, Path], tmp_path: Path) -> None:
    teacher = card(tmp_path / "t", made["onnx"])
    result = run_cli(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "s"), *FAST])
    assert result.exit_code == 2 and "pass --data har or --data PATH" in result.output


def test_fixmatch_learns_from_unlabelled_windows_without_the_teacher(
    made: dict[str, Path], tmp_path: Path
) -> None:
    teacher = card(tmp_path / "t", made["onnx"])
    # A low threshold: the tiny student is not yet confident after a few epochs.
    args = ("--recipe", "fixmatch", "--labelled-share", "0.5", "--epochs", "8",
            "--set", "distill.fixmatch_threshold=0.4")  # fmt: skip
    result = distill(teacher, made["manifest"], tmp_path / "fm", *args)
    assert result.exit_code == 0, result.output
    plan = plan_of(tmp_path / "fm")
    assert plan["teacher"] is None
    assert [t["name"] for t in plan["loss"]] == ["cross-entropy", "fixmatch(threshold=0.4)"]
    ce = distill(teacher, made["manifest"], tmp_path / "ce", "--recipe", "ce",
                 "--labelled-share", "0.5")  # fmt: skip
    assert ce.exit_code == 0, ce.output
    base = plan_of(tmp_path / "ce")
    # Half the labels: the rest are unlabelled windows that FixMatch uses and CE does not.
    assert plan["labelled"] == base["labelled"] and base["unlabelled"] == 0
    assert plan["unlabelled"] > plan["labelled"]
    history = json.loads((tmp_path / "fm" / "history.json").read_text())
    active = [h["train"]["active_classifier"] for h in history]
    assert 0 < max(active) <= 1, active  # confident unlabelled windows were used
    mixed = distill(teacher, made["manifest"], tmp_path / "mx", "--recipe", "fixmatch",
                    "--mix", "mixup")  # fmt: skip
    assert mixed.exit_code == 2 and "takes no mixing" in mixed.output


def test_plan_differences_name_another_outside_teacher(
    made: dict[str, Path], tmp_path: Path
) -> None:
    from edgekd.config import build_config
    from edgekd.distill.plan import differences
    from edgekd.distill.trainer import plan_distill

    cfg = build_config(None, recipe="kd", flags={"data": {"source": str(made["manifest"])}})
    a = plan_distill(cfg, card(tmp_path / "a", made["onnx"]))[0]
    b = plan_distill(cfg, card(tmp_path / "b", made["pt2"], source="torch_export",
                               outputs={"logits": {"name": "0"}}))[0]  # fmt: skip
    said = [d for d in differences(b, a) if d.aspect == "teacher"]
    assert len(said) == 1 and sha256(made["pt2"])[:12] in said[0].text
    assert not [d for d in differences(a, a)]


@pytest.mark.gpu
def test_a_cuda_teacher_gives_the_cpu_teachers_outputs(
    made: dict[str, Path], tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the teacher's own device is tested on a GPU machine")
    from edgekd.data import load_dataset
    from edgekd.teachers.teacher import OutsideTeacher

    ds = load_dataset(made["manifest"])
    raw = {m: ds.splits["test"].x[m] for m in ("accel", "gyro")}
    cpu = OutsideTeacher.open(card(tmp_path / "c", made["pt2"], source="torch_export",
                                   device="cpu", outputs={"logits": {"name": "0"}}), ds.specs)
    gpu = OutsideTeacher.open(card(tmp_path / "g", made["pt2"], source="torch_export",
                                   device="cuda", outputs={"logits": {"name": "0"}}), ds.specs)
    np.testing.assert_allclose(gpu.outputs(raw).logits, cpu.outputs(raw).logits, atol=1e-4)


FACE_TEACHER = '''
import torch
from torch import nn


class FaceTeacher(nn.Module):
    """(N, 3, 16, 16) images -> (logits over 3 classes, 8-d embedding); inputs checked."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(8, 3)

    def forward(self, img):
        assert img.shape[1:] == (3, 16, 16), img.shape
        emb = self.body(img)
        return {"logits": self.head(emb), "emb": emb}


class VoiceTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1, 3)

    def forward(self, wav):
        return self.head(wav.abs().mean(dim=1, keepdim=True))
'''


def test_an_image_teacher_for_an_audio_student_runs_online_on_resized_raw_images(
    tmp_path: Path,
) -> None:
    from tests.toy_manifest import make_toy_manifest

    manifest = make_toy_manifest(tmp_path / "av", n_per_class=6)
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "their_teachers.py").write_text(FACE_TEACHER)
    face = {"source": "python", "factory": "their_teachers:FaceTeacher",
            "inputs": {"img": {"modality": "face", "size": [16, 16], "layout": "NCHW",
                               "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}},
            "outputs": {"logits": {"name": "logits"}, "embedding": {"name": "emb"}},
            "labels": ["c0", "c1", "c2"], "licence": "MIT"}  # fmt: skip
    (folder / "face.yaml").write_text(yaml.safe_dump(face))
    ok = distill(folder / "face.yaml", manifest, tmp_path / "s")
    assert ok.exit_code == 0, ok.output
    plan = plan_of(tmp_path / "s")
    assert plan["modality"] == "voice" and plan["teacher"]["reads"] == ["face"]
    assert plan["teacher"]["mode"] == "online" and "spec_mask" in plan["augment"]["voice"]
    # A teacher reading the raw audio would not see the student's SpecAugment masks: refused.
    voice = {**face, "factory": "their_teachers:VoiceTeacher",
             "inputs": {"wav": {"modality": "voice"}}, "outputs": {"logits": {"name": "0"}}}
    (folder / "voice.yaml").write_text(yaml.safe_dump(voice))
    refused = distill(folder / "voice.yaml", manifest, tmp_path / "v")
    assert refused.exit_code == 2
    assert "masks the features of voice" in " ".join(refused.output.split())
