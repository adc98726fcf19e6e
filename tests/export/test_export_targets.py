"""Named targets: lookup, precision rules, TensorRT build options, the `edgekd targets` command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import ConfigError
from edgekd.targets import Target, get_target, list_targets

NAMES = ["cpu", "cpu-ort", "x86-nvidia", "jetson-orin-nano", "jetson-agx-orin"]


def test_the_five_targets_and_their_backends() -> None:
    assert [t.name for t in list_targets()] == NAMES
    assert {t.name: t.backend for t in list_targets()} == {
        "cpu": "openvino",
        "cpu-ort": "onnxruntime",
        "x86-nvidia": "tensorrt",
        "jetson-orin-nano": "tensorrt",
        "jetson-agx-orin": "tensorrt",
    }
    assert all(t.precision == "int8" and t.opset == 18 for t in list_targets())


def test_unknown_target_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        get_target("jetson-nano")
    assert "unknown target 'jetson-nano'" in str(err.value)
    for name in NAMES:
        assert name in str(err.value)


def test_precision_default_and_rejection() -> None:
    cpu = get_target("cpu")
    assert cpu.resolve_precision(None) == "int8"
    assert cpu.resolve_precision("fp32") == "fp32"
    with pytest.raises(
        ConfigError, match="does not support precision 'fp16'; choose one of fp32, int8"
    ):
        cpu.resolve_precision("fp16")
    assert get_target("jetson-agx-orin").resolve_precision("fp16") == "fp16"


def test_tensorrt_build_options_per_board() -> None:
    assert get_target("jetson-orin-nano").tensorrt_build("int8") == {
        "precision": "int8",
        "workspace_mib": 512,
        "opset": 18,
        "profiles": {"min": 1, "opt": 1, "max": 32},
        "fp16_fallback": True,
    }
    agx = get_target("jetson-agx-orin").tensorrt_build("fp16")
    assert (agx["workspace_mib"], agx["profiles"]["max"], agx["precision"]) == (2048, 128, "fp16")
    with pytest.raises(ConfigError, match="not a TensorRT target"):
        get_target("cpu").tensorrt_build("int8")


def test_invalid_target_definitions_are_refused() -> None:
    with pytest.raises(ConfigError, match="backend 'tflite'"):
        Target("x", "d", "tflite", "int8", ("int8",), "x86")
    with pytest.raises(ConfigError, match="invalid precision"):
        Target("x", "d", "openvino", "int4", ("int8",), "x86")
    with pytest.raises(ConfigError, match="opt_batch"):
        Target("x", "d", "tensorrt", "int8", ("int8",), "x86", opt_batch=64, max_batch=32)


def test_targets_command_lists_each_with_a_description() -> None:
    result = CliRunner().invoke(app, ["targets"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    assert "Jetson Orin Nano" in lines[3] and "tensorrt" in lines[3]


# --- which formats a target gets (the exporter's table) ---------------------------------------


def _formats(target: Target, precision: str) -> list[str]:
    from edgekd.export.exporter import ExportOptions, _Export, _Steps

    job = _Export(Path("run"), Path("out"), ExportOptions(), target, precision, _Steps(False))
    return [f.name for f in job.formats()]


def test_targets_pick_their_formats_by_precision() -> None:
    cpu = ["onnx_fp32", "openvino_fp32", "onnx_qdq", "openvino_int8"]
    assert _formats(get_target("cpu"), "int8") == cpu
    assert _formats(get_target("cpu-ort"), "fp32") == ["onnx_fp32", "openvino_fp32"]
    assert _formats(get_target("jetson-orin-nano"), "int8") == [*cpu, "tensorrt"]
    # fp16 is built by TensorRT from the FP32 ONNX: no int8 formats
    assert _formats(get_target("x86-nvidia"), "fp16") == ["onnx_fp32", "openvino_fp32", "tensorrt"]


def test_a_new_format_is_one_table_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgekd.export import exporter, formats

    cuda = formats.Format(
        "onnx_cuda", "model.fp32.cuda.onnx", "onnx", "onnxruntime", "fp32",
        lambda job: formats.Built(job.built["onnx_fp32"]), "fp32_cuda",
    )  # fmt: skip
    monkeypatch.setitem(formats.FORMATS, "onnx_cuda", cuda)
    gpu_box = Target(
        name="gpu-ort", description="ONNX Runtime CUDA EP", backend="onnxruntime",
        precision="fp32", precisions=("fp32",), device_family="x86-nvidia",
        formats=("onnx_fp32", "onnx_cuda"),
    )  # fmt: skip
    assert _formats(gpu_box, "fp32") == ["onnx_fp32", "onnx_cuda"]
    monkeypatch.setitem(exporter.__dict__, "get_target", lambda name: Target(
        name="typo", description="", backend="onnxruntime", precision="fp32",
        precisions=("fp32",), device_family="cpu", formats=("onnx_fp32", "onnx_cdua"),
    ))  # fmt: skip
    with pytest.raises(ConfigError, match=r"target 'typo' lists unknown export formats"):
        exporter.ExportOptions(target="typo").resolve(tmp_path / "x.edgekd")


def test_dla_and_allow_float_options_are_checked_before_any_work(tmp_path: Path) -> None:
    from edgekd.export.exporter import ExportOptions

    out = tmp_path / "x.edgekd"
    agx = {"target": "jetson-agx-orin"}
    assert ExportOptions(**agx, dla_core=1).resolve(out) == (get_target("jetson-agx-orin"), "int8")
    cases = [
        ({**agx, "dla_core": 2}, "--dla-core 2: target 'jetson-agx-orin' has cores 0..1"),
        ({**agx, "dla_core": 0, "precision": "fp32"}, "DLA does not run fp32"),
        ({**agx, "dla_core": 0, "trt_frontend": "torch-tensorrt"}, "--trt-frontend onnx"),
        ({"target": "cpu", "dla_core": 0}, "'cpu' is not a TensorRT target"),
        ({"precision": "fp32", "allow_float": ("node_linear",)}, "--allow-float applies to int8"),
        ({"calib": -1}, "--calib must be >= 0 windows, got -1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            ExportOptions(**kwargs).resolve(out)
    assert not out.exists()
