"""GPU check: the TensorRT backend's fp32 / fp16 / int8 engines on this machine against FP32 ONNX
Runtime, in one short run (a few minutes, most of it engine builds).

    .venv/bin/python benchmarks/gpu_check.py                      # random-init tcn_tiny student
    .venv/bin/python benchmarks/gpu_check.py --run runs/student [--target jetson-agx-orin]
        [--dla-core 0]                                            # exported here, engine included
    .venv/bin/python benchmarks/gpu_check.py --bundle out/har.edgekd [--json gpu.json]

Steps: probe CUDA and TensorRT (in a subprocess: TensorRT segfaults without a driver); get a
bundle (--bundle as it is; --run exported to --target with `edgekd export`'s code path, which
builds that precision's engine here; else a random-init student bundle of FP32 + int8 QDQ ONNX);
load it with backend="tensorrt" for each precision (engines not in the bundle are built and
cached at first load); compare the probabilities on the bundle's golden windows with FP32 ONNX
Runtime (max abs diff, top-1 agreement); time batch 1 with the runtime's bench code (p50); print
a table. Exit codes: 0 all loaded and FP32 matches (max abs diff <= FP32_ATOL: TF32 is off in
fp32 engines), 1 a check failed, 2 no CUDA GPU / TensorRT / cuda-python here (the message says
which and how to install it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import BackendUnavailable, EdgeKDError

FP32_ATOL = 1e-3  # FP32 TensorRT vs FP32 ONNX Runtime probabilities: reorderings only
PRECISIONS = ("fp32", "fp16", "int8")
NO_GPU_EXIT = 2


def probe() -> dict[str, Any]:
    """The CUDA probe, or exit NO_GPU_EXIT with what is missing and how to install it."""
    from edgekd.runtime.backends import tensorrt as trt_backend
    from edgekd.runtime.probe import probe_cuda

    try:
        trt_backend.check_available()
    except BackendUnavailable as exc:
        print(f"gpu_check: no GPU check on this machine: {exc}. It needs an NVIDIA GPU with its "
              f"driver, TensorRT >= 10 and cuda-python ({trt_backend.PACKAGE_HINT})",
              file=sys.stderr)
        raise SystemExit(NO_GPU_EXIT) from None
    return probe_cuda()


def get_bundle(args: argparse.Namespace, work: Path) -> Path:
    """--bundle, or --run exported to --target here, or a random-init student bundle."""
    if args.bundle is not None:
        return args.bundle
    if args.run is not None:
        from edgekd.export.exporter import export_run

        # the guard is opened: this checks engines, not the student's accuracy
        result = export_run(args.run, work / "student.edgekd", target=args.target,
                            max_drop=100.0, dla_core=args.dla_core, progress=False)
        for notice in result.notices:
            print(f"export: {notice}")
        return result.out
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from runtime_latency import build_bundle

    return build_bundle(work / "student.edgekd", "tcn_tiny")[0]


def check(bundle: Path, cache: Path, iterations: int) -> list[dict[str, Any]]:
    """One row per precision: load (or why not), golden diff vs FP32 ONNX Runtime, p50."""
    import edgekd.runtime as rt
    from edgekd.modalities import preprocess
    from edgekd.runtime.bench import latency_stats, time_calls
    from edgekd.runtime.bundle import load_npz

    reference = rt.load(bundle, backend="onnxruntime", precision="fp32", cache_dir=cache)
    golden = reference.bundle.read_data("golden")
    if golden is None:
        raise EdgeKDError(f"{bundle} has no golden.npz to compare against")
    x = load_npz(golden)["x"]
    ref = reference.predict(x).probs
    one = np.ascontiguousarray(preprocess(reference.spec, x[:1]))
    rows = []
    for precision in PRECISIONS:
        row: dict[str, Any] = {"precision": precision}
        try:
            model = rt.load(bundle, backend="tensorrt", precision=precision, cache_dir=cache)
        except EdgeKDError as exc:
            rows.append({**row, "error": str(exc)})
            continue
        probs = model.predict(x).probs
        run = model.runner()
        p50 = latency_stats(time_calls(partial(model.infer, one, run), warmup=20,
                                       iterations=iterations, duration_s=None))["p50"]
        rows.append({**row, "max_abs_diff": float(np.abs(probs - ref).max()),
                     "top1_agreement": float((probs.argmax(1) == ref.argmax(1)).mean()),
                     "n": len(x), "p50_ms_batch1": p50, "engine": model.engine.artifact,
                     "layers": model.engine.details.get("layers")})
    return rows


def failures(rows: list[dict[str, Any]]) -> list[str]:
    """What makes the check fail: a precision that does not load, FP32 off the reference."""
    out = [f"{r['precision']}: {r['error']}" for r in rows if "error" in r]
    out += [f"fp32 max abs diff {r['max_abs_diff']:.2e} > {FP32_ATOL:g} (TF32 left on?)"
            for r in rows if r["precision"] == "fp32" and r.get("max_abs_diff", 0) > FP32_ATOL]
    return out


def render(rows: list[dict[str, Any]], status: dict[str, Any]) -> str:
    gpu = status["gpus"][0] if status.get("gpus") else {}
    lines = [f"GPU {gpu.get('name')} (compute {gpu.get('compute_capability')}), driver CUDA "
             f"{status.get('cuda_version')}, TensorRT {status.get('tensorrt')}",
             f"{'precision':<10}{'max |dp| vs ORT fp32':>22}{'top-1 agree':>13}"
             f"{'p50 b1 ms':>11}  layers (DLA/GPU)"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['precision']:<10}  did not load: {r['error']}")
            continue
        layers = r["layers"]
        lines.append(f"{r['precision']:<10}{r['max_abs_diff']:>22.2e}{r['top1_agreement']:>13.3f}"
                     f"{r['p50_ms_batch1']:>11.3f}  "
                     + ("-" if layers is None else f"{layers['dla']}/{layers['gpu']}"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="an exported bundle")
    parser.add_argument("--run", type=Path, help="a student run to export to --target here")
    parser.add_argument("--target", default="x86-nvidia", help="TensorRT target for --run")
    parser.add_argument("--dla-core", type=int, help="with --run: build for this DLA core")
    parser.add_argument("--iterations", type=int, default=200, help="timed batch-1 calls")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    if args.dla_core is not None and args.run is None:
        parser.error("--dla-core needs --run (the export writes the DLA build options)")
    status = probe()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = check(get_bundle(args, work), work / "cache", args.iterations)
    print(render(rows, status))
    if args.json is not None:
        args.json.write_text(json.dumps({"probe": status, "rows": rows}, indent=2))
    failed = failures(rows)
    if failed:
        print("gpu_check FAILED: " + "; ".join(failed), file=sys.stderr)
        raise SystemExit(1)
    print("gpu_check ok")


if __name__ == "__main__":
    main()
