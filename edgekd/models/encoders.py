"""Building blocks shared by students and teachers.

Everything here uses only Conv1d/Conv2d, BatchNorm, ReLU, Add, Pad, mean reduction and Linear:
operators that ONNX (opset 18), TensorRT and OpenVINO all run, quantized or not. No forward pass
branches on data, so `torch.export` traces every model in one graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import ConfigError

ENCODER_KINDS: dict[str, str] = {"timeseries": "conv1d", "audio": "conv1d", "image": "conv2d"}


def _positive(name: str, value: int, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: {name} must be a positive int, got {value!r}")


class HeadedModel(nn.Module):
    """A backbone `forward_features(x) -> (B, embed_dim)` plus `classifier: nn.Linear`.

    `forward(x)` returns logits `(B, num_classes)`. Subclasses set `embed_dim` and `classifier`.
    """

    embed_dim: int
    classifier: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class ConvBNReLU1d(nn.Sequential):
    """Conv1d ('same' length for odd kernels) -> BatchNorm1d -> ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        groups: int = 1,
        stride: int = 1,
    ) -> None:
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv1d(
                cin,
                cout,
                kernel_size,
                stride=stride,
                padding=pad,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm1d(cout),
            nn.ReLU(),
        )


class CausalResidualBlock(nn.Module):
    """x + ReLU(BN(dilated Conv1d(left-padded x))): output at t sees inputs <= t only.

    Causality comes from padding `dilation * (kernel_size - 1)` zeros on the left and none on the
    right, so the convolution never reads a future sample; the residual keeps the length.
    """

    def __init__(self, width: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left_pad = dilation * (kernel_size - 1)
        self.conv = nn.Conv1d(width, width, kernel_size, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(width)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.bn(self.conv(F.pad(x, (self.left_pad, 0)))))


class DepthwiseSeparableBlock(nn.Module):
    """x + pointwise(depthwise(x)), each conv followed by BatchNorm and ReLU (MobileNet/DS-CNN)."""

    def __init__(self, width: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU1d(width, width, kernel_size, groups=width)
        self.pointwise = ConvBNReLU1d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(self.depthwise(x))


class DownsampleDS1d(nn.Sequential):
    """Stride-2 depthwise conv then a pointwise conv to `cout` channels (each + BN + ReLU): halves
    the length and changes the width between stages of a depthwise-separable net."""

    def __init__(self, cin: int, cout: int, kernel_size: int) -> None:
        super().__init__(
            ConvBNReLU1d(cin, cin, kernel_size, groups=cin, stride=2),
            ConvBNReLU1d(cin, cout, 1),
        )


class BroadcastResidualBlock(nn.Module):
    """BC-ResNet's block on a (B, C, F, T) map (Kim et al. 2021, broadcasted residual learning).

    f2: a frequency-wise depthwise (3 x 1) conv + BN (stride `freq_stride` along F); f1: the
    frequency-averaged f2 output (B, C, 1, T) through a temporal depthwise (1 x 3) conv (dilation
    `dilation`) + BN + ReLU and a pointwise conv; out = ReLU(x + f2 + f1), f1 broadcast over F.
    A transition block (cin != cout, or a stride) first maps x with a pointwise conv + BN + ReLU
    and has no identity term (shapes differ). Ops: Conv, BatchNormalization, Relu, ReduceMean,
    Add with broadcasting: all run in TensorRT and OpenVINO, also as int8 Q/DQ.
    """

    def __init__(self, cin: int, cout: int, *, freq_stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.identity = cin == cout and freq_stride == 1
        self.pre = (
            nn.Identity()
            if cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        )
        self.freq = nn.Sequential(
            nn.Conv2d(
                cout, cout, (3, 1), stride=(freq_stride, 1), padding=(1, 0), groups=cout,
                bias=False,
            ),
            nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.temporal = nn.Sequential(
            nn.Conv2d(
                cout, cout, (1, 3), padding=(0, dilation), dilation=(1, dilation), groups=cout,
                bias=False,
            ),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 1, bias=False),
        )  # fmt: skip
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        f2 = self.freq(x)
        out = f2 + self.temporal(f2.mean(dim=2, keepdim=True))
        if self.identity:
            out = out + x
        return self.act(out)


class Conv1dEncoder(nn.Module):
    """(B, C, T) -> (B, width): `depth` conv blocks (stride 2 after the first), mean over time."""

    def __init__(
        self, in_channels: int, width: int = 64, depth: int = 3, kernel_size: int = 5
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("depth", depth), ("kernel_size", kernel_size)):
            _positive(name, value, "Conv1dEncoder")
        layers = [ConvBNReLU1d(in_channels, width, kernel_size)]
        layers += [ConvBNReLU1d(width, width, kernel_size, stride=2) for _ in range(depth - 1)]
        self.body = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=-1)


class Conv2dEncoder(nn.Module):
    """(B, C, H, W) -> (B, width): `depth` stride-2 3x3 conv blocks, mean over space."""

    def __init__(self, in_channels: int, width: int = 64, depth: int = 3) -> None:
        super().__init__()
        for name, value in (("width", width), ("depth", depth)):
            _positive(name, value, "Conv2dEncoder")
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(cin, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            cin = width
        self.body = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(-2, -1))


def make_encoder(kind: str, input_shape: Sequence[int], width: int, depth: int) -> nn.Module:
    """The encoder for one modality kind; `input_shape` is the per-sample feature shape."""
    if kind not in ENCODER_KINDS:
        raise ConfigError(
            f"no encoder for modality kind {kind!r}; known: {', '.join(ENCODER_KINDS)}"
        )
    expected_rank = 2 if ENCODER_KINDS[kind] == "conv1d" else 3
    if len(input_shape) != expected_rank:
        raise ConfigError(
            f"a {kind} encoder takes per-sample shape of rank {expected_rank}, "
            f"got {tuple(input_shape)}"
        )
    if ENCODER_KINDS[kind] == "conv1d":
        return Conv1dEncoder(input_shape[0], width, depth)
    return Conv2dEncoder(input_shape[0], width, depth)
