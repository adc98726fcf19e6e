"""Benchmark a bundle on every backend x precision it offers (used by `edgekd bench`).

For each row: load/compile time, first-inference time, model-only latency per batch size
(p50/p90/p95/p99/mean/stdev/min/max in ms, every sample kept in `values`), throughput
(windows/s), end-to-end stream push latency (validation + preprocessing + inference + events)
beside the model's share of it, process peak RSS, accuracy on the held-out windows (eval.npz
inside the bundle, else `<stem>.eval.npz` beside it if its sha256 matches the manifest, else no
accuracy), and the cold start: time to first prediction (import + load + one predict) and peak RSS
of a fresh process that imports only `edgekd.runtime` (torch blocked). The bundle is read once and
each artifact hashed once, however many rows use it. A reference row (e.g. PyTorch eager FP32) is
measured the same way when the caller passes a callable; the runtime itself never imports torch.
Latency figures follow optimum-benchmark's shape:
`{"unit": "ms", "count", "mean", "stdev", "min", "max", "p50", "p90", "p95", "p99", "values"}`.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import edgekd
from edgekd.errors import BackendUnavailable, ConfigError
from edgekd.io import atomic_write_json, atomic_write_png
from edgekd.metrics import classification_report
from edgekd.modalities import ModalitySpec, preprocess, raw_shape
from edgekd.runtime.autoselect import budget, cpu_fields, installed_versions
from edgekd.runtime.backends import BACKENDS, backend_module
from edgekd.runtime.bundle import PRECISIONS, Bundle, load_npz, read_bundle
from edgekd.runtime.loader import load
from edgekd.runtime.model import Model
from edgekd.runtime.prediction import softmax
from edgekd.runtime.probe import cuda_status
from edgekd.runtime.signature import TRUSTED_KEYS_ENV, resolve_trusted_keys

MIN_SAMPLES = 10  # timed calls per figure, even when the duration runs out first
DEFAULT_DURATION_S = 2.0
_PERCENTILES = (50, 90, 95, 99)
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16",
              "asimd", "asimddp")
_VERSIONED = ("edgekd", "numpy", "onnxruntime", "openvino", "tensorrt", "cuda-python", "torch")
Features = Callable[[np.ndarray], np.ndarray]  # (B, *feature_shape) -> logits or probs (B, K)


# -- timing -----------------------------------------------------------------------------------
def time_calls(fn: Callable[[], Any], *, warmup: int, iterations: int | None,
               duration_s: float | None) -> np.ndarray:
    """Seconds per call of `fn` after `warmup` untimed calls: exactly `iterations` calls, or as
    many as fit in `duration_s` (at least MIN_SAMPLES)."""
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    out: list[int] = []
    if iterations is not None:
        for _ in range(iterations):
            t = clock()
            fn()
            out.append(clock() - t)
    else:
        end = clock() + int((duration_s or DEFAULT_DURATION_S) * 1e9)
        while clock() < end or len(out) < MIN_SAMPLES:
            t = clock()
            fn()
            out.append(clock() - t)
    return np.asarray(out, dtype=np.float64) * 1e-9


def latency_stats(seconds: np.ndarray) -> dict[str, Any]:
    """Summary in milliseconds, with every sample under `values`."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    pct = np.percentile(ms, _PERCENTILES)
    return {
        "unit": "ms", "count": int(ms.size), "mean": float(ms.mean()),
        "stdev": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min": float(ms.min()), "max": float(ms.max()),
        **{f"p{p}": float(v) for p, v in zip(_PERCENTILES, pct, strict=True)},
        "values": [round(float(v), 5) for v in ms],
    }


# -- environment ------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def environment(threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, flags, frequency governor, library versions and the CUDA probe."""
    fields = cpu_fields()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    versions = installed_versions(_VERSIONED)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    probe = cuda_status()
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cores_logical": os.cpu_count(), "cores_physical": physical, "cores_usable": affinity,
        "threads": threads or 1, "cpu_flags": sorted(flags & set(_CPU_FLAGS)),
        "governor": governor.strip() if governor else None,
        # other processes' load: on a shared machine it, not the model, sets p99
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": versions,
        "cuda": {k: probe.get(k) for k in ("cuda", "gpus", "cuda_version", "tensorrt", "error")},
    }


def _memory() -> dict[str, float | None]:
    """Peak RSS of this process so far (MB; monotonic across rows) and the current RSS."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except ImportError:
        peak = None
    try:
        import psutil

        current = psutil.Process().memory_info().rss / 2**20
    except ImportError:
        current = None
    return {"peak_rss_mb": peak, "rss_mb": current}


# -- rows -------------------------------------------------------------------------------------
def _inputs(bundle: Bundle, spec: ModalitySpec
            ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """Raw windows to time with and their labels, and a note when there are no labels. Held-out
    windows come from eval.npz inside the bundle, else from `<stem>.eval.npz` beside it (only if
    it matches the manifest); without them golden.npz (else seeded noise) is timed unlabelled."""
    raw, why_not = bundle.held_out()
    if raw is not None:
        data = load_npz(raw)
        return data["x"], data.get("y"), None
    note = f"no eval data ({why_not or 'none inside or beside the bundle'}): accuracy omitted"
    golden = bundle.read_data("golden")
    if golden is not None:
        return load_npz(golden)["x"], None, note
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, *raw_shape(spec))).astype(np.float32), None, note


# Runs in a fresh interpreter: imports only edgekd.runtime (torch import fails), then load and
# one predict. Prints one JSON line.
_COLD_START = textwrap.dedent("""
    import time
    t0 = time.perf_counter()
    import importlib.abc, json, resource, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in the cold-start process")
            return None

    sys.meta_path.insert(0, NoTorch())
    import numpy as np
    import edgekd.runtime as rt
    from edgekd.runtime.bundle import load_npz
    bundle, backend, precision, threads, cache, min_version, allow_rollback = sys.argv[1:8]
    model = rt.load(bundle, backend=backend, precision=precision, threads=int(threads),
                    cache_dir=cache or None, min_version=int(min_version) if min_version else None,
                    allow_rollback=allow_rollback == "1")
    golden = model.bundle.read_data("golden")
    if golden is not None:
        x = load_npz(golden)["x"][0]
    else:
        from edgekd.modalities import raw_shape
        x = np.zeros(raw_shape(model.spec), dtype=np.float32)
    model.predict(x)
    ttfp = time.perf_counter() - t0
    # VmHWM: ru_maxrss survives exec on Linux, so it would report the parent's peak
    try:
        with open("/proc/self/status") as fh:
            hwm = next(line for line in fh if line.startswith("VmHWM:"))
        peak_mb = int(hwm.split()[1]) / 1024.0
    except (OSError, StopIteration):
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"ttfp_ms": ttfp * 1e3, "load_s": model.load_s, "peak_rss_mb": peak_mb,
                      "torch_loaded": any(m.split(".")[0] == "torch" for m in sys.modules)}))
""")


def cold_start(bundle: str | Path, backend: str, precision: str, *, threads: int | None = None,
               cache_dir: str | Path | None = None, trusted_keys: Sequence[Path] = (),
               min_version: int | None = None, allow_rollback: bool = False,
               timeout_s: float = 120.0) -> dict[str, Any]:
    """Time to first prediction in a fresh runtime-only process: `{"ttfp_ms" (import + load +
    first predict, from the child's first line), "process_ms" (the same plus interpreter start,
    as the parent saw it), "load_s", "peak_rss_mb", "torch_loaded"}` or `{"error": ...}`. The
    child loads under the same trust as `load` here: `trusted_keys`, `min_version`,
    `allow_rollback`."""
    env = dict(os.environ)
    package_root = str(Path(edgekd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env[TRUSTED_KEYS_ENV] = os.pathsep.join(str(k) for k in trusted_keys)
    args = [sys.executable, "-c", _COLD_START, str(bundle), backend, precision,
            str(threads or 1), "" if cache_dir is None else str(cache_dir),
            "" if min_version is None else str(min_version), "1" if allow_rollback else "0"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"cold-start process timed out after {timeout_s:g} s"}
    process_ms = (time.perf_counter() - t0) * 1e3
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"cold-start process failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-300:]}"}
    return {**out, "process_ms": process_ms}


def recommend(report: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The measured row `precision="auto"` would choose: the lowest batch-1 p50 among rows
    within the export's accuracy budget (see edgekd.runtime.autoselect); None if none is."""
    best = None
    for row in report["rows"]:
        if row["backend"] == "reference":
            continue
        ok, why = budget(manifest, row["backend"], row["precision"])
        if ok and (best is None or row["latency"]["p50"] < best["p50_ms"]):
            best = {"backend": row["backend"], "precision": row["precision"],
                    "p50_ms": row["latency"]["p50"], "why": why}
    return best


def _batch(x: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // len(x))
    return np.concatenate([x] * reps)[:size] if reps > 1 else x[:size]


def _accuracy(probs_of: Features, spec: ModalitySpec, x: np.ndarray, y: np.ndarray | None,
              num_classes: int) -> dict[str, Any] | None:
    if y is None:
        return None
    pred = np.concatenate([probs_of(preprocess(spec, x[i : i + 256])).argmax(axis=1)
                           for i in range(0, len(x), 256)])
    return classification_report(y, pred, num_classes)


def _timed_batches(run: Features, spec: ModalitySpec, x: np.ndarray, batches: Sequence[int],
                   timing: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for b in batches:
        feats = np.ascontiguousarray(preprocess(spec, _batch(x, b)))
        seconds = time_calls(lambda f=feats: run(f), **timing)
        out[str(b)] = {"latency": latency_stats(seconds),
                       "throughput": {"value": b / float(np.mean(seconds)), "unit": "windows/s"}}
    return out


def _stream_figures(model: Model, x: np.ndarray, timing: dict[str, Any],
                    per_batch: dict[str, Any]) -> dict[str, Any] | None:
    """Time `push` of one hop of samples (each push completes exactly one window); None for
    modalities without a time axis (images).

    The overhead is push p50 minus the p50 of the model call made inside those pushes, timed in
    a second identical pass: both then run with the caches a live stream has. The model alone in
    a tight loop (`model_latency_p50_ms`) keeps its weights hot and is faster; the difference
    to it is reported as `overhead_vs_hot_model_us`.
    """
    spec = model.spec
    if spec.kind == "image":
        return None
    if "1" in per_batch:
        hot_p50_ms = per_batch["1"]["latency"]["p50"]
    else:
        one = np.ascontiguousarray(preprocess(spec, x[:1]))
        run = model.runner()
        hot_p50_ms = latency_stats(time_calls(lambda: run(one), **timing))["p50"]
    samples = x.reshape(-1, *raw_shape(spec)[1:])  # the eval windows, back to back
    hop = spec.hop
    chunks = [samples[i : i + hop] for i in range(0, len(samples) - hop + 1, hop)]
    stream = model.stream()
    if spec.window > hop:
        stream.push(samples[: spec.window - hop])  # now each push of one hop ends a window
    feed = itertools.cycle(chunks)
    push = latency_stats(time_calls(lambda: stream.push(next(feed)), **timing))
    inner: list[int] = []
    run = stream._run

    def timed_run(features: np.ndarray) -> np.ndarray:
        t = time.perf_counter_ns()
        out = run(features)
        inner.append(time.perf_counter_ns() - t)
        return out

    stream._run = timed_run
    time_calls(lambda: stream.push(next(feed)), **timing)
    model_ms = float(np.median(inner)) * 1e-6
    return {"push_latency": push, "model_in_stream_p50_ms": model_ms,
            "model_latency_p50_ms": hot_p50_ms,
            "overhead_us": (push["p50"] - model_ms) * 1e3,
            "overhead_fraction": (push["p50"] - model_ms) / model_ms,
            "overhead_vs_hot_model_us": (push["p50"] - hot_p50_ms) * 1e3}


def _row(name: str, backend: str, precision: str, run: Features, probs_of: Features,
         spec: ModalitySpec, x: np.ndarray, y: np.ndarray | None, num_classes: int,
         batches: Sequence[int], timing: dict[str, Any]) -> dict[str, Any]:
    first = np.ascontiguousarray(preprocess(spec, x[:1]))
    t0 = time.perf_counter()
    run(first)
    first_ms = (time.perf_counter() - t0) * 1e3
    per_batch = _timed_batches(run, spec, x, batches, timing)
    smallest, largest = str(min(batches)), str(max(batches))
    return {
        "name": name, "backend": backend, "precision": precision,
        "first_inference_ms": first_ms,
        "latency": per_batch[smallest]["latency"],
        "throughput": {"batch": int(largest), **per_batch[largest]["throughput"]},
        "batches": per_batch,
        "accuracy": _accuracy(probs_of, spec, x, y, num_classes),
    }


def run_benchmark(
    bundle: str | Path,
    *,
    backends: Sequence[str] = ("all",),
    precisions: Sequence[str] = ("all",),
    batch_sizes: Sequence[int] = (1, 32),
    duration_s: float | None = None,
    iterations: int | None = None,
    warmup: int = 10,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    reference: Features | None = None,
    reference_name: str = "pytorch-eager/fp32",
    progress: Callable[[str], None] | None = None,
    trusted_keys: Sequence[str | Path] | None = None,
    min_version: int | None = None,
    allow_rollback: bool = False,
    cold: bool = True,
) -> dict[str, Any]:
    """Measure every (backend, precision) the bundle offers; returns the JSON-safe report
    `{"bundle", "environment", "settings", "rows": [...], "skipped": [...]}`.

    `reference`: features (B, *feature_shape) float32 -> logits (B, K), e.g. a torch model in
    eval mode wrapped by the caller; measured as a row named `reference_name` with backend
    "reference" (model-only figures and accuracy; no load time, no stream).
    `load_s` of the other rows is what `load` costs after the bundle was read: reading and
    hashing the row's artifact, and compiling (or importing a sealed OpenVINO blob from
    `cache_dir`, which also keeps the rollback record of signed bundles). `cold`: add each
    row's cold start (`cold_start`). `trusted_keys`, `min_version` and `allow_rollback` as for
    `load` (the cold-start process too). The report's `recommendation` is what
    `precision="auto"` would pick from these rows; `notes` says e.g. why accuracy is missing.
    Unavailable backends are listed under `skipped` when `backends` is "all", else raise.
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if iterations is not None and iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    names = list(BACKENDS) if "all" in backends else list(backends)
    for p in precisions:
        if p != "all" and p not in PRECISIONS:
            raise ConfigError(f"unknown precision {p!r}; choose all or {', '.join(PRECISIONS)}")
    keys = resolve_trusted_keys(trusted_keys)
    b = read_bundle(bundle, verify=False, trusted_keys=keys, cache_dir=cache_dir,
                    min_version=min_version, allow_rollback=allow_rollback)
    spec = ModalitySpec.from_dict(b.modality)
    x, y, note = _inputs(b, spec)
    k = len(b.labels)
    timing = {"warmup": warmup, "iterations": iterations, "duration_s": duration_s}
    say = progress or (lambda _msg: None)
    rows, skipped = [], []
    for name in names:
        module = backend_module(name)
        try:
            module.check_available()
        except BackendUnavailable as exc:
            if "all" not in backends:
                raise
            skipped.append({"backend": name, "reason": str(exc)})
            continue
        offered = module.precisions(b)
        wanted = offered if "all" in precisions else [p for p in offered if p in precisions]
        for p in sorted(set(precisions) - set(offered) - {"all"}):
            skipped.append({"backend": name, "precision": p, "reason": f"{name} offers "
                            f"{', '.join(offered) or 'nothing'} for this bundle"})
        for precision in wanted:
            say(f"{name}/{precision}")
            model = load(b, backend=name, precision=precision, threads=threads,
                         cache_dir=cache_dir, trusted_keys=[],  # keys checked when read
                         min_version=min_version, allow_rollback=allow_rollback)
            run = model.runner()
            row = _row(f"{name}/{precision}", name, precision, run, model.infer, spec, x, y, k,
                       batch_sizes, timing)
            row["load_s"] = model.load_s
            row["artifact"] = model.engine.artifact
            row["details"] = model.engine.details
            row["stream"] = _stream_figures(model, x, timing, row["batches"])
            row["memory"] = _memory()
            row["cold_start"] = (cold_start(b.root, name, precision, threads=threads,
                                            cache_dir=cache_dir, trusted_keys=keys,
                                            min_version=min_version,
                                            allow_rollback=allow_rollback)
                                 if cold else None)
            rows.append(row)
    if reference is not None:
        say(reference_name)
        row = _row(reference_name, "reference", "fp32", reference,
                   lambda f: softmax(reference(f)), spec, x, y, k, batch_sizes, timing)
        row.update(load_s=None, artifact=None, details={}, stream=None, memory=_memory(),
                   cold_start=None)
        rows.append(row)
    report = {
        "bundle": str(b.root), "model": b.manifest.get("model", {}), "labels": b.labels,
        "environment": environment(threads),
        "settings": {"backends": names, "precisions": list(precisions),
                     "batch_sizes": list(batch_sizes), **timing, "threads": threads or 1},
        "rows": rows, "skipped": skipped, "notes": [note] if note else [],
    }
    report["recommendation"] = recommend(report, b.manifest)
    return report


# -- output -----------------------------------------------------------------------------------
def render_table(report: dict[str, Any]) -> Any:
    """A rich Table with one line per row of the report."""
    from rich.table import Table

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    settings = report["settings"]
    big = max(settings["batch_sizes"])
    table = Table(title=f"edgekd bench: {report['bundle']}  (threads={settings['threads']})")
    for col in ("backend/precision", "load s", "first ms", "p50 ms", "p90 ms", "p99 ms",
                "mean ms", "stdev ms", f"win/s @{big}", "push p50 ms", "push overhead us",
                "peak RSS MB", "TTFP ms", "TTFP RSS MB", "accuracy"):
        first = col == "backend/precision"
        table.add_column(col, justify="left" if first else "right", no_wrap=first)
    has_accuracy = any(row["accuracy"] for row in report["rows"])
    if not has_accuracy:  # no eval data: the column would be all dashes
        table.columns.pop()
    for row in report["rows"]:
        lat, stream, acc = row["latency"], row["stream"], row["accuracy"]
        cold = row.get("cold_start") or {}
        table.add_row(
            row["name"], num(row["load_s"], ".3f"), num(row["first_inference_ms"], ".2f"),
            num(lat["p50"], ".3f"), num(lat["p90"], ".3f"), num(lat["p99"], ".3f"),
            num(lat["mean"], ".3f"), num(lat["stdev"], ".3f"),
            num(row["throughput"]["value"], ",.0f"),
            num(stream and stream["push_latency"]["p50"], ".3f"),
            num(stream and stream["overhead_us"], ".1f"),
            num(row["memory"]["peak_rss_mb"], ".0f"),
            num(cold.get("ttfp_ms"), ".0f"), num(cold.get("peak_rss_mb"), ".0f"),
            *([num(acc and acc["accuracy"] * 100, ".2f") + ("%" if acc else "")]
              if has_accuracy else []),
        )
    return table


def write_json(report: dict[str, Any], path: str | Path) -> None:
    atomic_write_json(Path(path), report)


def plot(report: dict[str, Any], path: str | Path) -> None:
    """PNG: batch-1 latency distribution per row (box plot, log scale) and throughput bars."""
    import matplotlib

    from edgekd.report import pyplot

    plt = pyplot()
    rows = report["rows"]
    names = [r["name"] for r in rows]
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.5 * len(rows)))
    # matplotlib 3.10 renamed the boxplot arguments (vert -> orientation, labels -> tick_labels)
    modern = tuple(int(v) for v in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    names_kw = ({"orientation": "horizontal", "tick_labels": names} if modern
                else {"vert": False, "labels": names})
    ax_lat.boxplot([r["latency"]["values"] for r in rows], showfliers=True,
                   flierprops={"markersize": 2}, **names_kw)
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel(f"latency at batch {min(report['settings']['batch_sizes'])} (ms, log)")
    ax_thr.barh(names, [r["throughput"]["value"] for r in rows])
    ax_thr.set_xlabel(f"throughput at batch {max(report['settings']['batch_sizes'])} (windows/s)")
    ax_thr.invert_yaxis()
    ax_lat.invert_yaxis()
    fig.suptitle(f"{report['model'].get('name', '')} on {report['environment']['cpu']}")
    fig.tight_layout()
    atomic_write_png(Path(path), fig)
    plt.close(fig)
