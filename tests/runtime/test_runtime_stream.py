"""Streaming: equals offline predict for every chunking, bounded memory, bad chunks, threads."""

from __future__ import annotations

import dataclasses
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import runtime_synth as synth
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekd.errors import InputError
from edgekd.runtime import Model, StreamEvent

ModelOf = Callable[[str, str], Model]
W, HOP, RATE = synth.WINDOW, synth.HOP, synth.RATE_HZ
# Two activities back to back: 900 samples = 13 full windows.
RECORDING = np.concatenate([synth.make_recording(450, 1, np.random.default_rng(3)),
                            synth.make_recording(450, 3, np.random.default_rng(4))])


def offline(model: Model, samples: np.ndarray, hop: int = HOP) -> np.ndarray:
    starts = range(0, len(samples) - W + 1, hop)
    return model.predict(np.stack([samples[s : s + W] for s in starts])).probs


def push_all(stream, samples: np.ndarray, sizes: list[int]) -> list[StreamEvent]:
    events, pos = [], 0
    for size in sizes:
        if pos >= len(samples):
            break
        events += stream.push(samples[pos : pos + size])
        pos += size
    if pos < len(samples):
        events += stream.push(samples[pos:])
    return events


def check_events(events: list[StreamEvent], expected: np.ndarray, hop: int = HOP) -> None:
    assert len(events) == len(expected)
    for k, ev in enumerate(events):
        assert ev.end_sample == k * hop + W
        assert ev.t_end_s == pytest.approx((k * hop + W) / RATE)
        np.testing.assert_allclose(ev.probs, expected[k], atol=1e-5)
        assert ev.index == int(expected[k].argmax()) and ev.label == synth.LABELS[ev.index]
        assert ev.score == pytest.approx(float(expected[k].max()), abs=1e-5)


@pytest.mark.parametrize(("backend", "precision"), [("onnxruntime", "fp32"), ("openvino", "int8")])
@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=40),
       max_batch=st.integers(1, 8))
def test_stream_equals_predict_for_any_chunking(model_of: ModelOf, backend: str, precision: str,
                                                sizes: list[int], max_batch: int) -> None:
    model = model_of(backend, precision)
    events = push_all(model.stream(max_batch=max_batch), RECORDING, sizes)
    check_events(events, offline(model, RECORDING))


def test_one_sample_at_a_time_and_labels_follow_the_activity(model_of: ModelOf) -> None:
    # FP32 (compiled with an f32 precision hint): the same labels on any CPU. OpenVINO's int8
    # labels 4 of the 6 walk windows "still" on AVX2-only CPUs (saturating int8 kernels);
    # int8 streaming = offline is test_stream_equals_predict_for_any_chunking's.
    model = model_of("openvino", "fp32")
    stream = model.stream(rate_hz=50)
    events = [ev for i in range(len(RECORDING)) for ev in stream.push(RECORDING[i : i + 1])]
    check_events(events, offline(model, RECORDING))
    assert events[0].label == "walk" and events[-1].label == "shake"
    assert stream.samples_consumed == 900 and stream.pending_samples == 900 - 12 * HOP - W + HOP


def test_million_sample_chunk_in_bounded_batches(model_of: ModelOf) -> None:
    model = model_of("onnxruntime", "int8")
    stream = model.stream(max_batch=64)
    calls: list[int] = []
    run = stream._run
    stream._run = lambda f: calls.append(len(f)) or run(f)
    samples = np.tile(RECORDING, (1112, 1))[:1_000_000]
    tracemalloc.start()
    events = stream.push(samples)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(events) == (1_000_000 - W) // HOP + 1 == 15624
    assert max(calls) == 64 and sum(calls) == 15624
    # all windows at once would be 24 MB of float32; the events themselves take a few MB
    assert peak < 12e6, peak
    assert events[-1].t_end_s == pytest.approx((15623 * HOP + W) / RATE)
    np.testing.assert_allclose(np.stack([e.probs for e in events[:13]]), offline(model, RECORDING),
                               atol=1e-5)


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (np.zeros((0, 3), np.float32), r"empty chunk"),
        (np.zeros((5, 2), np.float32), r"expected a chunk of shape \(n, 3\), got \(5, 2\)"),
        (np.zeros(3, np.float32), r"a single sample needs a leading axis"),
        (np.zeros((5, 3), np.complex64), r"dtype complex64; expected float or integer"),
        ([[0.0, 0.0, 1.0]], r"got list"),
    ],
)
def test_bad_chunks(model_of: ModelOf, chunk: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        model_of("onnxruntime", "fp32").stream().push(chunk)  # type: ignore[arg-type]


def test_bad_chunk_leaves_the_stream_unchanged(model_of: ModelOf) -> None:
    model = model_of("onnxruntime", "fp32")
    stream = model.stream()
    events = stream.push(RECORDING[:300])
    bad = RECORDING[300:400].copy()
    bad[42, 1] = np.nan
    with pytest.raises(InputError, match=r"NaN or inf \(1 values, first at sample 42 of the "
                                        r"chunk = stream sample 342\)"):
        stream.push(bad)
    with pytest.raises(InputError, match=r"got int16 samples after float32 ones"):
        stream.push(np.zeros((4, 3), np.int16))
    events += stream.push(RECORDING[300:])
    check_events(events, offline(model, RECORDING))


def test_rate_is_checked_where_declared(model_of: ModelOf) -> None:
    model = model_of("onnxruntime", "fp32")
    with pytest.raises(InputError, match=r"at 100 Hz but the model expects 50 Hz"):
        model.stream(rate_hz=100)
    model.stream(rate_hz=50.0)


def test_integer_samples_stream_like_predict(model_of: ModelOf) -> None:
    model = model_of("onnxruntime", "fp32")
    counts = np.round(RECORDING * 1000).astype(np.int16)  # e.g. raw sensor counts (mg)
    events = push_all(model.stream(), counts, [100] * 9)
    check_events(events, offline(model, counts))


def test_flush_and_reset_restart_stream_time(model_of: ModelOf) -> None:
    model = model_of("onnxruntime", "fp32")
    stream = model.stream()
    assert len(stream.push(RECORDING[:200])) == 2 and stream.pending_samples == 200 - 2 * HOP
    assert stream.flush() == [] and stream.pending_samples == 0
    again = stream.push(RECORDING[:W])
    assert [ev.end_sample for ev in again] == [W]
    stream.push(RECORDING[:100])
    stream.reset()
    check_events(stream.push(RECORDING), offline(model, RECORDING))


def test_hop_longer_than_window_skips_samples(model_of: ModelOf) -> None:
    base = model_of("onnxruntime", "fp32")
    model = Model(base.bundle, base.engine, dataclasses.replace(base.spec, hop=200), 0.0)
    events = push_all(model.stream(max_batch=2), RECORDING, [7, 333, 1, 150, 409])
    check_events(events, offline(model, RECORDING, hop=200), hop=200)


def test_interleaved_streams_are_independent(model_of: ModelOf) -> None:
    model = model_of("openvino", "int8")
    a, b = model.stream(), model.stream()
    other = RECORDING[::-1].copy()
    ev_a, ev_b = [], []
    for i in range(0, 900, 50):
        ev_a += a.push(RECORDING[i : i + 50])
        ev_b += b.push(other[i : i + 50])
    check_events(ev_a, offline(model, RECORDING))
    check_events(ev_b, offline(model, other))


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_streams_in_threads_equal_sequential(model_of: ModelOf, backend: str) -> None:
    model = model_of(backend, "int8")
    recordings = [np.roll(RECORDING, 37 * i, axis=0) for i in range(4)]
    expected = [np.stack([e.probs for e in model.stream().push(r)]) for r in recordings]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        stream = model.stream()  # one stream per thread, shared model
        for _ in range(5):
            stream.reset()
            events = push_all(stream, recordings[i], [13, 64, 1, 200] * 10)
        got[i] = np.stack([e.probs for e in events])

    synth.run_in_threads(work, 4)
    for i in range(4):
        np.testing.assert_allclose(got[i], expected[i], atol=1e-6)
