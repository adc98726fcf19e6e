"""Named targets: lookup, precision rules, TensorRT build options, the `edgekd targets` command."""

from __future__ import annotations

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
