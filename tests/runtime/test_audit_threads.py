"""One model shared by threads: every call in every thread equals the sequential answer, and a
worker's error fails the test (`runtime_synth.run_in_threads` re-raises it)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
import runtime_synth as synth

from edgekd.runtime import Model

ModelOf = Callable[[str, str], Model]


def test_the_helper_re_raises_worker_errors_and_never_hangs() -> None:
    def fails_in_thread_2(i: int) -> None:
        if i == 2:
            raise ValueError("boom")

    with pytest.raises(AssertionError, match="1 of 4 threads failed: thread 2: ValueError: boom"):
        synth.run_in_threads(fails_in_thread_2, 4)
    release = threading.Event()
    with pytest.raises(AssertionError, match=r"threads \[0\] still running after 0.5 s"):
        synth.run_in_threads(lambda i: release.wait(30), 1, timeout=0.5)
    release.set()


def test_predict_from_threads_equals_sequential_on_every_call(model_of: ModelOf) -> None:
    model = model_of("openvino", "int8")  # one InferRequest per thread
    xs = [synth.make_windows(16, seed=s)[0] for s in range(4)]
    expected = [model.predict(x).probs for x in xs]
    calls = [0] * 4

    def work(i: int) -> None:
        for k in range(20):
            got = model.predict(xs[i]).probs
            np.testing.assert_array_equal(got, expected[i], err_msg=f"thread {i}, call {k}")
            calls[i] += 1

    synth.run_in_threads(work, 4)
    assert calls == [20] * 4


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_streams_in_threads_equal_sequential_on_every_pass(model_of: ModelOf, backend: str) -> None:
    from tests.runtime.test_runtime_stream import RECORDING, push_all

    model = model_of(backend, "int8")
    recordings = [np.roll(RECORDING, 37 * i, axis=0) for i in range(4)]
    expected = [np.stack([e.probs for e in model.stream().push(r)]) for r in recordings]
    passes = [0] * 4

    def work(i: int) -> None:
        stream = model.stream()  # one stream per thread, shared model
        for k in range(5):
            stream.reset()
            events = push_all(stream, recordings[i], [13, 64, 1, 200] * 10)
            got = np.stack([e.probs for e in events])
            assert got.shape == expected[i].shape, (i, k, got.shape)
            np.testing.assert_allclose(got, expected[i], atol=1e-6, err_msg=f"thread {i}, pass {k}")
            passes[i] += 1

    synth.run_in_threads(work, 4)
    assert passes == [5] * 4
