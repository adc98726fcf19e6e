"""Small single-modality students: input `(B, C, T)` (timeseries: channels x samples; audio:
n_mels x frames), output logits. Exportable to ONNX opset 18 with a dynamic batch and runnable by
TensorRT and OpenVINO, also as int8 Q/DQ: Conv (1-D, or 2-D for BC-ResNet), BatchNorm, ReLU, Add
(with broadcasting), Pad, Unsqueeze, ReduceMean and Gemm only.

Parameter counts (num_classes=12; 3-channel 128-sample input for TCNs and DS-ResNet, 40 mels x
98 frames for the audio students):
tcn_tiny width 8: 1,492; 16: 5,532; 24: 12,132; 32 (default): 21,292; 40: 33,012;
tcn_small (width 64, 5 levels): 104,140; dscnn_audio (width 64, default): 26,764;
dsres_ts (default): 5,100; bcresnet_audio (width 8, default): 4,380.
(`tests/test_models.py::test_student_param_counts` pins these numbers.)

Each student registers a search space beside its constructor (`space=`): a pure function of an
Optuna trial returning constructor keywords, drawn from finite choices (see `edgekd search`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.encoders import (
    BroadcastResidualBlock,
    CausalResidualBlock,
    ConvBNReLU1d,
    DepthwiseSeparableBlock,
    DownsampleDS1d,
    HeadedModel,
    _positive,
)
from edgekd.models.registry import register_student


def _odd(kernel_size: int, owner: str) -> None:
    if kernel_size % 2 == 0:
        raise ConfigError(f"{owner}: kernel_size must be odd to keep the length, got {kernel_size}")


def _channels_time(input_shape: Sequence[int], name: str) -> int:
    if len(input_shape) != 2:
        raise ConfigError(
            f"student {name!r} takes per-sample input (channels, time); "
            f"got shape {tuple(input_shape)}"
        )
    return int(input_shape[0])


class TCN(HeadedModel):
    """Causal temporal CNN: 1x1 stem, `levels` residual dilated causal conv blocks (dilation
    1, 2, 4, ...), mean over time, linear classifier.

    Every block output at time t depends on inputs at times <= t only, so the features before the
    pooling can be computed incrementally on a stream. Receptive field of the last block:
    1 + (kernel_size - 1) * (2**levels - 1) samples (61 for the defaults).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 32,
        levels: int = 4,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("levels", levels), ("kernel_size", kernel_size)):
            _positive(name, value, "TCN")
        cin = _channels_time(input_shape, "tcn")
        self.stem = ConvBNReLU1d(cin, width, 1)
        self.blocks = nn.Sequential(
            *(CausalResidualBlock(width, kernel_size, dilation=2**i) for i in range(levels))
        )
        self.embed_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=-1)


class DSCNN(HeadedModel):
    """Depthwise-separable 1-D CNN over log-mel frames (Hello-Edge DS-CNN, 1-D form): a
    k=3 conv mixing all mel bands, `blocks` residual depthwise-separable blocks, mean over time.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 64,
        blocks: int = 4,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("blocks", blocks), ("kernel_size", kernel_size)):
            _positive(name, value, "DSCNN")
        _odd(kernel_size, "DSCNN")
        cin = _channels_time(input_shape, "dscnn_audio")
        self.stem = ConvBNReLU1d(cin, width, 3)
        self.blocks = nn.Sequential(
            *(DepthwiseSeparableBlock(width, kernel_size) for _ in range(blocks))
        )
        self.embed_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=-1)


class DSResNet(HeadedModel):
    """Depthwise-separable residual 1-D net for sensor windows: a conv stem, then `stages` stages
    of `blocks` residual depthwise-separable blocks; each stage after the first starts with a
    stride-2 depthwise-separable transition that halves the length and doubles the width; mean
    over time. Depthwise kernels buy a wide receptive field for few parameters and MACs.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 16,
        stages: int = 2,
        blocks: int = 2,
        kernel_size: int = 7,
    ) -> None:
        super().__init__()
        for name, value in (
            ("width", width), ("stages", stages), ("blocks", blocks), ("kernel_size", kernel_size)
        ):  # fmt: skip
            _positive(name, value, "DSResNet")
        _odd(kernel_size, "DSResNet")
        cin = _channels_time(input_shape, "dsres_ts")
        self.stem = ConvBNReLU1d(cin, width, kernel_size)
        layers: list[nn.Module] = []
        c = width
        for stage in range(stages):
            if stage:
                layers.append(DownsampleDS1d(c, 2 * c, kernel_size))
                c *= 2
            layers += [DepthwiseSeparableBlock(c, kernel_size) for _ in range(blocks)]
        self.blocks = nn.Sequential(*layers)
        self.embed_dim = c
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=-1)


class BCResNet(HeadedModel):
    """BC-ResNet-style audio student on log-mel `(n_mels, frames)`, treated as a 1-channel
    (F, T) image: a 5x5 conv stem (stride 2 along F) to 2 * width channels, then `stages`
    stages of `blocks` broadcasted-residual blocks (`BroadcastResidualBlock`) with
    round(width * (1 + stage / 2)) channels (8, 12, 16, 20 at width 8, as BC-ResNet-1), the
    2nd and 3rd stages halving F, temporal dilation 2**stage; mean over (F, T).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 8,
        stages: int = 4,
        blocks: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("stages", stages), ("blocks", blocks)):
            _positive(name, value, "BCResNet")
        _channels_time(input_shape, "bcresnet_audio")
        c = 2 * width
        self.stem = nn.Sequential(
            nn.Conv2d(1, c, 5, stride=(2, 1), padding=2, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )
        layers: list[nn.Module] = []
        for stage in range(stages):
            cout = round(width * (1 + stage / 2))
            for i in range(blocks):
                stride = 2 if i == 0 and stage in (1, 2) else 1
                layers.append(
                    BroadcastResidualBlock(c, cout, freq_stride=stride, dilation=2**stage)
                )
                c = cout
        self.blocks = nn.Sequential(*layers)
        self.embed_dim = c
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x.unsqueeze(1))).mean(dim=(2, 3))


# --- search spaces: `space(trial) -> constructor keywords`, beside each constructor ---------


def tcn_tiny_space(trial: Any) -> dict[str, Any]:
    """Edge-sized TCNs: 1.5k (width 8) to about 75k parameters (width 48, 5 levels, k 7)."""
    return {
        "width": trial.suggest_categorical("width", [8, 16, 24, 32, 40, 48]),
        "levels": trial.suggest_int("levels", 2, 5),
        "kernel_size": trial.suggest_categorical("kernel_size", [3, 5, 7]),
    }


def tcn_small_space(trial: Any) -> dict[str, Any]:
    """Wider, deeper TCNs (about 50k to 300k parameters) for targets with headroom."""
    return {
        "width": trial.suggest_categorical("width", [48, 64, 96]),
        "levels": trial.suggest_int("levels", 4, 6),
        "kernel_size": trial.suggest_categorical("kernel_size", [3, 5]),
    }


def dscnn_space(trial: Any) -> dict[str, Any]:
    return {
        "width": trial.suggest_categorical("width", [32, 48, 64, 96]),
        "blocks": trial.suggest_int("blocks", 2, 5),
        "kernel_size": trial.suggest_categorical("kernel_size", [3, 5, 7]),
    }


def dsres_space(trial: Any) -> dict[str, Any]:
    return {
        "width": trial.suggest_categorical("width", [8, 12, 16, 24, 32]),
        "stages": trial.suggest_int("stages", 1, 3),
        "blocks": trial.suggest_int("blocks", 1, 3),
        "kernel_size": trial.suggest_categorical("kernel_size", [3, 5, 7, 9]),
    }


def bcresnet_space(trial: Any) -> dict[str, Any]:
    return {
        "width": trial.suggest_categorical("width", [4, 6, 8, 12, 16]),
        "stages": trial.suggest_int("stages", 2, 4),
        "blocks": trial.suggest_int("blocks", 1, 3),
    }


@register_student("tcn_tiny", space=tcn_tiny_space)
def tcn_tiny(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 32,
    levels: int = 4,
    kernel_size: int = 5,
) -> TCN:
    """The default edge student (21,292 parameters at width 32, 3 channels, 12 classes)."""
    return TCN(input_shape, num_classes, width=width, levels=levels, kernel_size=kernel_size)


@register_student("tcn_small", space=tcn_small_space)
def tcn_small(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 64,
    levels: int = 5,
    kernel_size: int = 5,
) -> TCN:
    """A wider, deeper TCN (104,140 parameters) for targets with more headroom."""
    return TCN(input_shape, num_classes, width=width, levels=levels, kernel_size=kernel_size)


@register_student("dscnn_audio", kinds=("audio", "timeseries"), space=dscnn_space)
def dscnn_audio(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 64,
    blocks: int = 4,
    kernel_size: int = 3,
) -> DSCNN:
    """Depthwise-separable CNN on log-mel `(n_mels, frames)` (about 27k parameters at 40 mels)."""
    return DSCNN(input_shape, num_classes, width=width, blocks=blocks, kernel_size=kernel_size)


@register_student("dsres_ts", kinds=("timeseries",), space=dsres_space)
def dsres_ts(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 16,
    stages: int = 2,
    blocks: int = 2,
    kernel_size: int = 7,
) -> DSResNet:
    """Depthwise-separable residual net for sensor windows (5,100 parameters by default)."""
    return DSResNet(
        input_shape, num_classes, width=width, stages=stages, blocks=blocks,
        kernel_size=kernel_size,
    )  # fmt: skip


@register_student("bcresnet_audio", kinds=("audio",), space=bcresnet_space)
def bcresnet_audio(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 8,
    stages: int = 4,
    blocks: int = 2,
) -> BCResNet:
    """BC-ResNet-style broadcasted-residual audio student (4,380 parameters at 40 mels)."""
    return BCResNet(input_shape, num_classes, width=width, stages=stages, blocks=blocks)
