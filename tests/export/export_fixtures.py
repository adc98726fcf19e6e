"""Shared pieces of the export tests: real HAR accelerometer windows and a small CNN.

The CNN (Conv1d/BatchNorm/ReLU/MaxPool, Conv1d/BatchNorm/ReLU, mean pool, Linear over
(B, 3, 128)) is trained for a few seconds on real windows so that accuracies and int8 rounding
are those of a real model, not of random weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

TRAIN_N = 1536
TEST_N = 512
NUM_CLASSES = 12


class SmallNet(nn.Module):
    """A student-shaped CNN over (B, 3, 128) accelerometer features."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(3, 16, 5, padding=2),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.embed_dim = 32
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class HarFeatures:
    """Preprocessed (normalised) HAR accelerometer windows (N, 3, 128) and labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_har_features() -> HarFeatures:
    """TRAIN_N / TEST_N seeded windows of the real HAR train / test splits, preprocessed."""
    from edgekd.data import load_dataset
    from edgekd.modalities import preprocess

    ds = load_dataset("har")
    spec = ds.specs["accel"]
    rng = np.random.default_rng(0)
    train, test = ds.splits["train"], ds.splits["test"]
    tr = np.sort(rng.choice(len(train), TRAIN_N, replace=False))
    te = np.sort(rng.choice(len(test), TEST_N, replace=False))
    return HarFeatures(
        preprocess(spec, train.x["accel"][tr]),
        train.y[tr],
        preprocess(spec, test.x["accel"][te]),
        test.y[te],
    )


def train_small_net(har: HarFeatures, epochs: int = 4) -> SmallNet:
    """SmallNet trained with Adam on the HAR windows (a few seconds), in eval mode."""
    torch.manual_seed(0)
    net = SmallNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(har.train_x), torch.from_numpy(har.train_y)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(net(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def vnni_cpu() -> bool:
    """Whether this x86 CPU has VNNI (AVX-512 VNNI, AVX-VNNI or AMX): int8 dot products without
    the int16 saturation of AVX2's u8 x s8 pair sums, which costs OpenVINO int8 ~4 points here."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))

