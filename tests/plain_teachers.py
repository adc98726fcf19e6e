"""Teachers made the way a user makes them, without edgekd: a small paired IMU manifest, a
PyTorch model trained in plain PyTorch and saved as ONNX and torch.export `.pt2`, and a
scikit-learn model converted by skl2onnx. Nothing here imports edgekd.

Data: class c of `CLASSES` is a 2 + 2c Hz rotation seen clearly by the gyroscope (amplitude 1,
noise 0.3) and faintly by the accelerometer (amplitude 0.3, noise 0.3, gravity 9.8 on z), 50 Hz,
128-sample recordings cut into windows of 64 every 32 samples (3 windows each). Subjects
u0..u5; u5 is the test subject. `unlabelled` extra train recordings have "label": null.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

RATE_HZ = 50
WINDOW, HOP, LENGTH = 64, 32, 128
CLASSES = ("c0", "c1", "c2")
# The teacher's own class order, unlike the data's sorted one: a card must say it.
TEACHER_LABELS = ("c2", "c0", "c1")
HEADER = """\
modalities:
  accel: {kind: timeseries, rate_hz: 50, channels: 3, window: 64, hop: 32}
  gyro: {kind: timeseries, rate_hz: 50, channels: 3, window: 64, hop: 32}
student: accel
"""


def _recording(cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(LENGTH) / RATE_HZ
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.stack([np.sin(2 * np.pi * (2 + 2 * cls) * t + phase + k) for k in range(3)], 1)
    gyro = wave + rng.normal(0, 0.3, (LENGTH, 3))
    accel = 0.3 * wave + rng.normal(0, 0.3, (LENGTH, 3)) + np.array([0.0, 0.0, 9.8])
    return accel.astype(np.float32), gyro.astype(np.float32)


def make_imu_manifest(root: Path, per_class: int = 12, unlabelled: int = 6, seed: int = 0) -> Path:
    """Write the paired manifest under `root`; returns manifest.jsonl's path."""
    root = Path(root)
    (root / "x").mkdir(parents=True, exist_ok=True)
    (root / "modalities.yaml").write_text(HEADER)
    rng = np.random.default_rng(seed)
    lines = []
    for k in range(per_class * len(CLASSES) + unlabelled):
        cls = k % len(CLASSES)
        accel, gyro = _recording(cls, rng)
        sid = f"r{k:03d}"
        np.save(root / "x" / f"{sid}a.npy", accel)
        np.save(root / "x" / f"{sid}g.npy", gyro)
        labelled = k < per_class * len(CLASSES)
        subject = (k // len(CLASSES)) % 6 if labelled else k % 5
        lines.append(json.dumps({
            "id": sid,
            "label": CLASSES[cls] if labelled else None,
            "split": "test" if subject == 5 else "train",
            "subject": f"u{subject}",
            "accel": f"x/{sid}a.npy",
            "gyro": f"x/{sid}g.npy",
        }))
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def windows(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accel (N, 64, 3), gyro (N, 64, 3), label index in CLASSES, -1 unlabelled) of the
    labelled and unlabelled train recordings, cut as the manifest says."""
    acc, gyr, ys = [], [], []
    for line in (Path(root) / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] != "train":
            continue
        a, g = np.load(Path(root) / rec["accel"]), np.load(Path(root) / rec["gyro"])
        for start in range(0, LENGTH - WINDOW + 1, HOP):
            acc.append(a[start : start + WINDOW])
            gyr.append(g[start : start + WINDOW])
            ys.append(CLASSES.index(rec["label"]) if rec["label"] else -1)
    return np.stack(acc), np.stack(gyr), np.array(ys)


class PlainTeacher(nn.Module):
    """Two inputs (accelerometer and gyroscope, (N, 3, T) each, normalised by the caller) ->
    (logits in TEACHER_LABELS order, a 16-d embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(6, 16, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten()
        )
        self.head = nn.Linear(16, len(TEACHER_LABELS))

    def forward(self, acc: torch.Tensor, gyr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.body(torch.cat([acc, gyr], dim=1))
        return self.head(emb), emb


ACC_MEAN = (0.0, 0.0, 9.8)  # the teacher's own normalisation (a card states it)
ACC_STD = (0.5, 0.5, 0.5)


def train_plain_teacher(root: Path, steps: int = 150) -> PlainTeacher:
    """A PlainTeacher fitted on the labelled train windows, in plain PyTorch (seeded)."""
    torch.manual_seed(0)
    acc, gyr, y = windows(root)
    keep = y >= 0
    a = torch.from_numpy((acc[keep] - ACC_MEAN) / ACC_STD).float().transpose(1, 2)
    g = torch.from_numpy(gyr[keep]).float().transpose(1, 2)
    target = torch.tensor([TEACHER_LABELS.index(CLASSES[i]) for i in y[keep]])
    model = PlainTeacher()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(a, g)[0], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# The teacher card of the ONNX / .pt2 plain teacher, as a user writes it (teacher.yaml's keys).
ACC_INPUT = {"modality": "accel", "normalize": {"mean": list(ACC_MEAN), "std": list(ACC_STD)},
             "layout": "NCT"}  # fmt: skip
GYRO_INPUT = {"modality": "gyro", "layout": "NCT"}
BOTH_OUTPUTS = {"logits": {"name": "logits"}, "embedding": {"name": "emb"}}


def card_body(model: Path, **fields: object) -> dict[str, object]:
    """The card's mapping for `model` (a file beside the card); `fields` replace the defaults."""
    return {
        "source": "onnx",
        "path": Path(model).name,
        "sha256": sha256(model),
        "licence": "CC-BY-4.0",
        "inputs": {"acc": ACC_INPUT, "gyr": GYRO_INPUT},
        "outputs": BOTH_OUTPUTS,
        "labels": list(TEACHER_LABELS),
        **fields,
    }


def export_onnx(model: nn.Module, path: Path) -> Path:
    example = (torch.zeros(2, 3, WINDOW), torch.zeros(2, 3, WINDOW))
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model, example, str(path), input_names=["acc", "gyr"], output_names=["logits", "emb"],
        dynamic_shapes=({0: batch}, {0: batch}), external_data=False, opset_version=18,
    )  # fmt: skip
    return Path(path)


def export_pt2(model: nn.Module, path: Path) -> Path:
    batch = torch.export.Dim("batch")
    example = (torch.zeros(2, 3, WINDOW), torch.zeros(2, 3, WINDOW))
    program = torch.export.export(model, example, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, str(path))
    return Path(path)


def sklearn_onnx(root: Path, path: Path) -> Path:
    """A logistic regression on flattened gyroscope windows, converted by skl2onnx; its output
    `scores` holds raw decision values (logits) in CLASSES order."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    _, gyr, y = windows(root)
    keep = y >= 0
    x = gyr[keep].reshape(int(keep.sum()), -1).astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(x, y[keep])
    onx = to_onnx(
        clf, x[:1], options={id(clf): {"zipmap": False, "raw_scores": True}},
        final_types=None, target_opset=17,
    )  # fmt: skip
    Path(path).write_bytes(onx.SerializeToString())
    return Path(path)
