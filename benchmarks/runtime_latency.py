"""Runtime latency table: every backend x precision of a student bundle against PyTorch eager.

All ratios are measured in one run, on this machine, single-threaded by default:
- OpenVINO int8 batch-1 p50 against PyTorch eager FP32 p50 of the same student (goal <= 1/5);
- stream push overhead = end-to-end push p50 (validation, preprocessing, inference, events) minus
  the p50 of the model call inside those pushes (goal <= 10% of the model time or <= 20 us);
  the bench table also gives push p50 minus the hot-loop model-only p50;
- batch-1 p99 / p50 per row (goal <= 1.5);
- soak: 10^5 pushes into one stream, RSS growth after warm-up (goal < 5 MB);
- the floor: the student's MACs per window / this CPU's measured peak MAC rate (one large
  MatMul through OpenVINO, FP32 and int8), printed beside the measured p50.

Without --bundle, a bundle is built from a freshly initialised student (weights do not change
latency) with edgekd's own exporter pieces: ONNX export, ORT PTQ (QDQ int8), OpenVINO IR.
`--audio` does the same for an audio student: `dscnn_audio` on 8 kHz speech-like clips, 1 s
windows every 0.5 s, the default log-mel front end (40 mels, n_fft 400, hop_length 160); for an
audio bundle its stream push overhead (the numpy front end, windowing and events) is checked
against the model's own batch-1 time.

    .venv/bin/python benchmarks/runtime_latency.py [--arch tcn_tiny] [--duration 3]
    .venv/bin/python benchmarks/runtime_latency.py --bundle out/har.edgekd --run runs/student
    .venv/bin/python benchmarks/runtime_latency.py --audio [--bundle out/voice.edgekd]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

import edgekd.runtime as rt
from edgekd.modalities import ModalitySpec, feature_shape, fit_normalisation, preprocess
from edgekd.runtime.bench import render_table, run_benchmark, time_calls

LABELS = [f"class{i}" for i in range(12)]


def _windows(n: int, seed: int) -> np.ndarray:
    """Accelerometer-like raw windows (n, 128, 3): gravity, a random oscillation, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(128) / 50.0
    f = rng.uniform(0.3, 8.0, size=(n, 1, 1))
    x = rng.uniform(0.1, 1.0, (n, 1, 3)) * np.sin(2 * np.pi * f * t[None, :, None]
                                                  + rng.uniform(0, 6.3, (n, 1, 3)))
    x[..., 2] += 1.0
    return (x + rng.normal(0, 0.05, x.shape)).astype(np.float32)


AUDIO = ModalitySpec(name="voice", kind="audio", rate_hz=8000.0, channels=1, window=8000,
                     hop=4000)
ACCEL = ModalitySpec(name="accel", kind="timeseries", rate_hz=50.0, channels=3, window=128,
                     hop=64)


def _clips(n: int, seed: int) -> np.ndarray:
    """Speech-like 1 s clips at 8 kHz (n, 8000): a gliding tone with syllable-rate loudness
    changes, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(AUDIO.window) / AUDIO.rate_hz
    f0 = rng.uniform(150, 900, (n, 1)) * (1 + 0.3 * t)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6, (n, 1)) * t)
    x = rng.uniform(0.1, 0.5, (n, 1)) * envelope * np.sin(2 * np.pi * f0 * t)
    return (x + rng.normal(0, 0.02, x.shape)).astype(np.float32)


def build_bundle(out: Path, arch: str, audio: bool = False) -> tuple[Path, Any]:
    """Student (random init) -> FP32 ONNX, int8 QDQ ONNX, OpenVINO IRs, through BundleWriter."""
    import torch

    from edgekd.export.bundle import BundleWriter
    from edgekd.export.onnx import export_onnx
    from edgekd.export.openvino import convert_ir
    from edgekd.export.quantize import quantize_ptq
    from edgekd.models import create_student

    torch.manual_seed(0)
    raw = _clips(256, seed=1) if audio else _windows(512, seed=1)
    spec = fit_normalisation(AUDIO if audio else ACCEL, raw)
    model = create_student(arch, spec, len(LABELS)).eval()
    feats = preprocess(spec, raw)
    work = out.parent / "work"
    fp32 = export_onnx(model, torch.from_numpy(feats[:2]), work / "model.fp32.onnx")
    int8 = quantize_ptq(fp32, work / "model.int8.qdq.onnx", feats[:256])
    with BundleWriter(out) as w:
        w.add_file("model.fp32.onnx", fp32, format="onnx", precision="fp32")
        w.add_file("model.int8.qdq.onnx", int8, format="onnx", precision="int8")
        for precision, src in (("fp32", fp32), ("int8", int8)):
            w.add_openvino_ir(convert_ir(src, work / f"ov.{precision}.xml"), precision=precision)
        # golden, not eval: a random-init student has no accuracy worth reporting
        probs = torch.softmax(model(torch.from_numpy(feats[:64])), dim=1).detach().numpy()
        w.add_npz("golden", x=raw[:64], probs=probs)
        w.set("model", {"name": f"{arch}-random-init", "arch": arch, "arch_args": model.arch_args,
                        "params": sum(p.numel() for p in model.parameters())})
        w.set("labels", LABELS)
        w.set("modality", spec.to_dict())
        w.set("io", {"input": {"name": "input", "shape": ["batch", *feature_shape(spec)],
                               "dtype": "float32"},
                     "output": {"name": "logits", "shape": ["batch", len(LABELS)],
                                "dtype": "float32"}})
        w.set("target", {"name": "cpu", "backend": "openvino", "precision": "int8"})
    return out, model


def torch_reference(model: Any, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    torch.set_num_threads(threads)
    model = model.eval()

    def run(features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(features)).numpy()

    return run


def macs_per_window(onnx_model: bytes) -> int:
    """Multiply-accumulates of one window: Conv, Gemm and MatMul nodes (batch set to 1)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load_from_string(onnx_model)
    for tensor in list(model.graph.input) + list(model.graph.output):
        tensor.type.tensor_type.shape.dim[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output)
              + list(model.graph.input)}
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            total += int(np.prod(out[1:])) * int(np.prod(weights[node.input[1]][1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            w = weights.get(node.input[1])
            out = shapes[node.output[0]]
            k = w[0] if w is not None and node.op_type == "MatMul" else (w[1] if w else 0)
            total += int(np.prod(out[1:])) * int(k)
    return total


PEAK_SHAPES = ((2048, 256, 256), (512, 512, 512), (256, 1024, 1024))  # (m, k, n)


def peak_mac_rate(work: Path, threads: int, precision: str) -> tuple[float, str]:
    """This CPU's peak MAC/s through OpenVINO: the best of a few MatMul shapes (small weights
    stay in cache; large ones amortise better), and the kernel precision it ran."""
    return max(matmul_rate(work, threads, precision, *shape) for shape in PEAK_SHAPES)


def matmul_rate(work: Path, threads: int, precision: str, m: int, k: int,
                n: int) -> tuple[float, str]:
    """MAC/s of one (m x k) @ (k x n) MatMul in OpenVINO (int8: symmetric Q/DQ on both inputs),
    and the kernel OpenVINO chose (proof that int8 ran as int8)."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = []
    if precision == "fp32":
        inits.append(numpy_helper.from_array(rng.normal(size=(k, n)).astype(np.float32), "w"))
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    else:
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "wq"),
                  numpy_helper.from_array(np.float32(0.01), "s"),
                  numpy_helper.from_array(np.int8(0), "z")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
                 helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "peak", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [m, k])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [m, n])], inits)
    path = work / f"peak.{precision}.{m}x{k}x{n}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY"})
    from edgekd.runtime.backends.openvino import compute_precisions

    kernel = ",".join(sorted(set(compute_precisions(compiled).values())))
    request = compiled.create_infer_request()
    x = rng.normal(size=(m, k)).astype(np.float32)
    seconds = time_calls(lambda: request.infer({0: x}), warmup=5, iterations=30, duration_s=None)
    return m * k * n / float(np.median(seconds)), kernel


def live_pushes(model: rt.Model, chunk: int, pushes: int) -> dict[str, float]:
    """p50 ms of `pushes` pushes of `chunk` samples (a live microphone or sensor), split into
    the pushes that complete a window (front end tail + model + events) and the others."""
    windows = _clips(8, seed=4) if model.spec.kind == "audio" else _windows(64, seed=4)
    samples = windows.reshape(-1, *windows.shape[2:])
    chunks = [samples[i : i + chunk] for i in range(0, len(samples) - chunk + 1, chunk)]
    stream = model.stream()
    for i in range(len(chunks)):  # warm-up
        stream.push(chunks[i])
    timed: dict[bool, list[int]] = {True: [], False: []}
    for i in range(pushes):
        t = time.perf_counter_ns()
        events = stream.push(chunks[i % len(chunks)])
        timed[bool(events)].append(time.perf_counter_ns() - t)
    return {"window_push_p50_ms": float(np.median(timed[True])) * 1e-6,
            "other_push_p50_ms": float(np.median(timed[False])) * 1e-6,
            "window_pushes": len(timed[True])}


def soak(model: rt.Model, pushes: int, chunk: int) -> dict[str, Any]:
    """RSS growth over `pushes` pushes of `chunk` samples into one stream (events dropped),
    after a warm-up; RSS is sampled at ten checkpoints, so a leak shows as a steady climb."""
    import psutil

    proc = psutil.Process()
    spec = model.spec
    windows = _clips(8, seed=3) if spec.kind == "audio" else _windows(64, seed=3)
    samples = windows.reshape(-1, *windows.shape[2:])
    chunks = [samples[i : i + chunk] for i in range(0, len(samples) - chunk + 1, chunk)]
    stream = model.stream()
    for i in range(5000):  # warm-up: allocator pools, OpenVINO's request buffers
        stream.push(chunks[i % len(chunks)])
    before = proc.memory_info().rss
    checkpoints = []
    t0 = time.perf_counter()
    for i in range(pushes):
        stream.push(chunks[i % len(chunks)])
        if (i + 1) % max(1, pushes // 10) == 0:
            checkpoints.append(round((proc.memory_info().rss - before) / 2**20, 3))
    elapsed = time.perf_counter() - t0
    return {"rss_growth_mb": (proc.memory_info().rss - before) / 2**20,
            "rss_checkpoints_mb": checkpoints, "us_per_push": elapsed / pushes * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="an exported bundle (default: build one)")
    parser.add_argument("--run", type=Path, help="its run folder (the PyTorch reference)")
    parser.add_argument("--audio", action="store_true",
                        help="audio student (dscnn_audio, 8 kHz, 1 s windows) instead of HAR")
    parser.add_argument("--arch", help="student to build (default tcn_tiny, dscnn_audio with "
                                       "--audio)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per figure")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--soak", type=int, default=100_000, help="pushes in the soak test")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    console = Console(width=200)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.bundle is None:
            arch = args.arch or ("dscnn_audio" if args.audio else "tcn_tiny")
            bundle, net = build_bundle(work / "student.edgekd", arch, audio=args.audio)
        else:
            from edgekd.checkpoint import load_run

            bundle = args.bundle
            net = load_run(args.run).model if args.run else None
        reference = torch_reference(net, args.threads) if net is not None else None
        report = run_benchmark(bundle, backends=["openvino", "onnxruntime"],
                               batch_sizes=[1, 32], duration_s=args.duration,
                               threads=args.threads, reference=reference,
                               cache_dir=work / "cache")
        console.print(render_table(report))
        rows = {r["name"]: r for r in report["rows"]}
        b = rt.read_bundle(bundle)
        macs = macs_per_window(b.read(b.find("onnx", "fp32")))
        peaks = {p: peak_mac_rate(work, args.threads, p) for p in ("fp32", "int8")}
        model = rt.load(bundle, backend="openvino", precision="int8", threads=args.threads,
                        cache_dir=work / "cache")
        chunk = 16 if model.spec.kind == "timeseries" else 160  # 0.32 s of HAR, 20 ms of 8 kHz
        soaked = soak(model, args.soak, chunk=chunk)
        live = live_pushes(model, chunk, pushes=20_000)

    env = report["environment"]
    checks = Table(title=f"runtime goals ({env['cpu']}, threads={args.threads}, load average "
                         f"{env['load_average_1m']} on {env['cores_logical']} cores: p99 on a "
                         "busy machine measures the other processes)")
    for col in ("goal", "measured", "limit", "ok"):
        checks.add_column(col, justify="left" if col == "goal" else "right")

    def check(goal: str, value: float, limit: float, fmt: str, *, below: bool = True) -> None:
        ok = value <= limit if below else value >= limit
        checks.add_row(goal, format(value, fmt), format(limit, fmt),
                       "[green]yes[/green]" if ok else "[red]NO[/red]")

    ov8 = rows.get("openvino/int8")
    if ov8 and "pytorch-eager/fp32" in rows:
        ratio = ov8["latency"]["p50"] / rows["pytorch-eager/fp32"]["latency"]["p50"]
        check("OpenVINO int8 p50 / PyTorch eager FP32 p50", ratio, 0.2, ".3f")
    for name, row in rows.items():
        lat = row["latency"]
        check(f"{name}: p99 / p50 at batch 1", lat["p99"] / lat["p50"], 1.5, ".2f")
        if row["stream"]:
            s = row["stream"]
            if model.spec.kind == "audio":  # the log-mel front end is the overhead to beat
                limit_us = lat["p50"] * 1e3
                what = "stream push overhead (us) vs model batch-1 p50"
            else:
                limit_us = max(20.0, 0.1 * s["model_in_stream_p50_ms"] * 1e3)
                what = "stream push overhead (us)"
            check(f"{name}: {what}", s["overhead_us"], limit_us, ".1f")
    check(f"soak: RSS growth over {args.soak:,} pushes (MB)", soaked["rss_growth_mb"], 5.0, ".2f")
    console.print(checks)

    floor = Table(title=f"the floor: {macs:,} MACs per window")
    for col in ("precision", "peak GMAC/s (OpenVINO MatMul)", "kernel", "floor us",
                "OpenVINO p50 us", "p50 / floor"):
        floor.add_column(col, justify="right")
    for p, (rate, kernel) in peaks.items():
        p50 = rows.get(f"openvino/{p}", {}).get("latency", {}).get("p50")
        floor_us = macs / rate * 1e6
        floor.add_row(p, f"{rate / 1e9:.1f}", kernel, f"{floor_us:.2f}",
                      "-" if p50 is None else f"{p50 * 1e3:.1f}",
                      "-" if p50 is None else f"{p50 * 1e3 / floor_us:.1f}x")
    console.print(floor)
    console.print(f"soak: {soaked['us_per_push']:.1f} us per push of {chunk} samples; RSS growth "
                  f"at each tenth (MB): {soaked['rss_checkpoints_mb']}")
    if ov8:
        console.print(f"openvino/int8, live pushes of {chunk} samples: p50 "
                      f"{live['window_push_p50_ms']:.3f} ms for the {live['window_pushes']} that "
                      f"complete a window, {live['other_push_p50_ms']:.3f} ms for the others; "
                      f"model batch-1 p50 {ov8['latency']['p50']:.3f} ms")
    if args.json:
        report["goals"] = {"macs_per_window": macs, "soak": soaked, "live_pushes": live,
                           "peak_mac_per_s": {p: r for p, (r, _k) in peaks.items()}}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
