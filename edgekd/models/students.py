"""Small single-modality students: input `(B, C, T)` (timeseries: channels x samples; audio:
n_mels x frames), output logits. Exportable to ONNX opset 18 with a dynamic batch and runnable by
TensorRT and OpenVINO: Conv1d, BatchNorm, ReLU, Add, Pad, ReduceMean and Gemm only.

Parameter counts (num_classes=12; 3-channel input for TCNs, 40 mels for DS-CNN):
tcn_tiny width 8: 1,492; 16: 5,532; 24: 12,132; 32 (default): 21,292; 40: 33,012;
tcn_small (width 64, 5 levels): 104,140; dscnn_audio (width 64, default): 26,764.
(`tests/test_models.py::test_student_param_counts` pins these numbers.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.encoders import (
    CausalResidualBlock,
    ConvBNReLU1d,
    DepthwiseSeparableBlock,
    HeadedModel,
    _positive,
)
from edgekd.models.registry import register_student


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
        if kernel_size % 2 == 0:
            raise ConfigError(
                f"DSCNN: kernel_size must be odd to keep the length, got {kernel_size}"
            )
        cin = _channels_time(input_shape, "dscnn_audio")
        self.stem = ConvBNReLU1d(cin, width, 3)
        self.blocks = nn.Sequential(
            *(DepthwiseSeparableBlock(width, kernel_size) for _ in range(blocks))
        )
        self.embed_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=-1)


@register_student("tcn_tiny")
def tcn_tiny(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 32,
    levels: int = 4,
    kernel_size: int = 5,
) -> TCN:
    """The default edge student (21,292 parameters at width 32, 3 channels, 12 classes)."""
    return TCN(input_shape, num_classes, width=width, levels=levels, kernel_size=kernel_size)


@register_student("tcn_small")
def tcn_small(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 64,
    levels: int = 5,
    kernel_size: int = 5,
) -> TCN:
    """A wider, deeper TCN (104,140 parameters) for targets with more headroom."""
    return TCN(input_shape, num_classes, width=width, levels=levels, kernel_size=kernel_size)


@register_student("dscnn_audio", kinds=("audio", "timeseries"))
def dscnn_audio(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 64,
    blocks: int = 4,
    kernel_size: int = 3,
) -> DSCNN:
    """Depthwise-separable CNN on log-mel `(n_mels, frames)` (about 27k parameters at 40 mels)."""
    return DSCNN(input_shape, num_classes, width=width, blocks=blocks, kernel_size=kernel_size)
