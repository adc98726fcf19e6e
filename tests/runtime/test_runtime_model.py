"""Loading and `predict`: backend choice, equality with the raw backends, int8, bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import runtime_synth as synth

from edgekd.errors import BackendUnavailable, ConfigError, InputError
from edgekd.modalities import ModalitySpec, preprocess
from edgekd.runtime import Model, load, read_bundle, softmax

ModelOf = Callable[[str, str], Model]


def test_softmax_golden_values() -> None:
    # softmax([0, ln 3]) = [1/4, 3/4]; a shift by 1000 must not overflow (exp(1000) = inf),
    # only lose float32 resolution (1000 + ln 3 is stored to within 3e-5)
    out = softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0 + np.log(3.0)]], np.float32))
    np.testing.assert_allclose(out[0], [0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.25, 0.75], atol=1e-4)
    assert out.dtype == np.float32


def _direct_probs(bundle: Path, backend: str, rel: str, features: np.ndarray) -> np.ndarray:
    """The FP32 model run by the backend library itself, without edgekd."""
    path = str(bundle / rel)
    if backend == "onnxruntime":
        import onnxruntime as ort

        logits = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
            None, {"input": features})[0]
    else:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(path), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        logits = compiled(features)[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize(("backend", "rel"), [("onnxruntime", "model.fp32.onnx"),
                                              ("openvino", "model.fp32.onnx")])
def test_fp32_predict_equals_backend_on_the_onnx(model_of: ModelOf, bundle_path: Path,
                                                  backend: str, rel: str) -> None:
    model = model_of(backend, "fp32")
    x, _ = synth.make_windows(20, seed=5)
    expected = _direct_probs(bundle_path, backend, rel, preprocess(model.spec, x))
    pred = model.predict(x)
    np.testing.assert_allclose(pred.probs, expected, atol=1e-5)
    assert pred.probs.shape == (20, 4) and pred.index.shape == (20,)
    assert pred.labels == [synth.LABELS[i] for i in expected.argmax(1)]
    assert model.self_check()["max_abs_diff"] < 1e-5  # golden.npz from export time


def test_single_window_is_unbatched(model_of: ModelOf) -> None:
    model = model_of("onnxruntime", "fp32")
    x, _ = synth.make_windows(3, seed=6)
    one = model.predict(x[1])
    many = model.predict(x)
    assert one.probs.shape == (4,) and isinstance(one.labels, str)
    np.testing.assert_allclose(one.probs, many.probs[1], atol=1e-6)
    assert one.labels == many.labels[1] and int(one.index) == int(many.index[1])
    assert float(one.scores) == pytest.approx(float(one.probs.max()))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_agrees_with_fp32_and_is_accurate(model_of: ModelOf, backend: str) -> None:
    x, y = synth.make_windows(96, seed=7)
    fp32 = model_of(backend, "fp32").predict(x)
    int8 = model_of(backend, "int8").predict(x)
    # Most windows, not all: int8 kernels differ by CPU. With VNNI (AVX-512, AMX) sums are exact
    # int32 and int8 agrees with fp32 on all 96 windows; on AVX2-only CPUs OpenVINO's u8 x s8
    # pair sums saturate int16 and it agrees on 93% (measured with ONEDNN_MAX_CPU_ISA=AVX2).
    assert (int8.index == fp32.index).mean() >= 0.85
    assert (int8.index == y).mean() >= 0.85  # the synthetic task is learnable; chance is 0.25
    assert not np.allclose(int8.probs, fp32.probs, atol=1e-4)  # int8 really is another model


def test_openvino_int8_runs_int8_kernels(model_of: ModelOf) -> None:
    int8 = model_of("openvino", "int8").engine.details["compute_precisions"]
    fp32 = model_of("openvino", "fp32").engine.details["compute_precisions"]
    assert len(int8) == 3 and set(int8.values()) <= {"i8", "u8"}  # 2 convs + the Gemm
    assert set(fp32.values()) == {"f32"}  # and FP32 stays f32 on this bf16-capable CPU


def test_openvino_runs_the_qdq_onnx_without_an_ir(tmp_path: Path) -> None:
    bundle = synth.build_bundle(tmp_path / "no-ir.edgekd", tmp_path / "work", openvino_ir=False)
    model = load(bundle, backend="openvino", cache_dir=tmp_path / "cache")
    assert (model.precision, model.info["artifact"]) == ("int8", "model.int8.qdq.onnx")
    assert set(model.info["compute_precisions"].values()) <= {"i8", "u8"}
    x, _ = synth.make_windows(96, seed=12)
    ort_int8 = load(bundle, backend="onnxruntime", precision="int8").predict(x)
    # one model, two backends' int8 kernels (see test_int8_agrees_with_fp32_and_is_accurate):
    # 100% with VNNI, 89% with OpenVINO on AVX2 only
    assert (model.predict(x).index == ort_int8.index).mean() >= 0.85


def test_auto_and_default_precision(bundle_path: Path, cache_root: Path) -> None:
    # No GPU here: auto skips TensorRT and takes OpenVINO; precision None = the target's (int8).
    model = load(bundle_path, cache_dir=cache_root)
    assert (model.backend, model.precision) == ("openvino", "int8")
    assert model.manifest["target"]["name"] == "cpu" and model.info["threads"] == 1
    ort = load(bundle_path, backend="onnxruntime", precision="fp32", threads=2)
    assert ort.info["threads"] == 2 and ort.info["artifact"] == "model.fp32.onnx"


def test_missing_backend_names_the_package(bundle_path: Path, cache_root: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgekd\[openvino\]'"):
        load(bundle_path, backend="openvino", cache_dir=cache_root)
    model = load(bundle_path, cache_dir=cache_root)  # auto falls back to ONNX Runtime
    assert model.backend == "onnxruntime"


def test_auto_falls_back_when_a_backend_fails_to_open(
        bundle_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekd.runtime.backends import onnxruntime as ort_backend
    from edgekd.runtime.backends import openvino as ov_backend

    def broken(*args: object, **kwargs: object) -> None:
        raise BackendUnavailable("cannot compile here")

    monkeypatch.setattr(ov_backend, "open", broken)
    assert load(bundle_path, cache_dir=cache_root).backend == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="cannot compile here"):
        load(bundle_path, backend="openvino", cache_dir=cache_root)
    monkeypatch.setattr(ort_backend, "open", broken)
    with pytest.raises(BackendUnavailable, match=r"no backend can run this bundle: tensorrt: "
                       r".*; openvino: cannot compile here; onnxruntime: cannot compile here"):
        load(bundle_path, cache_dir=cache_root)


def test_bad_backend_or_precision(bundle_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown backend 'cuda'"):
        load(bundle_path, backend="cuda")
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        load(bundle_path, precision="int4")
    with pytest.raises(BackendUnavailable, match=r"onnxruntime has no bf16 model .* int8, fp32"):
        load(bundle_path, backend="onnxruntime", precision="bf16")
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        load(bundle_path, threads=0)


def _windows() -> np.ndarray:
    return synth.make_windows(4, seed=8)[0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _windows().astype(np.complex64), r"dtype complex64"),
        (lambda: _windows().astype(str), r"dtype <U"),
        (lambda: _windows()[..., :2], r"3 channels, got 2"),
        (lambda: _windows()[:, :100], r"128 samples.*got 100"),
        (lambda: _windows()[None], r"rank 4"),
        (lambda: np.zeros((0, 128, 3), np.float32), r"empty batch"),
        (lambda: _windows().tolist(), r"expects a numpy array, got list"),
        (lambda: np.array(1.0), r"got a scalar"),
    ],
)
def test_bad_input_is_an_input_error(model_of: ModelOf, make: Callable, message: str) -> None:
    with pytest.raises(InputError, match=message):
        model_of("onnxruntime", "fp32").predict(make())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(model_of: ModelOf, bad: float) -> None:
    x = _windows()
    x[2, 17, 1] = bad
    with pytest.raises(InputError, match=r"NaN or inf \(1 values, first at index \(2, 17, 1\)\)"):
        model_of("openvino", "int8").predict(x)


def test_integer_samples_equal_their_float_values(model_of: ModelOf) -> None:
    model = model_of("onnxruntime", "fp32")
    x = np.round(_windows() * 100).astype(np.int16)
    np.testing.assert_allclose(model.predict(x).probs, model.predict(x.astype(np.float32)).probs,
                               atol=1e-6)


def test_large_batch_is_split_into_bounded_calls(model_of: ModelOf) -> None:
    model = model_of("onnxruntime", "int8")
    seen: list[int] = []
    run = model.engine.new_runner()

    def spy(features: np.ndarray) -> np.ndarray:
        seen.append(len(features))
        return run(features)

    x, _ = synth.make_windows(600, seed=9)
    probs = model.infer(preprocess(model.spec, x), spy)
    assert seen == [256, 256, 88]
    np.testing.assert_allclose(probs, model.predict(x).probs, atol=1e-6)


def test_openvino_runner_rebinds_buffers_per_batch_size(model_of: ModelOf) -> None:
    model = model_of("openvino", "fp32")
    feats = preprocess(model.spec, synth.make_windows(8, seed=13)[0])
    run = model.engine.new_runner()
    reference = [run(feats[i : i + 1]) for i in range(8)]  # batch 1, one window at a time
    for b in (1, 2, 3, 4, 5, 1, 6, 2, 8):  # more sizes than it keeps bound at once
        np.testing.assert_allclose(run(feats[:b]), np.concatenate(reference[:b]), atol=1e-5)
    out = run(feats[:1])
    out[:] = 0  # the caller owns the result: the next call must not see this
    np.testing.assert_allclose(run(feats[:1]), reference[0], atol=1e-6)


def test_predict_from_threads_equals_sequential(model_of: ModelOf) -> None:
    model = model_of("openvino", "int8")  # one InferRequest per thread
    xs = [synth.make_windows(16, seed=s)[0] for s in range(4)]
    expected = [model.predict(x).probs for x in xs]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(20):
            got[i] = model.predict(xs[i]).probs

    synth.run_in_threads(work, 4)
    for i in range(4):
        np.testing.assert_array_equal(got[i], expected[i])


def test_manifest_spec_round_trips(bundle_path: Path) -> None:
    spec = ModalitySpec.from_dict(read_bundle(bundle_path).modality)
    assert (spec.window, spec.hop, spec.rate_hz, spec.channels) == (128, 64, 50.0, 3)
    assert len(spec.mean) == 3 and spec.mean[2] == pytest.approx(1.0, abs=0.05)  # gravity on z
