"""Audio (int16 PCM, log-mel) and image bundles through predict, stream and `edgekd run`."""

from __future__ import annotations

import dataclasses
import wave
from pathlib import Path

import numpy as np
import onnx
import pytest
import runtime_synth as synth
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from typer.testing import CliRunner

import edgekd.runtime.stream as stream_module
from edgekd.cli import app
from edgekd.errors import InputError
from edgekd.modalities import ModalitySpec, preprocess
from edgekd.runtime import Model, load
from edgekd.runtime.bench import run_benchmark

AUDIO = ModalitySpec(name="voice", kind="audio", rate_hz=8000.0, channels=1, window=1600,
                     hop=800, n_mels=16, n_fft=400, hop_length=160)
IMAGE = ModalitySpec(name="face", kind="image", rate_hz=0.0, channels=3, window=0, hop=0,
                     size=(8, 8))


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory: pytest.TempPathFactory, cache_root: Path) -> Model:
    out = tmp_path_factory.mktemp("audio") / "voice.edgekd"
    synth.build_pooled_bundle(out, AUDIO, ["quiet", "hum", "chirp"])
    return load(out, backend="onnxruntime", cache_dir=cache_root)


def pcm(seconds: float, seed: int) -> np.ndarray:
    """int16 PCM: a tone whose pitch and loudness change, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 8000)) / 8000
    tone = np.sin(2 * np.pi * (300 + 900 * t / seconds) * t) * (0.1 + 0.8 * (t % 0.5))
    return np.round((tone + rng.normal(0, 0.05, t.shape)) * 12000).astype(np.int16)


def test_audio_stream_of_int16_equals_predict(audio_model: Model) -> None:
    samples = pcm(2.0, seed=1)  # 16000 samples: (16000 - 1600) // 800 + 1 = 19 windows
    windows = np.stack([samples[s : s + 1600] for s in range(0, 16000 - 1600 + 1, 800)])
    expected = audio_model.predict(windows).probs
    assert audio_model.precision == "fp32" and expected.shape == (19, 3)
    stream = audio_model.stream(rate_hz=8000)
    events = []
    for i in range(0, len(samples), 777):
        chunk = samples[i : i + 777]
        events += stream.push(chunk[:, None] if i % 2 else chunk)  # (n, 1) and (n,) both work
    np.testing.assert_allclose(np.stack([e.probs for e in events]), expected, atol=1e-5)
    assert [e.end_sample for e in events] == [1600 + 800 * k for k in range(19)]
    assert events[0].t_end_s == pytest.approx(0.2)
    # int16 is PCM scaled by 1/32768, so float samples of the same waveform agree
    as_float = audio_model.predict(windows.astype(np.float32) / 32768)
    np.testing.assert_allclose(as_float.probs, expected, atol=1e-5)


def audio_windows(samples: np.ndarray, spec: ModalitySpec) -> np.ndarray:
    return np.stack([samples[s : s + spec.window]
                     for s in range(0, len(samples) - spec.window + 1, spec.hop)])


def stream_features(model: Model, samples: np.ndarray, sizes: list[int],
                    max_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Push `samples` in chunks of `sizes` (the rest in one chunk); the model inputs the stream
    built and the event probabilities."""
    stream = model.stream(max_batch=max_batch)
    seen: list[np.ndarray] = []
    run = stream._run
    stream._run = lambda f: seen.append(f.copy()) or run(f)
    events, pos = [], 0
    for size in sizes:
        events += stream.push(samples[pos : pos + size])
        pos += size
        if pos >= len(samples):
            break
    if pos < len(samples):
        events += stream.push(samples[pos:])
    return np.concatenate(seen), np.stack([e.probs for e in events])


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=12),
       max_batch=st.integers(1, 6), hop=st.sampled_from([800, 160, 480, 2400, 700]),
       as_int16=st.booleans())
def test_audio_stream_features_equal_preprocess_for_any_chunking(
        audio_model: Model, sizes: list[int], max_batch: int, hop: int, as_int16: bool) -> None:
    """The incremental log-mel (hops that are multiples of hop_length 160, including a hop
    longer than the window) and the whole-window fallback (hop 700) equal `preprocess`."""
    model = Model(audio_model.bundle, audio_model.engine,
                  dataclasses.replace(audio_model.spec, hop=hop), 0.0)
    samples = pcm(1.5, seed=hop)
    samples = samples if as_int16 else samples.astype(np.float32) / 32768
    windows = audio_windows(samples, model.spec)
    features, probs = stream_features(model, samples, sizes, max_batch)
    np.testing.assert_allclose(features, preprocess(model.spec, windows), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(probs, model.predict(windows).probs, atol=1e-5)


def test_audio_stream_transforms_only_the_new_frames(audio_model: Model,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    transformed: list[int] = []
    compute = stream_module.log_mel_frames
    monkeypatch.setattr(stream_module, "log_mel_frames",
                        lambda spec, frames: transformed.append(len(frames)) or compute(spec,
                                                                                        frames))
    stream = audio_model.stream()
    samples = pcm(2.0, seed=7)
    stream.push(samples[:1600])  # the first window: all 1 + (1600 - 400) // 160 = 8 frames
    assert transformed == [8]
    for start in range(1600, 16000, 800):  # each later hop of 800 samples adds 5 frames
        assert len(stream.push(samples[start : start + 800])) == 1
    assert transformed == [8] + [5] * 18
    stream.reset()
    stream.push(samples[:4000])  # 4 windows in one batch: their 8 + 3 * 5 frames, once each
    assert transformed[-1] == 23
    # live 20 ms chunks: each window's new frames are transformed once, together
    stream.reset()
    del transformed[:]
    events = [len(stream.push(samples[i : i + 160])) for i in range(0, 16000, 160)]
    assert sum(events) == 19 and transformed == [8] + [5] * 18


def test_audio_bad_input(audio_model: Model) -> None:
    stream = audio_model.stream()
    with pytest.raises(InputError, match=r"dtype int32; expected float or int16 PCM"):
        stream.push(np.zeros(10, np.int32))
    with pytest.raises(InputError, match=r"expected a chunk of shape \(n,\) or \(n, 1\)"):
        stream.push(np.zeros((10, 2), np.float32))
    with pytest.raises(InputError, match=r"at 16000 Hz but the model expects 8000 Hz"):
        audio_model.stream(rate_hz=16000)
    single = audio_model.predict(pcm(0.2, seed=2))
    assert single.probs.shape == (3,) and isinstance(single.labels, str)


def test_run_audio_wav(audio_model: Model, tmp_path: Path, private_cache: Path) -> None:
    samples = pcm(1.0, seed=3)
    path = tmp_path / "voice.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(samples.astype("<i2").tobytes())
    result = CliRunner().invoke(app, ["run", str(audio_model.bundle.root), "--input", str(path),
                                      "--stream", "--chunk", "100"])
    assert result.exit_code == 0, result.output
    labels = [line.split()[2] for line in result.output.splitlines() if " s  " in line]
    windows = np.stack([samples[s : s + 1600] for s in range(0, 8000 - 1600 + 1, 800)])
    assert labels == audio_model.predict(windows).labels


def test_image_predict_and_run(tmp_path: Path, private_cache: Path) -> None:
    bundle = synth.build_pooled_bundle(tmp_path / "face.edgekd", IMAGE, ["a", "b"], seed=4)
    model = load(bundle)
    images = np.random.default_rng(5).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    pred = model.predict(images)
    # the model is mean-pool + linear: its logits follow from the channel means by hand
    inits = onnx.load(str(bundle / "model.fp32.onnx")).graph.initializer
    wh, bh = (numpy_helper.to_array(t) for t in inits[1:])
    logits = (images / 255.0).mean(axis=(1, 2)) @ wh.T + bh
    np.testing.assert_allclose(pred.probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
                               atol=1e-5)
    assert model.predict(images[0]).labels == pred.labels[0]
    with pytest.raises(InputError, match="without a time axis: use predict"):
        model.stream()
    np.save(tmp_path / "faces.npy", images)
    result = CliRunner().invoke(app, ["run", str(bundle), "--input", str(tmp_path / "faces.npy")])
    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.output.splitlines()[-5:]] == pred.labels
    # bench on a bundle without eval data or time axis: seeded inputs, no stream figures
    report = run_benchmark(bundle, backends=["onnxruntime"], batch_sizes=[1, 2], iterations=3,
                           warmup=0)
    (row,) = report["rows"]
    assert row["stream"] is None and row["accuracy"] is None and row["latency"]["count"] == 3


# -- `edgekd run` messages name the input file's row and column and what the bundle takes --------
def run_cli(bundle: Path, path: Path, *extra: str):  # noqa: ANN201
    return CliRunner().invoke(app, ["run", str(bundle), "--input", str(path),
                                    "--backend", "onnxruntime", *extra])


@pytest.mark.parametrize("extra", [(), ("--stream", "--chunk", "32")])
def test_run_nan_names_the_csv_row_and_column(bundle_path: Path, tmp_path: Path,
                                              private_cache: Path, extra: tuple[str, ...]) -> None:
    rows = synth.make_recording(200, 1, np.random.default_rng(0))
    rows[49, 2] = np.nan  # data row 50 = line 51 after the header
    path = tmp_path / "rec.csv"
    np.savetxt(path, rows, delimiter=",", header="ax,ay,az", comments="", fmt="%.5f")
    result = run_cli(bundle_path, path, *extra)
    assert result.exit_code == 2, result.output
    assert f"{path}:51: NaN or inf in column 3 (az)" in result.output
    assert "first at sample" not in result.output and "index (" not in result.output
    np.save(tmp_path / "rec.npy", rows)
    result = run_cli(bundle_path, tmp_path / "rec.npy", *extra)
    assert result.exit_code == 2, result.output
    assert "rec.npy: NaN or inf at row 50, column 3 (1-based; array index [49, 2])" in result.output


def test_run_wrong_kind_of_input_says_what_the_bundle_takes(
        bundle_path: Path, audio_model: Model, tmp_path: Path, private_cache: Path) -> None:
    speech = tmp_path / "speech.wav"
    with wave.open(str(speech), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm(1.0, seed=0).astype("<i2").tobytes())
    result = run_cli(bundle_path, speech)
    assert result.exit_code == 2, result.output
    assert "resample" not in result.output
    assert ("this bundle's model takes 'accel' as a time series of 3 channels at 50 Hz: a .csv "
            "or .npy of shape (T, 3)") in " ".join(result.output.split())
    six = tmp_path / "six.csv"
    np.savetxt(six, np.zeros((300, 6)), delimiter=",")
    result = run_cli(bundle_path, six)
    assert result.exit_code == 2
    assert "six.csv: 6 columns, but this bundle's model takes 'accel' as a time series of 3" \
        in " ".join(result.output.split())
    result = run_cli(audio_model.bundle.root, six)
    assert result.exit_code == 2
    assert "takes 'voice' as mono audio at 8000 Hz" in " ".join(result.output.split())
