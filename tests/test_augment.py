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


def test_cutmix_cuts_the_same_span_in_every_modality() -> None:
    b = 6
    x = {"accel": np.zeros((b, 128, 3), np.float32), "gyro": np.zeros((b, 128, 3), np.float32)}
    x["accel"][1::2] = 1.0
    x["gyro"][1::2] = 1.0
    y = np.array([0, 1, 0, 1, 0, 1])
    out, soft = mix_batch(x, y, SPECS, np.random.default_rng(3), "cutmix", 1.0, 1.0, 2)
    np.testing.assert_array_equal(out["accel"], out["gyro"])
    # The label weight of the partner equals the share of time steps taken from it.
    for i in range(b):
        from_partner = (out["accel"][i, :, 0] != x["accel"][i, :, 0]).mean()
        if y[i] == 0:
            np.testing.assert_allclose(soft[i, 1], from_partner * (soft[i, 1] > 0), atol=1e-6)
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
