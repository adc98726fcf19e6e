"""Paired-consistent augmentation: golden properties of each op, mixing, policy checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgekd.config import AugmentConfig, load_config
from edgekd.data.augment import build_policy, mix_batch, random_rotations
from edgekd.data.har import ACCEL, GYRO
from edgekd.errors import ConfigError
from edgekd.modalities import ModalitySpec

SPECS = {"accel": ACCEL, "gyro": GYRO}


def _policy(specs: dict[str, ModalitySpec] = SPECS, classes: int = 4, **kwargs: object):
    return build_policy(AugmentConfig(**kwargs), specs, classes)


def _har_batch(b: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.standard_normal((b, 128, 3)).astype(np.float32) for m in SPECS}


def test_random_rotations_are_proper_and_bounded() -> None:
    rot = random_rotations(np.random.default_rng(0), 500, 15.0)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    angle = np.degrees(np.arccos(np.clip((np.trace(rot, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angle.max() <= 15.0 + 1e-9 and angle.max() > 10.0  # uses the range, never beyond
    # Golden: 90 degrees about z maps x to y.
    k = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 0]])
    assert np.allclose((np.eye(3) + k + k @ k) @ [1, 0, 0], [0, 1, 0])


def test_rotation_preserves_norms_and_is_shared_by_accel_and_gyro() -> None:
    x = _har_batch()
    x["gyro"] = 0.5 * x["accel"].copy()  # the gyroscope a scaled copy of the accelerometer
    policy = _policy(policy="custom", ops={"rotate": {"max_deg": 15}})
    out, y = policy.raw(x, np.arange(8) % 4, SPECS, np.random.default_rng(1))
    norm = np.linalg.norm
    np.testing.assert_allclose(norm(out["accel"], axis=2), norm(x["accel"], axis=2), rtol=1e-5)
    # One rotation per sample for both sensors: the copy relation survives.
    np.testing.assert_allclose(out["gyro"], 0.5 * out["accel"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["accel"], x["accel"], atol=1e-3)
    # The same rotation at every time step of a sample: solve R from the sample's vectors.
    r, *_ = np.linalg.lstsq(x["accel"][3], out["accel"][3], rcond=None)
    np.testing.assert_allclose(x["accel"][3] @ r, out["accel"][3], atol=1e-4)
    assert np.array_equal(y, np.arange(8) % 4)  # no mixing: labels untouched


def test_time_shift_moves_every_modality_by_the_same_seconds() -> None:
    fast = dataclasses.replace(GYRO, name="fast", rate_hz=100.0, window=256, vectors=())
    specs = {"accel": ACCEL, "fast": fast}
    t50, t100 = np.arange(128) / 50.0, np.arange(256) / 100.0
    x = {"accel": np.repeat(t50[None, :, None], 6, 0).repeat(3, 2).astype(np.float32),
         "fast": np.repeat(t100[None, :, None], 6, 0).repeat(3, 2).astype(np.float32)}  # fmt: skip
    policy = _policy(specs, policy="custom", ops={"time_shift": {"max_s": 0.5}})
    out, _ = policy.raw(x, np.zeros(6, dtype=np.int64), specs, np.random.default_rng(2))
    # Sample i now starts at time -s_i (mod window): the same s in both, at both rates.
    shift50 = (t50[0] - out["accel"][:, 0, 0]) % (128 / 50)
    shift100 = (t100[0] - out["fast"][:, 0, 0]) % (256 / 100)
    np.testing.assert_allclose(np.minimum(shift50, 128 / 50 - shift50),
                               np.minimum(shift100, 256 / 100 - shift100), atol=0.011)  # fmt: skip
    assert np.any(shift50 > 0.02)


def test_mixup_uses_one_lambda_and_partner_for_every_modality() -> None:
    b = 10
    ids = np.arange(b, dtype=np.float32)
    x = {"accel": np.broadcast_to(ids[:, None, None], (b, 128, 3)).copy(),
         "gyro": np.broadcast_to(100 * ids[:, None, None], (b, 128, 3)).copy()}  # fmt: skip
    y = np.array([0, 1, 2, 3, -1, 0, 1, 2, 3, 0])
    out, soft = mix_batch(x, y, SPECS, np.random.default_rng(5), "mixup", 1.0, 1.0, 4)
    np.testing.assert_allclose(out["gyro"], 100 * out["accel"], rtol=1e-5)
    # Recover lam and partner from the ids: x_i = lam * i + (1 - lam) * j.
    rng = np.random.default_rng(5)
    partner, lam = rng.permutation(b), rng.beta(1.0, 1.0)
    np.testing.assert_allclose(
        out["accel"][:, 0, 0], lam * ids + (1 - lam) * ids[partner], rtol=1e-5
    )
    onehot = np.eye(4)[y.clip(0)] * (y >= 0)[:, None]
    np.testing.assert_allclose(soft, lam * onehot + (1 - lam) * onehot[partner], rtol=1e-5)
    assert soft.dtype == np.float32 and soft.shape == (b, 4)


def _replay_mix(rng: np.random.Generator, b: int) -> tuple[np.ndarray, float, float]:
    """(partner, lam, start) as `mix_batch` draws them: permutation, beta, apply, cut start."""
    partner, lam = rng.permutation(b), float(rng.beta(1.0, 1.0))
    assert rng.random() < 1.0  # prob 1: mixing applies
    return partner, lam, float(rng.random())


def test_cutmix_cuts_the_same_span_in_every_modality() -> None:
    b, n = 6, 128
    ids = np.arange(1, b + 1, dtype=np.float32)  # every sample its own value: the source shows
    x = {"accel": np.broadcast_to(ids[:, None, None], (b, n, 3)).copy(),
         "gyro": np.broadcast_to(10 * ids[:, None, None], (b, n, 3)).copy()}  # fmt: skip
    y = np.array([0, 1, 2, 0, 1, 2])
    out, soft = mix_batch(x, y, SPECS, np.random.default_rng(3), "cutmix", 1.0, 1.0, 3)
    np.testing.assert_array_equal(out["gyro"], 10 * out["accel"])  # one span, both modalities
    # By hand: a span of round(n * (1 - lam)) steps at int(start * (n - length)) comes from the
    # partner; the label weight of the partner is the share of steps taken from it.
    partner, lam, start = _replay_mix(np.random.default_rng(3), b)
    length = int(round(n * (1 - lam)))
    t0 = int(start * (n - length))
    assert 8 <= length <= n - 8, "the seed must give a real cut"
    expected = np.broadcast_to(ids[:, None], (b, n)).copy()
    expected[:, t0 : t0 + length] = ids[partner][:, None]
    np.testing.assert_array_equal(out["accel"][:, :, 0], expected)
    kept = 1 - length / n
    onehot = np.eye(3, dtype=np.float32)[y]
    np.testing.assert_allclose(soft, kept * onehot + (1 - kept) * onehot[partner], atol=1e-6)
    moved = partner != np.arange(b)
    assert moved.sum() >= 3
    for i in np.flatnonzero(moved & (y != y[partner])):
        from_partner = float((out["accel"][i, :, 0] == ids[partner[i]]).mean())
        assert from_partner == pytest.approx(length / n)
        assert soft[i, y[partner[i]]] == pytest.approx(from_partner, abs=1e-6)
        assert soft[i, y[i]] == pytest.approx(1 - from_partner, abs=1e-6)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)


def test_cutmix_box_area_is_the_label_weight_for_images() -> None:
    face = ModalitySpec(name="face", kind="image", rate_hz=0, channels=3, window=0, hop=0,
                        size=(20, 20))  # fmt: skip
    b, h, w = 8, 20, 20
    ids = np.arange(1, b + 1, dtype=np.float32)
    x = {"face": np.broadcast_to(ids[:, None, None, None], (b, h, w, 3)).copy()}
    y = np.arange(b)  # one class per sample: a label weight names its source
    out, soft = mix_batch(x, y, {"face": face}, np.random.default_rng(8), "cutmix", 1.0, 1.0, b)
    partner, lam, start = _replay_mix(np.random.default_rng(8), b)
    ch, cw = int(round(h * np.sqrt(1 - lam))), int(round(w * np.sqrt(1 - lam)))
    r0, c0 = int(start * (h - ch)), int(start * (w - cw))
    assert 0 < ch * cw < h * w, "the seed must give a real box"
    box = np.zeros((h, w), bool)
    box[r0 : r0 + ch, c0 : c0 + cw] = True
    moved = np.flatnonzero(partner != np.arange(b))
    assert len(moved) >= 4
    for i in range(b):
        src = out["face"][i, :, :, 0]
        np.testing.assert_array_equal(out["face"][i], src[:, :, None].repeat(3, 2))
        np.testing.assert_array_equal(src, np.where(box, ids[partner[i]], ids[i]))
    for i in moved:
        area = float((out["face"][i, :, :, 0] == ids[partner[i]]).mean())
        assert area == pytest.approx(ch * cw / (h * w))
        assert soft[i, partner[i]] == pytest.approx(area, abs=1e-6)  # box area == label weight
        assert soft[i, i] == pytest.approx(1 - area, abs=1e-6)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)


def test_policy_is_deterministic_per_generator() -> None:
    policy = _policy(mix="mixup")
    y = np.arange(8) % 4
    a = policy.raw(_har_batch(), y, SPECS, np.random.default_rng([0, 3, 1]))
    b = policy.raw(_har_batch(), y, SPECS, np.random.default_rng([0, 3, 1]))
    c = policy.raw(_har_batch(), y, SPECS, np.random.default_rng([0, 4, 1]))
    for m in SPECS:
        np.testing.assert_array_equal(a[0][m], b[0][m])
        assert not np.allclose(a[0][m], c[0][m])
    np.testing.assert_array_equal(a[1], b[1])


def test_default_policy_per_kind() -> None:
    assert _policy().describe() == "rotate(max_deg=15) scale(sigma=0.1) jitter(sigma=0.05)"
    plain = dataclasses.replace(ACCEL, vectors=())
    assert "rotate" not in _policy({"accel": plain}).describe()  # defaults stay safe
    assert _policy(policy="none").active is False
    assert "max_deg=10" in _policy(ops={"rotate": {"max_deg": 10}}).describe()


def test_image_and_audio_ops_keep_shapes_and_ranges() -> None:
    face = ModalitySpec(name="face", kind="image", rate_hz=0, channels=3, window=0, hop=0,
                        size=(16, 16))  # fmt: skip
    voice = ModalitySpec(name="voice", kind="audio", rate_hz=8000, channels=1, window=800, hop=400,
                         n_fft=200, hop_length=80, n_mels=10)  # fmt: skip
    specs = {"face": face, "voice": voice}
    rng = np.random.default_rng(0)
    x = {"face": rng.random((4, 16, 16, 3), dtype=np.float32),
         "voice": 0.1 * rng.standard_normal((4, 800)).astype(np.float32)}  # fmt: skip
    policy = _policy(specs)
    out, _ = policy.raw(x, np.zeros(4, dtype=np.int64), specs, rng)
    assert out["face"].shape == x["face"].shape and out["voice"].shape == x["voice"].shape
    assert 0.0 <= out["face"].min() and out["face"].max() <= 1.0
    ones = {"voice": np.ones((4, 10, 8), np.float32)}
    _policy(specs, policy="custom", ops={"spec_mask": {"time": 3, "freq": 2}}).features(
        ones, specs, rng
    )
    assert set(np.unique(ones["voice"])) <= {0.0, 1.0} and ones["voice"].min() == 0.0


class _Edge:
    """A stand-in generator that draws every uniform at one end of its range (`high` or low),
    and ones for standard normals: hand-computable extremes of an op."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def uniform(self, low: float, high: float, size: int) -> np.ndarray:
        return np.full(size, high if self.high else low)

    def standard_normal(self, shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
        return np.ones(shape, dtype)


VOICE = ModalitySpec(name="voice", kind="audio", rate_hz=8000, channels=1, window=800, hop=400,
                     n_fft=200, hop_length=80, n_mels=10)  # fmt: skip
FACE = ModalitySpec(name="face", kind="image", rate_hz=0, channels=3, window=0, hop=0,
                    size=(16, 16))  # fmt: skip


def test_gain_is_an_amplitude_factor_in_decibels_within_bounds() -> None:
    from edgekd.data.augment import gain

    x = np.array([[0.5, -0.25, 0.1, 0.0]], np.float32)
    for high, factor in ((True, 1.9952623), (False, 0.5011872)):  # 10 ** (+-6 / 20)
        edge = {"voice": x.copy()}
        gain(edge, {"voice": VOICE}, _Edge(high), max_db=6.0)
        np.testing.assert_allclose(edge["voice"], x * factor, rtol=1e-6)
    # A real draw: one factor per sample, 20 * log10 of it within +-max_db, as drawn.
    specs = {"voice": VOICE}
    x = {"voice": 0.1 * np.random.default_rng(0).standard_normal((16, 800)).astype(np.float32)}
    policy = _policy(specs, policy="custom", ops={"gain": {"max_db": 6.0}})
    out, _ = policy.raw(x, np.zeros(16, dtype=np.int64), specs, np.random.default_rng(11))
    db = np.random.default_rng(11).uniform(-6.0, 6.0, 16)
    np.testing.assert_allclose(out["voice"], x["voice"] * (10 ** (db / 20))[:, None], rtol=1e-5)
    ratio = out["voice"][:, :1] / x["voice"][:, :1]
    np.testing.assert_allclose(out["voice"], x["voice"] * ratio, rtol=1e-5)  # per sample
    measured = 20 * np.log10(ratio[:, 0])
    assert np.all(np.abs(measured) <= 6.0 + 1e-4) and np.ptp(measured) > 6.0


def test_noise_std_is_drawn_up_to_its_bound() -> None:
    from edgekd.data.augment import noise

    x = np.zeros((2, 5), np.float32)
    edge = {"voice": x.copy()}
    noise(edge, {"voice": VOICE}, _Edge(True), max_std=0.02)
    np.testing.assert_allclose(edge["voice"], x + 0.02)  # std at its bound times unit noise
    specs = {"voice": VOICE}
    clean = np.random.default_rng(1).uniform(-0.5, 0.5, (8, 4000)).astype(np.float32)
    policy = _policy(specs, policy="custom", ops={"noise": {"max_std": 0.05}})
    out, _ = policy.raw({"voice": clean}, np.zeros(8, dtype=np.int64), specs,
                        np.random.default_rng(5))  # fmt: skip
    rng = np.random.default_rng(5)
    std = rng.uniform(0, 0.05, 8).astype(np.float32)
    added = std[:, None] * rng.standard_normal((8, 4000), dtype=np.float32)
    np.testing.assert_allclose(out["voice"], clean + added, atol=1e-7)
    measured = (out["voice"] - clean).std(axis=1)
    np.testing.assert_allclose(measured, std, rtol=0.06)  # 4000 draws: ~1% error
    assert measured.max() <= 0.05 * 1.06 and measured.max() > 0.025


def test_intensity_brightness_and_contrast_stay_within_bounds() -> None:
    from edgekd.data.augment import intensity

    img = np.array([0.2, 0.4, 0.6, 0.8], np.float32).reshape(1, 2, 2, 1)  # mean 0.5
    up = {"face": img.copy()}
    intensity(up, {"face": FACE}, _Edge(True), brightness=0.1, contrast=0.2)
    # (x - 0.5) * 1.2 + 0.5 + 0.1
    np.testing.assert_allclose(up["face"].ravel(), [0.24, 0.48, 0.72, 0.96], atol=1e-6)
    down = {"face": img.copy()}
    intensity(down, {"face": FACE}, _Edge(False), brightness=0.1, contrast=0.2)
    np.testing.assert_allclose(down["face"].ravel(), [0.16, 0.32, 0.48, 0.64], atol=1e-6)
    full = {"face": np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)}
    intensity(full, {"face": FACE}, _Edge(True), brightness=0.1, contrast=0.2)
    np.testing.assert_allclose(full["face"].ravel(), [0.0, 1.0])  # -0.0 and 1.2: clipped
    # A real draw on mid-grey images (no clipping): contrast and brightness read back per image.
    specs = {"face": FACE}
    x = np.random.default_rng(2).uniform(0.3, 0.7, (12, 16, 16, 3)).astype(np.float32)
    policy = _policy(specs, policy="custom",
                     ops={"intensity": {"brightness": 0.1, "contrast": 0.2}})  # fmt: skip
    out, _ = policy.raw({"face": x}, np.zeros(12, dtype=np.int64), specs,
                        np.random.default_rng(9))  # fmt: skip
    rng = np.random.default_rng(9)
    c = rng.uniform(0.8, 1.2, 12).astype(np.float32)
    d = rng.uniform(-0.1, 0.1, 12).astype(np.float32)
    axes = (1, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    np.testing.assert_allclose(out["face"], (x - mean) * c[:, None, None, None] + mean
                               + d[:, None, None, None], atol=1e-6)  # fmt: skip
    contrast = out["face"].std(axis=axes) / x.std(axis=axes)
    brightness = out["face"].mean(axis=axes) - x.mean(axis=axes)
    np.testing.assert_allclose(contrast, c, rtol=1e-4)
    np.testing.assert_allclose(brightness, d, atol=1e-5)
    assert np.all(np.abs(contrast - 1) <= 0.2 + 1e-5) and np.all(np.abs(brightness) <= 0.1 + 1e-6)


def test_time_warp_resamples_monotonically_about_the_centre() -> None:
    from edgekd.data.augment import time_warp

    n = 11
    t = np.arange(n, dtype=np.float32)
    curve = (t**2)[None, :, None]  # monotone, not linear: shows the interpolation
    for high, src in (
        (True, np.clip(5 + (t - 5) * 1.2, 0, n - 1)),  # faster: beyond the ends, held at them
        (False, 5 + (t - 5) * 0.8),  # slower: the middle 80% of the window fills it
    ):
        out = {"accel": curve.copy()}
        time_warp(out, SPECS, _Edge(high), max_stretch=0.2)
        np.testing.assert_allclose(out["accel"][0, :, 0], np.interp(src, t, t**2), rtol=1e-6)
        assert np.all(np.diff(out["accel"][0, :, 0]) > 0)  # monotone stays monotone
    faster = {"accel": curve.copy()}
    time_warp(faster, SPECS, _Edge(True), max_stretch=0.2)
    assert faster["accel"][0, 0, 0] == 0.0 and faster["accel"][0, -1, 0] == 100.0  # ends kept
    # A real draw: one speed per sample, shared by accel and gyro, within 1 +- max_stretch.
    b, w = 16, 128
    ramp = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :, None], (b, w, 3)).copy()
    x = {"accel": ramp, "gyro": 2 * ramp}
    policy = _policy(policy="custom", ops={"time_warp": {"max_stretch": 0.2}})
    got, _ = policy.raw(x, np.zeros(b, dtype=np.int64), SPECS, np.random.default_rng(4))
    speed = np.random.default_rng(4).uniform(0.8, 1.2, b)
    centre = (w - 1) / 2
    src = np.clip(centre + (np.arange(w)[None, :] - centre) * speed[:, None], 0, w - 1)
    np.testing.assert_allclose(got["accel"][:, :, 0], src, atol=1e-4)  # a ramp shows src
    np.testing.assert_allclose(got["gyro"], 2 * got["accel"], atol=1e-4)
    assert np.all(np.diff(got["accel"], axis=1) >= 0)
    assert got["accel"].min() >= 0 and got["accel"].max() <= w - 1  # held, never wrapped
    measured = got["accel"][:, w // 2, 0] - got["accel"][:, w // 2 - 1, 0]
    np.testing.assert_allclose(measured, speed, atol=1e-4)
    assert np.all(np.abs(measured - 1) <= 0.2 + 1e-4) and np.ptp(measured) > 0.2
    fast = speed > 1
    assert fast.any() and (~fast).any()
    np.testing.assert_allclose(got["accel"][fast][:, [0, -1], 0], [[0, w - 1]] * fast.sum())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ops": {"spin": {}}}, "unknown augmentation 'spin'"),
        ({"ops": {"rotate": {"degrees": 5}}}, "unknown parameter(s) degrees"),
        ({"mix": "blend"}, "augment.mix='blend'"),
        ({"mix_prob": 2.0}, "mix_prob"),
        ({"policy": "none", "ops": {"scale": {}}}, "policy none"),
        ({"ops": {"scale": {"sigma": "big"}}}, "must be numbers"),
        ({"ops": ["scale"]}, "must map op name"),
    ],
)
def test_bad_augment_config(values: dict, message: str, tmp_path) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"augment": values}))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)


def test_ops_that_cannot_act_are_refused() -> None:
    plain = dataclasses.replace(ACCEL, vectors=())
    with pytest.raises(ConfigError, match="needs 3-axis vector channels"):
        _policy({"accel": plain}, ops={"rotate": {}})
    with pytest.raises(ConfigError, match="acts on image"):
        _policy(ops={"crop": {}})
    with pytest.raises(ConfigError, match="at least 2 classes"):
        _policy(classes=1, mix="mixup")


def test_vectors_round_trip_and_checks() -> None:
    assert ModalitySpec.from_dict(ACCEL.to_dict()) == ACCEL
    assert ACCEL.to_dict()["vectors"] == {"device": [[0, 1, 2]]}
    assert "vectors" not in dataclasses.replace(ACCEL, vectors=()).to_dict()
    with pytest.raises(ConfigError, match="3 distinct channels"):
        dataclasses.replace(ACCEL, vectors=(("device", (0, 1, 3)),))
