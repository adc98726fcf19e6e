"""Fixtures for the export tests (see export_fixtures.py): real HAR windows, a trained CNN, its
FP32 ONNX and PTQ int8 ONNX, each made once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `import export_fixtures` from the test modules

from export_fixtures import HarFeatures, SmallNet, load_har_features, train_small_net  # noqa: E402

from edgekd.export.onnx import export_onnx  # noqa: E402
from edgekd.export.quantize import quantize_ptq  # noqa: E402


@pytest.fixture(scope="session")
def har() -> HarFeatures:
    return load_har_features()


@pytest.fixture(scope="session")
def trained_net(har: HarFeatures) -> SmallNet:
    return train_small_net(har)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def fp32_onnx(trained_net: SmallNet, har: HarFeatures, onnx_dir: Path) -> Path:
    return export_onnx(trained_net, torch.from_numpy(har.test_x[:4]), onnx_dir / "net.fp32.onnx")


@pytest.fixture(scope="session")
def ptq_onnx(fp32_onnx: Path, har: HarFeatures, onnx_dir: Path) -> Path:
    return quantize_ptq(fp32_onnx, onnx_dir / "net.int8.onnx", har.train_x[:256], "minmax")
