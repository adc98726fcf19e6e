"""`edgekd search` beyond the HAR sensor case: a real search over the audio students on the toy
audio + image manifest (tests/toy_manifest.py), also from an outside image teacher (a Python
factory's card); and a search from every teacher form `edgekd distill` accepts (an edgekd run
folder; an outside teacher's card file, the folder holding it, its `.onnx` or `.pt2` with the
card beside it; a `teacher cache`, which knows its data) on the tiny paired IMU manifest of
tests/plain_teachers.py.

Everything is really trained, as small as it goes: 1-epoch trials and final runs, one seed, one
finalist, 0.1 s of latency timing. The audio search is run once and checked by several tests.
The machine reads as quiet (`pin_machine`): these tests are about what is searched, and a
timing that waits for other work on a shared machine to end would only make them slow."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import run_cli
from tests.plain_teachers import (
    card_body,
    export_onnx,
    export_pt2,
    make_imu_manifest,
    sha256,
    train_plain_teacher,
)
from tests.pricing import pin_machine
from tests.toy_manifest import make_toy_manifest

# The smallest search that still explores, runs the final stage and prices every candidate.
TINY = ["--epochs", "1", "--batch-size", "16", "--seed", "0", "--timing-s", "0.1",
        "--finalists", "1", "--final-seeds", "1", "--final-epochs", "1"]  # fmt: skip
TEACHER = ["--epochs", "1", "--batch-size", "16", "--seed", "0", "--quiet"]
TRIALS = 2


def _trained(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials that were trained (a repeat is told an earlier trial's outcome instead)."""
    return [t for t in report["trials"] if t["state"] in ("complete", "pruned")]


def _plan(trial: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(trial["folder"]) / "plan.json").read_text())


def _search(args: list[str], out: Path, prices: Path) -> Any:
    """`edgekd search ARGS --out OUT`, starting from the latency cache `prices` when there is
    one, and leaving it updated: the searches of a module price the same anchor, which need not
    be exported and timed again each time."""
    from edgekd.search.latency import CACHE_FILE

    out.mkdir()
    if prices.is_file():
        shutil.copy(prices, out / CACHE_FILE)
    result = run_cli(["search", *args, "--out", str(out)])
    if (out / CACHE_FILE).is_file():
        shutil.copy(out / CACHE_FILE, prices)
    return result


# --- 1. a search over the audio students -----------------------------------------------------


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An edgekd teacher on the toy manifest (voice + face; the student modality is voice), and
    a search of TRIALS trials over every student that serves audio, exported for the CPU."""
    root = tmp_path_factory.mktemp("audio")
    manifest = make_toy_manifest(root / "data", n_per_class=12, classes=3)
    teacher = root / "teacher"
    made = run_cli(["teacher", "--data", str(manifest), "--out", str(teacher), *TEACHER])
    assert made.exit_code == 0, made.output
    out, prices = root / "search", root / "prices.json"
    with pytest.MonkeyPatch.context() as patch:
        pin_machine(patch)
        args = ["--teacher", str(teacher), "--target", "cpu", "--trials", str(TRIALS),
                "--max-drop", "100", *TINY]  # fmt: skip
        result = _search(args, out, prices)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "search.json").read_text())
    return {"root": root, "out": out, "report": report, "log": result.output, "prices": prices}


def test_an_audio_search_trains_audio_students_only_the_default_first(
    audio: dict[str, Any],
) -> None:
    from edgekd.distill.plan import DEFAULT_STUDENT
    from edgekd.models import list_students
    from edgekd.models.registry import student_kinds

    report = audio["report"]
    serves_audio = [a for a in list_students() if "audio" in student_kinds(a)]
    assert "bcresnet_audio" in serves_audio and "dsres_ts" not in serves_audio
    assert report["modality"] == "voice" and report["archs"] == serves_audio
    trained = _trained(report)
    assert len(trained) == TRIALS, audio["log"]
    for t in trained:
        assert t["arch"] in serves_audio
        assert t["params"] > 0 and t["int8_kb"] > 0 and t["p50_ms"] > 0
        assert t["p50_source"] == "local" and 0 <= t["val_acc"] <= 100
        plan = _plan(t)  # the trial trained an audio student on the voice clips
        assert plan["modality"] == "voice" and plan["arch"] == t["arch"]
    # the anchor: the default audio student with its constructor defaults, trained first
    first = report["trials"][0]
    assert first["anchor"] and first["state"] == "complete"
    assert first["arch"] == DEFAULT_STUDENT["audio"] == "dscnn_audio"
    assert first["args"] == {"width": 64, "blocks": 4, "kernel_size": 3}
    assert first["recipe"] == "default" and first["lr"] == 0.003
    assert report["anchor"]["trial"] == 0 and report["anchor"]["arch"] == "dscnn_audio"
    assert "anchor (first trial, always trained): the default dscnn_audio" in audio["log"]


def test_the_chosen_audio_student_ships_a_bundle_the_runtime_runs_on_audio(
    audio: dict[str, Any],
) -> None:
    import edgekd.runtime as rt

    report = audio["report"]
    chosen = report["chosen"]
    assert chosen is not None and chosen["arch"] in report["archs"]
    bundle = audio["out"] / "chosen.edgekd"
    model = rt.load(bundle, backend="openvino", precision="int8")
    manifest = model.bundle.manifest
    assert model.spec.kind == "audio" and model.spec.name == "voice"
    assert manifest["model"]["arch"] == chosen["arch"]
    assert model.labels == ["c0", "c1", "c2"]
    # a real clip of the data (0.5 s at 16 kHz), and a 1 s chunk of two clips streamed
    clips = [_wav(audio["root"] / "data" / "voice" / f"c{c}_000.wav") for c in range(3)]
    pred = model.predict(clips[0])
    assert pred.probs.shape == (3,) and pred.labels in model.labels
    assert abs(float(pred.probs.sum()) - 1.0) < 1e-4
    events = model.stream(rate_hz=16000).push(np.concatenate(clips[1:]))
    assert events and all(e.label in model.labels for e in events)


def test_every_point_of_every_audio_students_space_runs_on_log_mel(
    audio: dict[str, Any],
) -> None:
    """The search may draw any point of any student that serves audio: each builds for the
    voice clips' log-mel `(n_mels, frames)` and gives one logit per class."""
    import torch

    from edgekd.data import load_dataset
    from edgekd.modalities import feature_shape
    from edgekd.models import create_student
    from edgekd.search.space import arch_space, enumerate_space

    spec = load_dataset(audio["root"] / "data" / "manifest.jsonl", seed=0).specs["voice"]
    x = torch.randn(2, *feature_shape(spec))
    for arch in audio["report"]["archs"]:
        for point in enumerate_space(arch_space(arch)):
            model = create_student(arch, spec, 3, **point).eval()
            with torch.no_grad():
                assert model(x).shape == (2, 3), (arch, point)


FACE_CARD = {
    "source": "python", "factory": "their_teachers:FaceTeacher", "licence": "MIT",
    "inputs": {"img": {"modality": "face", "size": [16, 16], "layout": "NCHW",
                       "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}},
    "outputs": {"logits": {"name": "logits"}, "embedding": {"name": "emb"}},
    "labels": ["c0", "c1", "c2"],
}  # fmt: skip


def test_an_audio_search_learns_from_an_outside_image_teacher(
    audio: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card teacher reading the faces (a Python factory) for the audio students, run online
    on the raw images; a card teacher reading the raw voice is refused as distill refuses it
    (SpecAugment masks the students' features, which the teacher would not see)."""
    from tests.test_outside_teacher import FACE_TEACHER

    pin_machine(monkeypatch)
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "their_teachers.py").write_text(FACE_TEACHER)
    (folder / "face.yaml").write_text(yaml.safe_dump(FACE_CARD))  # a card of any name
    manifest = audio["root"] / "data" / "manifest.jsonl"
    out = tmp_path / "search"
    base = ["--data", str(manifest), "--trials", "1", "--no-export", *TINY]
    result = _search([*base, "--teacher", str(folder / "face.yaml")], out, audio["prices"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "search.json").read_text())
    assert report["modality"] == "voice" and report["teacher"]["source"] == "python"
    assert report["teacher"]["licence"] == "MIT"
    assert report["teacher"]["card"] == str((folder / "face.yaml").resolve())
    (anchor,) = _trained(report)
    assert anchor["anchor"] and anchor["arch"] == "dscnn_audio"
    plan = _plan(anchor)
    assert plan["modality"] == "voice" and plan["teacher"]["reads"] == ["face"]
    assert plan["teacher"]["mode"] == "online"

    voice = {
        **FACE_CARD,
        "factory": "their_teachers:VoiceTeacher",
        "inputs": {"wav": {"modality": "voice"}},
        "outputs": {"logits": {"name": "0"}},
    }
    (folder / "voice.yaml").write_text(yaml.safe_dump(voice))
    refused = run_cli(["search", *base, "--teacher", str(folder / "voice.yaml"), "--out",
                       str(tmp_path / "v")])  # fmt: skip
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert "no recipe of the search space can learn" in said
    assert "masks the features of voice" in said
    assert not (tmp_path / "v").exists()


def _wav(path: Path) -> np.ndarray:
    """A 16-bit mono .wav as float32 samples in [-1, 1]."""
    with wave.open(str(path), "rb") as f:
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


# --- 2. every teacher form `edgekd distill` accepts --------------------------------------------


@pytest.fixture(scope="module")
def imu(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The paired IMU manifest, and each teacher form by name: the same plain PyTorch teacher as
    ONNX and as a torch.export `.pt2`, each in a folder with its card (teacher.yaml); an edgekd
    teacher run; a `teacher cache` of the ONNX card. `<form>.weights`: the file whose sha256
    the card states."""
    root = tmp_path_factory.mktemp("imu")
    manifest = make_imu_manifest(root / "data")
    model = train_plain_teacher(root / "data")
    (root / "onnx").mkdir()
    (root / "pt2").mkdir()
    onnx = export_onnx(model, root / "onnx" / "plain.onnx")
    pt2 = export_pt2(model, root / "pt2" / "plain.pt2")
    by_position = {"logits": {"name": "0"}, "embedding": {"name": "1"}}  # a returned tuple
    cards = {onnx: card_body(onnx), pt2: card_body(pt2, source="torch_export",
                                                    outputs=by_position)}  # fmt: skip
    for path, body in cards.items():
        (path.parent / "teacher.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    run = root / "run"
    made = run_cli(["teacher", "--data", str(manifest), "--out", str(run), *TEACHER])
    assert made.exit_code == 0, made.output
    cache = root / "cache"
    cached = run_cli(["teacher", "cache", str(root / "onnx" / "teacher.yaml"), "--data",
                      str(manifest), "--out", str(cache)])  # fmt: skip
    assert cached.exit_code == 0, cached.output
    return {
        "manifest": manifest, "run": run,
        "card": root / "onnx" / "teacher.yaml", "card.weights": onnx,
        "folder": root / "onnx", "folder.weights": onnx,
        "onnx": onnx, "onnx.weights": onnx,
        "pt2": pt2, "pt2.weights": pt2,
        "cache": cache, "cache.weights": cache / "outputs.npz",
        "prices": root / "prices.json",
    }  # fmt: skip



# (the form's name in `imu`, whether it needs --data, the provenance source search.json records);
# a card file itself: tests/test_outside_teacher_ablate.py's search test
FORMS = [
    pytest.param("run", True, "edgekd", id="edgekd-run-folder"),
    pytest.param("folder", True, "onnx", id="folder-holding-the-card"),
    pytest.param("onnx", True, "onnx", id="onnx-with-the-card-beside"),
    pytest.param("pt2", True, "torch_export", id="pt2-with-the-card-beside"),
    pytest.param("cache", False, "outputs", id="teacher-cache-knows-its-data"),
]  # fmt: skip


@pytest.mark.parametrize(("form", "needs_data", "source"), FORMS)
def test_search_takes_every_teacher_form_distill_takes(
    imu: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str,
    needs_data: bool, source: str,
) -> None:  # fmt: skip
    pin_machine(monkeypatch)
    teacher = imu[form]
    out = tmp_path / "search"
    data = ["--data", str(imu["manifest"])] if needs_data else []
    args = ["--teacher", str(teacher), "--trials", "1", "--archs", "tcn_tiny", "--no-export",
            *TINY, *data]  # fmt: skip
    result = _search(args, out, imu["prices"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "search.json").read_text())
    # planned on the manifest's default student modality (accel), from the card's data too
    assert report["modality"] == "accel"
    trained = _trained(report)
    assert len(trained) == 1 and trained[0]["anchor"]
    plan = _plan(trained[0])
    assert plan["modality"] == "accel" and plan["source"] == str(imu["manifest"])
    recorded = report["teacher"]
    assert recorded["dir"] == str(teacher.resolve())
    if source == "edgekd":
        assert recorded["source"] == "edgekd" and plan["teacher"]["source"] == "edgekd"
        return
    # an outside teacher's provenance: the weights' (or cached outputs') sha256, binding a resume
    digest = sha256(imu[f"{form}.weights"])
    assert recorded["source"] == source and recorded["sha256"] == digest
    assert recorded["licence"] == "CC-BY-4.0" and recorded["card"].endswith("teacher.yaml")
    assert json.loads((out / "settings.json").read_text())["teacher_card"]["sha256"] == digest
    assert plan["teacher"]["source"] == source and plan["teacher"]["sha256"] == digest
    if form == "cache":  # outputs of clean windows: the trials do not augment
        assert plan["teacher"]["mode"] == "cached" and plan["augment"] == {"accel": "none"}
    said = " ".join(result.output.split())
    assert f"outside teacher {source} sha256 {digest[:12]} on {imu['manifest']}" in said
    # `paper` (soft_teacher_head) needs classifier weights, which no card gives: not searched
    assert "paper" in report["recipes_not_searched"] and "paper" not in report["recipes"]
