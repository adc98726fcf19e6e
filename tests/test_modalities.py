"""Preprocessing per modality kind: golden values computed by hand, spec round trips, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable

import numpy as np
import pytest

from edgekd.errors import ConfigError, DataError, InputError
from edgekd.modalities import (
    ModalitySpec,
    feature_shape,
    fit_normalisation,
    log_mel,
    mel_filterbank,
    preprocess,
    validate_raw,
)

ACCEL = ModalitySpec(name="accel", kind="timeseries", rate_hz=50.0, channels=3, window=128, hop=64)
VOICE = ModalitySpec(name="voice", kind="audio", rate_hz=16000.0, channels=1, window=8000, hop=4000)
FACE = ModalitySpec(
    name="face", kind="image", rate_hz=0.0, channels=3, window=0, hop=0, size=(4, 5)
)


def test_spec_round_trips_through_json() -> None:
    spec = dataclasses.replace(ACCEL, mean=(0.5, -1.0, 2.0), std=(1.0, 2.0, 0.25))
    for s in (spec, VOICE, FACE):
        assert ModalitySpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_from_dict_rejects_unknown_kind_and_keys() -> None:
    bad = {**ACCEL.to_dict(), "kind": "video"}
    with pytest.raises(ConfigError, match="unknown kind 'video'"):
        ModalitySpec.from_dict(bad)
    with pytest.raises(ConfigError, match="unknown key.*colour"):
        ModalitySpec.from_dict({**ACCEL.to_dict(), "colour": 1})


def test_spec_rejects_inconsistent_parameters() -> None:
    with pytest.raises(ConfigError, match="mean/std need 3"):
        dataclasses.replace(ACCEL, mean=(0.0,), std=(1.0,))
    with pytest.raises(ConfigError, match="shorter than n_fft"):
        dataclasses.replace(VOICE, window=300)
    with pytest.raises(ConfigError, match="std entry must be > 0"):
        dataclasses.replace(ACCEL, mean=(0.0, 0.0, 0.0), std=(1.0, 0.0, 1.0))


def test_feature_shapes() -> None:
    assert feature_shape(ACCEL) == (3, 128)
    # 1 + (8000 - 400) // 160 = 48 frames, no padding.
    assert feature_shape(VOICE) == (40, 48)
    assert feature_shape(FACE) == (3, 4, 5)


def test_timeseries_golden_and_input_untouched() -> None:
    spec = ModalitySpec("imu", "timeseries", 50.0, 2, 2, 1, mean=(2.0, 20.0), std=(1.0, 10.0))
    raw = np.array([[[1.0, 10.0], [3.0, 30.0]]], dtype=np.float32)  # (B=1, T=2, C=2)
    out = preprocess(spec, raw)
    # channel 0: (1-2)/1, (3-2)/1; channel 1: (10-20)/10, (30-20)/10
    np.testing.assert_array_equal(out, [[[-1.0, 1.0], [-1.0, 1.0]]])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(raw, [[[1.0, 10.0], [3.0, 30.0]]])
    # One channel makes the transpose a view of the input: it must still not be modified.
    one = ModalitySpec("x", "timeseries", 50.0, 1, 2, 1, mean=(1.0,), std=(2.0,))
    raw1 = np.array([[[3.0], [5.0]]], dtype=np.float32)
    np.testing.assert_array_equal(preprocess(one, raw1), [[[1.0, 2.0]]])
    np.testing.assert_array_equal(raw1, [[[3.0], [5.0]]])


def test_image_golden_uint8_and_float() -> None:
    spec = ModalitySpec("cam", "image", 0.0, 1, 0, 0, mean=(0.2,), std=(0.4,), size=(1, 3))
    raw = np.array([[[[0], [51], [255]]]], dtype=np.uint8)  # (B=1, H=1, W=3, C=1)
    # /255 -> 0, 0.2, 1; then (v - 0.2) / 0.4 -> -0.5, 0, 2; layout (B, C, H, W)
    expected = [[[[-0.5, 0.0, 2.0]]]]
    np.testing.assert_allclose(preprocess(spec, raw), expected, atol=1e-6)
    np.testing.assert_allclose(preprocess(spec, raw.astype(np.float32) / 255), expected, atol=1e-6)


def test_mel_filterbank_weights_at_1khz() -> None:
    fb = mel_filterbank(16000.0, 400, 40)
    assert fb.shape == (40, 201)
    # HTK: mel_max = 2595 log10(1 + 8000/700) = 2840.023, spacing 2840.023 / 41 = 69.2689.
    # 1000 Hz (rfft bin 25) -> 999.985 mel, between filter 13's peak (14 * 69.2689 = 969.765)
    # and filter 14's peak (1039.034): weights (1039.034 - 999.985) / 69.2689 = 0.5637, 0.4363.
    assert fb[13, 25] == pytest.approx(0.5637, abs=1e-4)
    assert fb[14, 25] == pytest.approx(0.4363, abs=1e-4)
    assert np.count_nonzero(fb[:, 25]) == 2
    assert fb.max() <= 1.0


def test_log_mel_of_pure_tone_peaks_in_the_right_bin() -> None:
    t = np.arange(8000) / 16000.0
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)[None]
    mel = log_mel(VOICE, tone)
    assert mel.shape == (1, 40, 48)
    assert (mel[0].argmax(axis=0) == 13).all()
    # 1000 Hz is exactly rfft bin 25 (25 periods per 400 samples). With a periodic Hann window
    # and amplitude A = 0.5: |X[25]| = A N / 4 = 50 (power 2500), |X[24]| = |X[26]| = A N / 8
    # = 25 (power 625). HTK weights of bins 24, 25, 26 (960, 1000, 1040 Hz): filter 13
    # 0.9511, 0.5637, 0.1852; filter 14 0.0489, 0.4363, 0.8148.
    expected_13 = math.log(0.9511 * 625 + 0.5637 * 2500 + 0.1852 * 625)
    expected_14 = math.log(0.0489 * 625 + 0.4363 * 2500 + 0.8148 * 625)
    np.testing.assert_allclose(mel[0, 13], expected_13, atol=2e-3)
    np.testing.assert_allclose(mel[0, 14], expected_14, atol=2e-3)
    others = np.delete(mel[0], [13, 14], axis=0)
    assert others.max() < math.log(1e-5)  # silence: log(0 + 1e-6) up to float32 leakage


def test_log_mel_window_equals_slice_of_longer_signal() -> None:
    """No padding: a window's frames are exactly the frames of the longer signal it came from."""
    rng = np.random.default_rng(0)
    signal = rng.normal(0, 0.3, 16000).astype(np.float32)
    long_spec = dataclasses.replace(VOICE, window=16000)
    full = log_mel(long_spec, signal[None])
    part = log_mel(VOICE, signal[None, 4000:12000])  # 4000 = 25 frame hops of 160
    np.testing.assert_allclose(part, full[:, :, 25 : 25 + 48], rtol=1e-5, atol=1e-5)


def test_int16_audio_is_scaled_pcm() -> None:
    rng = np.random.default_rng(1)
    pcm = rng.integers(-20000, 20000, (2, 8000), dtype=np.int16)
    np.testing.assert_allclose(
        preprocess(VOICE, pcm), preprocess(VOICE, pcm.astype(np.float32) / 32768), atol=1e-5
    )
    np.testing.assert_array_equal(preprocess(VOICE, pcm[..., None]), preprocess(VOICE, pcm))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (np.zeros((2, 128, 3), dtype=bool), r"dtype bool.*\(B, 128, 3\)"),
        (np.zeros((2, 128, 3), dtype=np.complex64), r"dtype complex64.*\(B, 128, 3\)"),
        (np.zeros((128, 3), dtype=np.float32), r"expected shape \(B, 128, 3\).*rank 2"),
        (np.zeros((2, 128, 6), dtype=np.float32), r"expected 3 channels, got 6.*\(B, 128, 3\)"),
        (np.zeros((2, 100, 3), dtype=np.float32), r"expected 128 samples per window, got 100"),
        ([[0.0] * 3] * 128, r"expected a numpy array of shape \(B, 128, 3\), got list"),
    ],
)
def test_validate_raw_names_the_problem(raw: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        validate_raw(ACCEL, raw)
    with pytest.raises(ValueError):  # InputError is a ValueError for callers that expect one
        preprocess(ACCEL, raw)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_raw_refuses_non_finite(bad: float) -> None:
    raw = np.zeros((2, 128, 3), dtype=np.float32)
    raw[1, 5, 2] = bad
    with pytest.raises(InputError, match=r"NaN or inf \(1 values, first at index \(1, 5, 2\)\)"):
        validate_raw(ACCEL, raw)


def test_validate_raw_image_and_audio_specifics() -> None:
    with pytest.raises(InputError, match=r"expected 4 rows, got 8.*resize"):
        validate_raw(FACE, np.zeros((1, 8, 5, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="integer images must be uint8"):
        validate_raw(FACE, np.zeros((1, 4, 5, 3), dtype=np.uint16))
    with pytest.raises(InputError, match=r"expected 1 channel \(mono\), got 2"):
        validate_raw(VOICE, np.zeros((1, 8000, 2), dtype=np.float32))
    with pytest.raises(InputError, match="integer audio must be int16"):
        validate_raw(VOICE, np.zeros((1, 8000), dtype=np.int32))
    validate_raw(FACE, np.zeros((0, 4, 5, 3), dtype=np.uint8))  # an empty batch is valid


def test_fit_normalisation_by_hand() -> None:
    spec = ModalitySpec("imu", "timeseries", 50.0, 2, 2, 1)
    # channel 0 takes 0, 2, 4, 6: mean 3, population variance (9 + 1 + 1 + 9) / 4 = 5;
    # channel 1 is constant 7: std is floored at 1e-6 instead of 0.
    raw = np.array([[[0, 7], [2, 7]], [[4, 7], [6, 7]]], dtype=np.float32)
    fitted = fit_normalisation(spec, raw)
    assert fitted.mean == pytest.approx((3.0, 7.0))
    assert fitted.std == pytest.approx((math.sqrt(5.0), 1e-6))
    assert spec.mean == () and fitted.name == "imu"
    out = preprocess(fitted, raw)
    np.testing.assert_allclose(out[:, 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 0].std(), 1.0, atol=1e-6)
    with pytest.raises(DataError, match="zero training windows"):
        fit_normalisation(spec, raw[:0])


def test_fit_normalisation_audio_per_mel_bin() -> None:
    rng = np.random.default_rng(2)
    raw = rng.normal(0, 0.2, (3, 8000)).astype(np.float32)
    fitted = fit_normalisation(VOICE, raw)
    feats = log_mel(VOICE, raw)
    np.testing.assert_allclose(fitted.mean, feats.mean(axis=(0, 2)), rtol=1e-4)
    np.testing.assert_allclose(fitted.std, feats.std(axis=(0, 2)), rtol=1e-3)


def test_preprocess_is_vectorised() -> None:
    rng = np.random.default_rng(3)
    raw = rng.normal(0, 1, (1000, 128, 3)).astype(np.float32)
    spec = fit_normalisation(ACCEL, raw)
    best = min(_elapsed(lambda: preprocess(spec, raw)) for _ in range(5))
    assert best < 0.02, f"1000 HAR windows took {best * 1000:.1f} ms"


def _elapsed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
