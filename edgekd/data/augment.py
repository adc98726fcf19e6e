"""Paired-consistent augmentation of raw training windows: an op registry and the batch policy.

Ops act on a batch of RAW windows (before normalisation: a rotation must turn physical vectors,
and the accelerometer carries gravity) of every modality of the kinds they apply to. Each op
draws its random parameters once per sample and applies them to every modality of that sample,
so paired windows stay paired: one rotation for every 3-axis vector group of a frame (e.g. the
accelerometer and gyroscope of one phone), one time shift in seconds for every time axis.
`spec_mask` is the one feature-stage op: it masks normalised log-mel features (0 = the mean).

Mixing (mixup / cutmix) draws one lambda ~ Beta(alpha, alpha) and one partner permutation per
batch, shared by all modalities; labels become soft targets `lam * onehot(y) + (1 - lam) *
onehot(y[partner])` (unlabelled windows, y = -1, contribute a zero row).

Randomness comes only from the generator the caller passes (seeded from seed, epoch, step), so a
batch's augmentation is a pure function of those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import ConfigError
from edgekd.modalities import ModalitySpec

if TYPE_CHECKING:
    from edgekd.config import AugmentConfig

Raw = dict[str, np.ndarray]
OpFn = Callable[..., None]


@dataclass(frozen=True)
class AugmentOp:
    """A registered op: `fn(x, specs, rng, **params)` edits `x[m]` in place for every modality
    `m` of `kinds` (raw windows; `stage="features"`: normalised model inputs)."""

    name: str
    kinds: tuple[str, ...]
    defaults: dict[str, float]
    fn: OpFn
    stage: str = "raw"
    # why a full parameter set is invalid ("pad is ..."), or None; checked when a config loads
    check: Callable[[Mapping[str, float]], str | None] | None = None


_OPS: dict[str, AugmentOp] = {}


def register_augment(
    name: str,
    *,
    kinds: tuple[str, ...],
    stage: str = "raw",
    check: Callable[[Mapping[str, float]], str | None] | None = None,
    **defaults: float,
) -> Callable[[OpFn], OpFn]:
    """Register `fn(x, specs, rng, **params)` as augmentation op `name` with default params;
    `check(params)` says why a parameter set is out of range (None: valid), at config load."""

    def wrap(fn: OpFn) -> OpFn:
        if name in _OPS:
            raise ValueError(f"augmentation {name!r} is already registered")
        _OPS[name] = AugmentOp(name, kinds, dict(defaults), fn, stage, check)
        return fn

    return wrap


def list_augments() -> list[str]:
    return sorted(_OPS)


def check_ops(ops: Mapping[str, Any]) -> None:
    """ConfigError for an unknown op or parameter, or a non-numeric value (config load time,
    before any data)."""
    if not isinstance(ops, Mapping):
        raise ConfigError(f"augment.ops must map op name -> parameters, got {ops!r}")
    for name, params in ops.items():
        if name not in _OPS:
            raise ConfigError(
                f"unknown augmentation {name!r} in augment.ops; registered: "
                f"{', '.join(list_augments())}"
            )
        if not isinstance(params, Mapping):
            raise ConfigError(f"augment.ops.{name} must map parameter -> value, got {params!r}")
        bad = {
            k: v for k, v in params.items() if isinstance(v, bool) or not isinstance(v, int | float)
        }
        if bad:
            raise ConfigError(f"augment.ops.{name}: parameters must be numbers, got {bad}")
        unknown = set(params) - set(_OPS[name].defaults)
        if unknown:
            raise ConfigError(
                f"augment.ops.{name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                f"it takes {', '.join(_OPS[name].defaults) or 'none'}"
            )
        check = _OPS[name].check
        problem = check({**_OPS[name].defaults, **params}) if check is not None else None
        if problem is not None:
            raise ConfigError(f"augment.ops.{name}.{problem}")


def _of_kind(x: Raw, specs: Mapping[str, ModalitySpec], kinds: tuple[str, ...]) -> list[str]:
    return [m for m in x if specs[m].kind in kinds]


def _time_index(n: int, b: int) -> np.ndarray:
    return np.broadcast_to(np.arange(n), (b, n))


# --- timeseries ---------------------------------------------------------------------------


def random_rotations(rng: np.random.Generator, n: int, max_deg: float) -> np.ndarray:
    """(n, 3, 3) rotations about uniform random axes by angles uniform in +-max_deg (Rodrigues)."""
    axis = rng.standard_normal((n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg, n))
    k = np.zeros((n, 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k -= k.transpose(0, 2, 1)
    s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


@register_augment("rotate", kinds=("timeseries",), max_deg=15.0)
def rotate(x: Raw, specs: Mapping[str, ModalitySpec], rng: np.random.Generator, max_deg: float):
    """One random 3-D rotation per sample and frame, applied to every vector group in it."""
    frames = sorted({f for m in x for f, _ in specs[m].vectors})
    b = len(next(iter(x.values())))
    for frame in frames:
        rot = random_rotations(rng, b, max_deg).astype(np.float32)
        for m in x:
            for f, group in specs[m].vectors:
                if f == frame:
                    cols = list(group)
                    # (b, t, 3) @ (b, 3, 3)^T: every time step's vector turned by its sample's R.
                    x[m][:, :, cols] = x[m][:, :, cols] @ rot.transpose(0, 2, 1)


@register_augment("scale", kinds=("timeseries",), sigma=0.1)
def scale(x: Raw, specs: Mapping[str, ModalitySpec], rng: np.random.Generator, sigma: float):
    """Multiply each sample by one factor ~ N(1, sigma), the same for all its modalities."""
    factor = rng.normal(1.0, sigma, len(next(iter(x.values())))).astype(np.float32)
    for m in x:
        x[m] *= factor[:, None, None]


@register_augment("jitter", kinds=("timeseries",), sigma=0.05)
def jitter(x: Raw, specs: Mapping[str, ModalitySpec], rng: np.random.Generator, sigma: float):
    """Add N(0, (sigma * channel std)^2) noise (the spec's fitted std; 1 if unfitted)."""
    for m in x:
        std = np.asarray(specs[m].std or (1.0,) * specs[m].channels, dtype=np.float32)
        x[m] += (sigma * std) * rng.standard_normal(x[m].shape, dtype=np.float32)


def _shift_seconds(x: Raw, specs: Mapping[str, ModalitySpec], seconds: np.ndarray) -> None:
    for m in x:
        n = x[m].shape[1]
        steps = np.round(seconds * specs[m].rate_hz).astype(np.int64)
        idx = (_time_index(n, len(steps)) - steps[:, None]) % n
        x[m] = np.take_along_axis(x[m], idx.reshape(idx.shape + (1,) * (x[m].ndim - 2)), axis=1)


@register_augment("time_shift", kinds=("timeseries", "audio"), max_s=0.2)
def time_shift(x: Raw, specs: Mapping[str, ModalitySpec], rng: np.random.Generator, max_s: float):
    """Circular shift by the same random number of seconds in +-max_s for every modality."""
    _shift_seconds(x, specs, rng.uniform(-max_s, max_s, len(next(iter(x.values())))))


@register_augment("time_warp", kinds=("timeseries",), max_stretch=0.1)
def time_warp(
    x: Raw, specs: Mapping[str, ModalitySpec], rng: np.random.Generator, max_stretch: float
):
    """Resample about the window centre at a speed in 1 +- max_stretch (linear interpolation,
    edges held), the same speed for every modality of a sample."""
    speed = rng.uniform(1 - max_stretch, 1 + max_stretch, len(next(iter(x.values()))))
    for m in x:
        n = x[m].shape[1]
        centre = (n - 1) / 2
        src = np.clip(centre + (np.arange(n)[None, :] - centre) * speed[:, None], 0, n - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        w = (src - lo).astype(np.float32)[:, :, None]
        a = np.take_along_axis(x[m], lo[:, :, None], axis=1)
        c = np.take_along_axis(x[m], hi[:, :, None], axis=1)
        x[m] = a + w * (c - a)


# --- audio --------------------------------------------------------------------------------


@register_augment("gain", kinds=("audio",), max_db=6.0)
def gain(x: Raw, specs: Mapping[str, ModalitySpec], rng: np.random.Generator, max_db: float):
    """Scale the waveform by a gain uniform in +-max_db decibels."""
    factor = 10 ** (rng.uniform(-max_db, max_db, len(next(iter(x.values())))) / 20)
    for m in x:
        x[m] *= factor.astype(np.float32).reshape((-1,) + (1,) * (x[m].ndim - 1))


@register_augment("noise", kinds=("audio",), max_std=0.005)
def noise(x: Raw, specs: Mapping[str, ModalitySpec], rng: np.random.Generator, max_std: float):
    """Add white noise whose std (full scale = 1) is uniform in [0, max_std] per sample."""
    for m in x:
        std = rng.uniform(0, max_std, len(x[m])).astype(np.float32)
        noise = rng.standard_normal(x[m].shape, dtype=np.float32)
        x[m] += std.reshape((-1,) + (1,) * (x[m].ndim - 1)) * noise


@register_augment("spec_mask", kinds=("audio",), stage="features", time=8.0, freq=5.0, count=1.0)
def spec_mask(
    x: Raw,
    specs: Mapping[str, ModalitySpec],
    rng: np.random.Generator,
    time: float,
    freq: float,
    count: float,
):
    """SpecAugment: `count` time masks of up to `time` frames and frequency masks of up to
    `freq` mel bins, set to 0 (the mean of normalised features)."""
    for m in x:
        b, bins, frames = x[m].shape
        for _ in range(int(count)):
            for size, axis_len, axis in ((time, frames, 2), (freq, bins, 1)):
                width = rng.integers(0, int(size) + 1, b)
                start = rng.integers(0, np.maximum(axis_len - width, 0) + 1)
                pos = _time_index(axis_len, b)
                hit = (pos >= start[:, None]) & (pos < (start + width)[:, None])
                x[m] *= ~(hit[:, None, :] if axis == 2 else hit[:, :, None])


# --- image --------------------------------------------------------------------------------


def _crop_problem(params: Mapping[str, float]) -> str | None:
    pad = params["pad"]
    if 0.0 <= pad < 0.5:
        return None
    return f"pad is a fraction of the image side in [0, 0.5), got {pad:g} (4 pixels of 32: 0.125)"


@register_augment("crop", kinds=("image",), check=_crop_problem, pad=0.125)
def crop(x: Raw, specs: Mapping[str, ModalitySpec], rng: np.random.Generator, pad: float):
    """Reflect-pad by `pad` x the side (a fraction: 0.125 is 4 pixels of 32, 28 of 224) and crop
    back at a random offset: one offset per sample, the same fraction of the side for every
    image modality, so the strength does not depend on the image size. A config is checked when
    it loads (`check_ops`); this check covers direct calls."""
    problem = _crop_problem({"pad": pad})
    if problem is not None:
        raise ConfigError(f"augment.ops.crop.{problem}")
    b = len(next(iter(x.values())))
    fy, fx = rng.random(b), rng.random(b)
    for m in x:
        h, w = x[m].shape[1:3]
        py, px = int(round(pad * h)), int(round(pad * w))
        dy = np.floor(fy * (2 * py + 1)).astype(np.int64)
        dx = np.floor(fx * (2 * px + 1)).astype(np.int64)
        padded = np.pad(x[m], ((0, 0), (py, py), (px, px), (0, 0)), mode="reflect")
        rows = (dy[:, None] + np.arange(h))[:, :, None, None]
        cols = (dx[:, None] + np.arange(w))[:, None, :, None]
        x[m] = padded[np.arange(b)[:, None, None, None], rows, cols, np.arange(x[m].shape[3])]


@register_augment("intensity", kinds=("image",), brightness=0.1, contrast=0.1)
def intensity(
    x: Raw,
    specs: Mapping[str, ModalitySpec],
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
):
    """Contrast factor in 1 +- contrast about the image mean, plus a brightness offset in
    +-brightness, clipped to [0, 1]."""
    b = len(next(iter(x.values())))
    c = rng.uniform(1 - contrast, 1 + contrast, b).astype(np.float32)[:, None, None, None]
    d = rng.uniform(-brightness, brightness, b).astype(np.float32)[:, None, None, None]
    for m in x:
        mean = x[m].mean(axis=(1, 2, 3), keepdims=True)
        x[m] = np.clip((x[m] - mean) * c + mean + d, 0.0, 1.0)


# --- policy -------------------------------------------------------------------------------

# Safe per-kind defaults: timeseries rotation only where a spec declares vector groups.
DEFAULT_OPS: dict[str, dict[str, dict[str, float]]] = {
    "timeseries": {"rotate": {}, "scale": {}, "jitter": {}},
    "audio": {"gain": {}, "time_shift": {"max_s": 0.1}, "noise": {}, "spec_mask": {}},
    "image": {"crop": {}, "intensity": {}},
}


@dataclass(frozen=True)
class Policy:
    """Resolved augmentation of one run: ops with parameters, and mixing."""

    ops: tuple[tuple[AugmentOp, dict[str, float]], ...]
    mix: str
    mix_alpha: float
    mix_prob: float
    num_classes: int

    @property
    def active(self) -> bool:
        return bool(self.ops) or self.mix != "none"

    @property
    def has_features(self) -> bool:
        return any(op.stage == "features" for op, _ in self.ops)

    def describe(self) -> str:
        parts = [
            f"{op.name}(" + ", ".join(f"{k}={v:g}" for k, v in params.items()) + ")"
            for op, params in self.ops
        ]
        if self.mix != "none":
            parts.append(f"{self.mix}(alpha={self.mix_alpha:g}, p={self.mix_prob:g})")
        return " ".join(parts) or "none"

    def raw(
        self, x: Raw, y: np.ndarray, specs: Mapping[str, ModalitySpec], rng: np.random.Generator
    ) -> tuple[Raw, np.ndarray]:
        """Raw-stage ops then mixing on copies of `x`; returns the new windows and labels (int
        (B,) without mixing, soft float32 (B, C) with it)."""
        x = {m: np.array(a, dtype=np.float32) for m, a in x.items()}  # ops work in place
        for op, params in self.ops:
            if op.stage == "raw":
                self._apply(op, params, x, specs, rng)
        if self.mix == "none":
            return x, y
        return mix_batch(
            x, y, specs, rng, self.mix, self.mix_alpha, self.mix_prob, self.num_classes
        )

    def features(self, x: Raw, specs: Mapping[str, ModalitySpec], rng: np.random.Generator) -> None:
        """Feature-stage ops, in place on normalised model inputs."""
        for op, params in self.ops:
            if op.stage == "features":
                self._apply(op, params, x, specs, rng)

    @staticmethod
    def _apply(
        op: AugmentOp,
        params: dict[str, float],
        x: Raw,
        specs: Mapping[str, ModalitySpec],
        rng: np.random.Generator,
    ) -> None:
        names = _of_kind(x, specs, op.kinds)
        if not names:
            return
        part = {m: x[m] for m in names}
        op.fn(part, specs, rng, **params)
        x.update(part)


def build_policy(cfg: AugmentConfig, specs: Mapping[str, ModalitySpec], num_classes: int) -> Policy:
    """The run's Policy for the dataset's modality specs; ConfigError for an op that cannot act
    on these modalities (e.g. rotation without 3-axis vector channels) or mixing one class."""
    mix = cfg.mix or "none"  # unset: a teacher's plan fills in TEACHER_MIX before this
    kinds = {s.kind for s in specs.values()}
    chosen: dict[str, dict[str, float]] = {}
    if cfg.policy == "default":
        for kind in sorted(kinds):
            for name, params in DEFAULT_OPS[kind].items():
                if name == "rotate" and not any(s.vectors for s in specs.values()):
                    continue
                chosen[name] = dict(params)
    if cfg.policy != "none":
        for name, params in cfg.ops.items():
            chosen[name] = {**chosen.get(name, {}), **params}
    ops = []
    for name, params in chosen.items():
        op = _OPS[name]
        if not kinds & set(op.kinds):
            raise ConfigError(
                f"augmentation {name!r} acts on {'/'.join(op.kinds)} modalities; this data has "
                f"only {', '.join(f'{m} ({s.kind})' for m, s in specs.items())}"
            )
        if name == "rotate" and not any(s.vectors for s in specs.values()):
            raise ConfigError(
                "augmentation 'rotate' needs 3-axis vector channels, but no modality spec of "
                f"{', '.join(specs)} declares vectors (e.g. vectors: {{device: [[0, 1, 2]]}})"
            )
        ops.append((op, {**op.defaults, **{k: float(v) for k, v in params.items()}}))
    if mix != "none" and num_classes < 2:
        raise ConfigError(f"augment.mix={mix} needs at least 2 classes, the data has 1")
    return Policy(tuple(ops), mix, cfg.mix_alpha, cfg.mix_prob, num_classes)


def soft_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """(B, C) float32 one-hot rows; y = -1 (unlabelled) gives a zero row."""
    out = np.zeros((len(y), num_classes), dtype=np.float32)
    labelled = y >= 0
    out[np.flatnonzero(labelled), y[labelled]] = 1.0
    return out


def mix_batch(
    x: Raw,
    y: np.ndarray,
    specs: Mapping[str, ModalitySpec],
    rng: np.random.Generator,
    kind: str,
    alpha: float,
    prob: float,
    num_classes: int,
) -> tuple[Raw, np.ndarray]:
    """Mixup / cutmix with one lambda and one partner permutation for every modality.

    Mixup: x = lam * x + (1 - lam) * x[partner]. Cutmix: a contiguous time span (timeseries,
    audio: the same fraction of each window) or an image box of area (1 - lam) comes from the
    partner, and lam is corrected to the share actually kept. Labels are always soft.
    """
    b = len(y)
    partner = rng.permutation(b)
    lam = float(rng.beta(alpha, alpha))
    apply = rng.random() < prob
    soft = soft_labels(y, num_classes)
    if not apply:
        return x, soft
    out: Raw = {}
    if kind == "mixup":
        for m, arr in x.items():
            out[m] = lam * arr + (1 - lam) * arr[partner]
    else:
        cut = 1.0 - lam
        start = rng.random()  # position of the cut as a fraction of the free length
        kept = lam
        for m, arr in x.items():
            out[m] = arr.copy()
            if specs[m].kind == "image":
                h, w = arr.shape[1:3]
                ch, cw = int(round(h * np.sqrt(cut))), int(round(w * np.sqrt(cut)))
                r0, c0 = int(start * (h - ch)), int(start * (w - cw))
                out[m][:, r0 : r0 + ch, c0 : c0 + cw] = arr[partner, r0 : r0 + ch, c0 : c0 + cw]
                kept = 1 - ch * cw / (h * w)
            else:
                n = arr.shape[1]
                length = int(round(n * cut))
                t0 = int(start * (n - length))
                out[m][:, t0 : t0 + length] = arr[partner, t0 : t0 + length]
                kept = 1 - length / n
        lam = kept
    return out, (lam * soft + (1 - lam) * soft[partner]).astype(np.float32)
