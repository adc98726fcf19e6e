"""A small, deterministic, really-working bundle for the runtime tests (no torch).

Windows are accelerometer-like: gravity on z, a class-specific oscillation frequency on all three
axes with random phase and amplitude, and noise. The model is a real 1-D CNN written with
`onnx.helper`: two convolutions with fixed random filters, mean over time, and a linear head whose
weights are fitted by ridge regression on the pooled features, so it classifies the windows well
above chance and int8 vs FP32 agreement is meaningful.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekd.export.bundle import BundleWriter
from edgekd.metrics import classification_report
from edgekd.modalities import ModalitySpec, fit_normalisation, preprocess

LABELS = ["still", "walk", "run", "shake"]
FREQ_HZ = (0.4, 1.8, 3.2, 7.0)  # dominant oscillation per class
RATE_HZ = 50.0
WINDOW, HOP, CHANNELS = 128, 64, 3
OPSET = 18


def make_recording(n_samples: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """(n_samples, 3) float32 raw accelerometer samples in g for one activity."""
    t = np.arange(n_samples) / RATE_HZ
    amp = rng.uniform(0.2, 0.8, size=3) * (0.2 if label == 0 else 1.0)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    f = FREQ_HZ[label] * rng.uniform(0.9, 1.1)
    x = amp * np.sin(2 * np.pi * f * t[:, None] + phase)
    x += 0.3 * amp * np.sin(2 * np.pi * 2 * f * t[:, None] + 2 * phase)  # a harmonic
    x[:, 2] += 1.0  # gravity
    x += rng.normal(0, 0.05, size=x.shape)
    return x.astype(np.float32)


def make_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n raw windows (n, 128, 3) float32 and their labels (n,) int64, classes balanced."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % len(LABELS)
    x = np.stack([make_recording(WINDOW, int(k), rng) for k in y])
    return x, y


def _graph(weights: dict[str, np.ndarray], with_head: bool):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[2, 2], kernel_shape=[5]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[2, 2], kernel_shape=[5],
                         strides=[2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("ReduceMean", ["r2", "axes"], ["pooled"], keepdims=0),
    ]
    names = ["w1", "b1", "w2", "b2"]
    out_name, out_dim = "pooled", weights["w2"].shape[0]
    if with_head:
        nodes.append(helper.make_node("Gemm", ["pooled", "wh", "bh"], ["logits"], transB=1))
        names += ["wh", "bh"]
        out_name, out_dim = "logits", weights["wh"].shape[0]
    inits = [numpy_helper.from_array(weights[n], n) for n in names]
    inits.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "axes"))
    graph = helper.make_graph(
        nodes, "synth_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", CHANNELS, WINDOW])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", out_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def build_onnx(path: Path, spec: ModalitySpec, x_train: np.ndarray, y_train: np.ndarray) -> None:
    """Write the FP32 model: random conv filters, ridge-regressed head on the pooled features."""
    import onnx
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = {
        "w1": (rng.normal(0, 1, (16, CHANNELS, 5)) / np.sqrt(CHANNELS * 5)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 16).astype(np.float32),
        "w2": (rng.normal(0, 1, (32, 16, 5)) / np.sqrt(16 * 5)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 32).astype(np.float32),
    }
    feats_model = _graph(w, with_head=False)
    sess = ort.InferenceSession(feats_model.SerializeToString(), providers=["CPUExecutionProvider"])
    f = sess.run(None, {"input": preprocess(spec, x_train)})[0].astype(np.float64)
    f1 = np.concatenate([f, np.ones((len(f), 1))], axis=1)
    target = np.eye(len(LABELS))[y_train] * 8.0 - 4.0  # logit-like targets: confident softmax
    coef = np.linalg.solve(f1.T @ f1 + 1e-2 * np.eye(f1.shape[1]), f1.T @ target)
    w["wh"] = coef[:-1].T.astype(np.float32).copy()
    w["bh"] = coef[-1].astype(np.float32)
    onnx.save(_graph(w, with_head=True), str(path))


def quantize_int8(fp32: Path, out: Path, calib: np.ndarray) -> None:
    """TensorRT-style QDQ: signed int8 activations and per-channel weights, zero point 0."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": calib[i : i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(
        str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )


def convert_openvino(onnx_path: Path, xml: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)


def base_spec() -> ModalitySpec:
    return ModalitySpec(name="accel", kind="timeseries", rate_hz=RATE_HZ, channels=CHANNELS,
                        window=WINDOW, hop=HOP)


def build_bundle(out: Path, work: Path, *, openvino_ir: bool = True,
                 with_eval: bool = True) -> Path:
    """Build the full test bundle at `out` (FP32 + int8 QDQ ONNX, OpenVINO IR, golden, eval
    inside, or beside as `<stem>.eval.npz` without `with_eval`)."""
    import onnxruntime as ort

    work.mkdir(parents=True, exist_ok=True)
    x_train, y_train = make_windows(400, seed=1)
    x_eval, y_eval = make_windows(96, seed=2)
    spec = fit_normalisation(base_spec(), x_train)
    fp32, int8 = work / "model.fp32.onnx", work / "model.int8.qdq.onnx"
    build_onnx(fp32, spec, x_train, y_train)
    quantize_int8(fp32, int8, preprocess(spec, x_train[:64]))
    accuracy = {}
    for name, path in (("fp32", fp32), ("int8_onnxruntime", int8)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        pred = sess.run(None, {"input": preprocess(spec, x_eval)})[0].argmax(1)
        accuracy[name] = classification_report(y_eval, pred, len(LABELS))
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    golden_x = x_eval[:8]
    logits = sess.run(None, {"input": preprocess(spec, golden_x)})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    with BundleWriter(out, force=True, with_eval=with_eval) as w:
        w.add_file("model.fp32.onnx", fp32, format="onnx", precision="fp32")
        w.add_file("model.int8.qdq.onnx", int8, format="onnx", precision="int8",
                   quantizer="ort-ptq-minmax")
        if openvino_ir:
            for precision, src in (("fp32", fp32), ("int8", int8)):
                xml = work / f"ov.{precision}.xml"
                convert_openvino(src, xml)
                w.add_openvino_ir(xml, precision=precision)
        w.add_npz("golden", x=golden_x, probs=probs.astype(np.float32))
        w.add_npz("eval", x=x_eval, y=y_eval)
        w.set("model", {"name": "synth-cnn", "arch": "synth_cnn", "arch_args": {}, "params": 0})
        w.set("labels", LABELS)
        w.set("modality", spec.to_dict())
        w.set("io", {
            "input": {"name": "input", "shape": ["batch", CHANNELS, WINDOW], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(LABELS)], "dtype": "float32"},
        })
        w.set("tensorrt_build", {"precision": "int8", "workspace_mib": 256, "opset": OPSET,
                                 "profiles": {"min": 1, "opt": 1, "max": 32}})
        w.set("calibration", {"method": "minmax", "samples": 64, "source": "synth:train"})
        w.set("accuracy", accuracy)
        w.set("export", {"options": {"max_drop": 5.0}})  # the accuracy budget of precision auto
        w.set("target", {"name": "cpu", "backend": "openvino", "precision": "int8"})
    return out


def build_pooled_bundle(out: Path, spec: ModalitySpec, labels: list[str], seed: int = 0) -> Path:
    """An FP32-only bundle for any modality: mean over every axis after the channel axis, then a
    linear head with random weights. Small, but a real ONNX model run by real backends."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekd.modalities import feature_shape

    shape = list(feature_shape(spec))
    rng = np.random.default_rng(seed)
    k, c = len(labels), shape[0]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
         helper.make_node("Gemm", ["pooled", "wh", "bh"], ["logits"], transB=1)],
        "pooled_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k])],
        [numpy_helper.from_array(np.arange(2, 2 + len(shape) - 1, dtype=np.int64), "axes"),
         numpy_helper.from_array(rng.normal(0, 2, (k, c)).astype(np.float32), "wh"),
         numpy_helper.from_array(rng.normal(0, 0.1, k).astype(np.float32), "bh")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    with BundleWriter(out, force=True) as w:
        w.add_file("model.fp32.onnx", model.SerializeToString(), format="onnx", precision="fp32")
        w.set("labels", labels)
        w.set("modality", spec.to_dict())
        w.set("io", {"input": {"name": "input", "shape": ["batch", *shape], "dtype": "float32"},
                     "output": {"name": "logits", "shape": ["batch", k], "dtype": "float32"}})
    return out


def run_in_threads(work: Callable[[int], None], n: int, timeout: float = 120.0) -> None:
    """Run work(0) .. work(n - 1) in n threads released together; re-raise the first worker
    error (naming every failing thread), and fail rather than hang past `timeout` seconds."""
    start = threading.Barrier(n)
    errors: dict[int, BaseException] = {}

    def run(i: int) -> None:
        try:
            start.wait(timeout)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - every worker error goes to the test
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, f"threads {stuck} still running after {timeout:g} s"
    if errors:
        first = min(errors)
        raise AssertionError(
            f"{len(errors)} of {n} threads failed: "
            + "; ".join(f"thread {i}: {type(e).__name__}: {e}" for i, e in sorted(errors.items()))
        ) from errors[first]



# A minimal bundle (no real model) for tests of the writer and reader themselves.
SPEC = {"name": "accel", "kind": "timeseries", "rate_hz": 50.0, "channels": 3, "window": 128,
        "hop": 64}
IO = {"input": {"name": "input", "shape": ["batch", 3, 128], "dtype": "float32"},
      "output": {"name": "logits", "shape": ["batch", 2], "dtype": "float32"}}


def write_minimal(out: Path, payload: bytes = b"onnx-bytes", force: bool = False,
                  sign_key: Path | None = None) -> dict:
    """Publish a small valid bundle whose model file holds `payload`; its manifest."""
    with BundleWriter(out, force=force, sign_key=sign_key) as w:
        w.add_file("model.fp32.onnx", payload, format="onnx", precision="fp32")
        w.add_npz("golden", x=np.zeros((2, 128, 3), np.float32), probs=np.full((2, 2), 0.5))
        w.set("labels", ["a", "b"])
        w.set("modality", SPEC)
        w.set("io", IO)
        w.set("provenance", {"git_commit": "abc"})
    assert w.manifest is not None
    return w.manifest


def leftovers(parent: Path) -> list[str]:
    """Hidden entries of `parent`: what a writer left beside its bundle."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))
