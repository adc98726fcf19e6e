"""`export_run` and `edgekd export` on a real trained HAR student (the session `student_run`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import vnni_cpu
from typer.testing import CliRunner

import edgekd.export.exporter as exporter
import edgekd.runtime as rt
from edgekd.cli import app
from edgekd.errors import BackendUnavailable, BundleError, ConfigError, ExportError
from edgekd.export.exporter import ExportResult, export_run
from edgekd.export.qdq_lint import lint_qdq
from edgekd.export.quantize import data_sha256
from edgekd.targets import get_target

pytestmark = pytest.mark.slow  # each export takes ~10 s on two cores
CALIB = 256
# PTQ int8 of this student loses ~0.1-0.3 points against torch FP32 on its 1024 eval windows.
# The bound is what the export promises at its default gate (--max-drop 1) plus a margin of
# ~5 windows on a VNNI CPU: a bound of several points there lets a broken quantizer pass.
# (Where a CPU loses more, e.g. OpenVINO int8 on AVX2 without VNNI, whose u8 x s8 pair sums can
# saturate int16, the default gate refuses that export too: a quantizer fix; until then such a
# CPU keeps the 6-point bound it always had, so the suite holds on any x86 CPU.)
# test_accuracy_drop_over_the_limit_writes_nothing tests the gate itself.
MAX_DROP = 1.5 if vnni_cpu() else 6.0


@pytest.fixture(scope="module")
def cpu_bundle(student_run: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    out = tmp_path_factory.mktemp("bundles") / "har.edgekd"
    return export_run(
        student_run, out, target="cpu", calib=CALIB, max_drop=MAX_DROP, progress=False
    )


def test_bundle_layout_and_manifest(cpu_bundle: ExportResult) -> None:
    out, manifest = cpu_bundle.out, cpu_bundle.manifest
    assert json.loads((out / "manifest.json").read_text()) == manifest
    listed = {(a["path"], a["format"], a["precision"]) for a in manifest["artifacts"]}
    assert listed == {
        ("model.fp32.onnx", "onnx", "fp32"),
        ("model.int8.qdq.onnx", "onnx", "int8"),
        ("openvino/model.fp32.xml", "openvino_xml", "fp32"),
        ("openvino/model.fp32.bin", "openvino_bin", "fp32"),
        ("openvino/model.int8.xml", "openvino_xml", "int8"),
        ("openvino/model.int8.bin", "openvino_bin", "int8"),
    }
    rt.verify_bundle(out)  # every sha256 and size
    assert manifest["io"]["input"] == {
        "name": "input",
        "shape": ["batch", 3, 128],
        "dtype": "float32",
    }
    assert manifest["io"]["output"]["shape"] == ["batch", 12]
    assert manifest["target"] == {
        "name": "cpu",
        "backend": "openvino",
        "precision": "int8",
        "device_family": "x86",
    }
    assert manifest["model"]["arch"] == "tcn_tiny" and manifest["model"]["params"] > 1000
    assert "tensorrt_build" not in manifest
    qdq = next(a for a in manifest["artifacts"] if a["path"] == "model.int8.qdq.onnx")
    assert qdq["quantizer"] == "ort-ptq-minmax"
    assert lint_qdq(out / "model.int8.qdq.onnx") == []
    ir8 = next(a for a in manifest["artifacts"] if a["path"] == "openvino/model.int8.xml")
    assert ir8["int8_check"]["int8_layers"] == ir8["int8_check"]["weighted_layers"] > 0
    assert cpu_bundle.sizes["model.int8.qdq.onnx"] < cpu_bundle.sizes["model.fp32.onnx"]
    assert set(cpu_bundle.timings) >= {"load", "onnx", "ptq", "accuracy", "write", "total"}


def test_calibration_record_matches_the_training_windows(
    cpu_bundle: ExportResult, student_run: Path
) -> None:
    from edgekd.checkpoint import load_run
    from edgekd.data import load_dataset
    from edgekd.modalities import ModalitySpec, preprocess

    record = cpu_bundle.manifest["calibration"]
    assert (record["method"], record["samples"], record["source"]) == ("minmax", CALIB, "har:train")
    # Recompute: CALIB seeded windows of the run's own (--limit 1500) labelled training windows,
    # preprocessed with the normalisation it was trained with.
    run = load_run(student_run)
    side = run.sidecar
    assert run.config.data.limit == 1500
    train = load_dataset("har", limit=1500, seed=run.config.train.seed).splits["train"]
    raw = train.x["accel"][train.y >= 0]
    pick = np.sort(np.random.default_rng(0).choice(len(raw), CALIB, replace=False))
    feats = preprocess(ModalitySpec.from_dict(side["specs"]["accel"]), raw[pick])
    assert record["data_sha256"] == data_sha256(feats.astype(np.float32))


def test_accuracy_report_and_eval_windows(cpu_bundle: ExportResult) -> None:
    acc = cpu_bundle.manifest["accuracy"]
    assert list(acc) == ["torch_fp32", "fp32", "fp32_openvino", "int8_onnxruntime", "int8_openvino"]
    with np.load(cpu_bundle.out.parent / "har.eval.npz") as ev:  # beside the bundle
        x, y = ev["x"], ev["y"]
    assert x.shape[1:] == (128, 3) and y.dtype == np.int64 and 0 < len(y) <= 1024
    assert all(v["n"] == len(y) for v in acc.values())
    assert (
        acc["fp32"]["accuracy"] == acc["torch_fp32"]["accuracy"] == acc["fp32_openvino"]["accuracy"]
    )
    for key in ("int8_onnxruntime", "int8_openvino"):
        assert 100 * (acc["torch_fp32"]["accuracy"] - acc[key]["accuracy"]) <= MAX_DROP
    # The report is what the runtime gives on the bundled eval windows.
    model = rt.load(cpu_bundle.out, backend="openvino", precision="int8")
    assert float((model.predict(x).index == y).mean()) == acc["int8_openvino"]["accuracy"]
    with np.load(cpu_bundle.out / "golden.npz") as golden:
        assert golden["x"].shape == (8, 128, 3) and np.allclose(
            golden["probs"].sum(1), 1, atol=1e-5
        )
    assert model.self_check()["top1_agreement"] >= 0.875


def test_accuracy_drop_over_the_limit_writes_nothing(
    student_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measure = exporter._Export._measure

    def degraded(self: exporter._Export, probe: Path, manifest: dict) -> None:
        measure(self, probe, manifest)  # the real measurement, then 5 points off OpenVINO int8
        row = self.accuracy["int8_openvino"]
        self.accuracy["int8_openvino"] = {**row, "accuracy": row["accuracy"] - 0.05}

    monkeypatch.setattr(exporter._Export, "_measure", degraded)
    out = tmp_path / "fail.edgekd"
    with pytest.raises(ExportError) as err:
        export_run(student_run, out, target="cpu", calib=CALIB, max_drop=1.0, progress=False)
    text = str(err.value)
    assert "accuracy drop over --max-drop 1 points for int8_openvino; no bundle written" in text
    assert "model / backend" in text and "> limit" in text
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no staging folder left either


def test_bad_options_fail_before_any_work(student_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.edgekd"
    with pytest.raises(ConfigError, match="run folder not found"):
        export_run(tmp_path / "nope", out, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no checkpoint.json"):
        export_run(tmp_path / "empty", out, progress=False)
    with pytest.raises(ConfigError, match="unknown target 'tpu'; valid targets: cpu, cpu-ort"):
        export_run(student_run, out, target="tpu", progress=False)
    with pytest.raises(ConfigError, match="int8 needs calibration data, but --calib is 0"):
        export_run(student_run, out, calib=0, progress=False)
    with pytest.raises(ConfigError, match="--qat trains for int8, but the precision is fp32"):
        export_run(student_run, out, precision="fp32", qat=True, progress=False)
    with pytest.raises(ConfigError, match="does not support precision 'fp16'"):
        export_run(student_run, out, target="cpu-ort", precision="fp16", progress=False)
    with pytest.raises(BackendUnavailable, match="torch-tensorrt package"):
        export_run(
            student_run, out, target="x86-nvidia", trt_frontend="torch-tensorrt", progress=False
        )
    with pytest.raises(ConfigError, match="more than the .* training windows of har"):
        export_run(student_run, out, calib=10**6, progress=False)
    assert not out.exists()


def test_teacher_run_is_refused(teacher_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a 'teacher' run, expected a student run"):
        export_run(teacher_run, tmp_path / "t.edgekd", progress=False)


# --- the command ------------------------------------------------------------------------------


def test_cli_export_signs_with_the_key_and_keeps_eval_inside(
    student_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgekd.runtime.integrity import SIGNATURE, keygen

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))  # signed reads keep a record
    private, public = keygen(tmp_path / "keys")
    other_private, other_public = keygen(tmp_path / "other")
    out = tmp_path / "signed.edgekd"
    result = _cli(["export", str(student_run), "--out", str(out), "--target", "cpu-ort",
                   "--calib", "64", "--max-drop", "100", "--sign-key", str(private),
                   "--with-eval", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    # --sign-key: signed by that key over the published manifest; another key is refused.
    bundle = rt.read_bundle(out, verify=True, trusted_keys=[public])
    record = json.loads((out / SIGNATURE).read_text())
    assert bundle.signer == record["key_id"] and record["manifest_sha256"] == bundle.digest
    with pytest.raises(BundleError, match="not among the trusted keys"):
        rt.read_bundle(out, trusted_keys=[other_public])
    # --with-eval: the held-out windows inside the bundle, listed and checked, none beside it.
    assert bundle.manifest["eval"]["path"] == "eval.npz"
    assert not (tmp_path / "signed.eval.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "keys", "other", "signed.edgekd"]
    with np.load(out / "eval.npz") as ev:
        x, y = ev["x"], ev["y"]
    acc = bundle.manifest["accuracy"]
    assert x.shape[1:] == (128, 3) and len(y) == acc["int8_onnxruntime"]["n"] > 0
    model = rt.load(out, backend="onnxruntime", precision="int8", trusted_keys=[public])
    assert float((model.predict(x).index == y).mean()) == acc["int8_onnxruntime"]["accuracy"]
    # Without the flags: unsigned, the windows beside the bundle.
    plain = tmp_path / "plain.edgekd"
    result = _cli(["export", str(student_run), "--out", str(plain), "--target", "cpu-ort",
                   "--calib", "64", "--max-drop", "100", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (plain / SIGNATURE).exists() and not (plain / "eval.npz").exists()
    assert (tmp_path / "plain.eval.npz").is_file()
    with pytest.raises(BundleError, match="unsigned bundle"):
        rt.read_bundle(plain, trusted_keys=[public])


def _cli(args: list[str]) -> object:
    return CliRunner().invoke(app, args)


def test_cli_errors_are_one_line_with_exit_code_2(student_run: Path, tmp_path: Path) -> None:
    existing = tmp_path / "there.edgekd"
    existing.mkdir()
    cases = [
        ([str(tmp_path / "missing"), "--out", str(tmp_path / "a.edgekd")], "run folder not found"),
        (
            [str(student_run), "--out", str(tmp_path / "a.edgekd"), "--target", "gpu"],
            "valid targets: cpu, cpu-ort, x86-nvidia, jetson-orin-nano, jetson-agx-orin",
        ),
        (
            [str(student_run), "--out", str(tmp_path / "a.edgekd"), "--calib", "0"],
            "int8 needs calibration data",
        ),
        ([str(student_run), "--out", str(existing)], "already exists; pass --force"),
        (  # refused before the export runs, not after it
            [str(student_run), "--out", str(existing), "--force"],
            "refusing to replace " + str(existing) + ": it holds no manifest.json",
        ),
        (
            [str(student_run), "--out", str(tmp_path / "a.edgekd"), "--ptq", "kl"],
            "--ptq 'kl' is not one of minmax, percentile, entropy",
        ),
        (
            [str(student_run), "--out", str(tmp_path / "a.edgekd"), "--allow-float", "conv9"],
            "conv9 (?): allow_float names no Conv/ConvTranspose/Gemm/MatMul node",
        ),
    ]
    for args, message in cases:
        result = _cli(["export", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, result.output
    assert not (tmp_path / "a.edgekd").exists()


def test_cli_jetson_export_without_tensorrt_says_where_the_engine_comes_from(
    student_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "orin.edgekd"
    out.mkdir()
    # an old bundle (its manifest says what it is): replaced only with --force
    (out / "manifest.json").write_text('{"format": "edgekd-bundle", "schema_version": 1}')
    result = _cli(
        [
            "export",
            str(student_run),
            "--out",
            str(out),
            "--target",
            "jetson-orin-nano",
            "--precision",
            "fp16",
            "--force",
            "-q",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "TensorRT engine not built here" in result.output
    assert "engine is built on the jetson-orin-nano device at first load" in result.output
    manifest = rt.read_bundle(out).manifest
    assert manifest["tensorrt_build"] == get_target("jetson-orin-nano").tensorrt_build("fp16")
    assert {a["precision"] for a in manifest["artifacts"]} == {"fp32"}  # fp16 is built on device
    assert "calibration" not in manifest
    assert not any(a["format"] == "tensorrt_engine" for a in manifest["artifacts"])


def test_qat_export_distils_from_the_sidecar_teacher(student_run: Path, tmp_path: Path) -> None:
    result = export_run(
        student_run, tmp_path / "qat.edgekd", target="cpu-ort", calib=64, qat=True, qat_epochs=1,
        max_drop=100.0, progress=False,
    )  # fmt: skip
    manifest = result.manifest
    record = manifest["calibration"]
    # The student was distilled with logit KD ("kd" recipe); QAT repeats task + logit KD with
    # the run's weights and tau, and the teacher from the sidecar.
    from edgekd.checkpoint import load_run
    from edgekd.export.qat import describe_loss, qat_loss_config

    distill = load_run(student_run).config.distill
    assert record["method"] == "qat" and "logit_kd" in record["loss"]
    assert record["loss"] == describe_loss(qat_loss_config(distill, has_teacher=True))
    assert record["history"][0]["classifier"] > 0
    assert record["samples"] == 1500  # the windows the student was trained on (its --limit)
    qdq = next(a for a in manifest["artifacts"] if a["path"] == "model.int8.qdq.onnx")
    assert qdq["quantizer"] == "torchao-qat-pt2e"
    assert lint_qdq(result.out / "model.int8.qdq.onnx") == []
    acc = manifest["accuracy"]
    assert {"ptq_minmax", "qat_fake_quant", "int8_onnxruntime", "int8_openvino"} <= set(acc)
    # The exported QDQ model scores what the fake-quantized torch model scored (within 1 point).
    assert abs(acc["int8_onnxruntime"]["accuracy"] - acc["qat_fake_quant"]["accuracy"]) <= 0.01
