"""`precision="auto"`: measure the bundle's candidates here, keep those within the export's
accuracy budget, choose the fastest, and remember the choice per bundle and device.

Budget: an artifact is a candidate when its accuracy drop against torch FP32 in the manifest's
export report (`accuracy`) is at most the export's `--max-drop` (`export.options.max_drop`, in
points); FP32 is the reference and always a candidate. A reduced precision the export could not
score (a TensorRT int8/fp16 engine when the export had no GPU, bf16) is measured here before it
may compete (`measure_budget`): on the bundle's eval windows (inside or beside the bundle,
labelled) its accuracy drop against the export's torch FP32 accuracy on the same windows, else
on the golden windows its top-1 disagreement with the FP32 outputs stored there (an upper bound
on the drop), must be within max_drop, and only a set of at least MIN_MEASURE_WINDOWS (64)
windows decides: with fewer (the 8 golden windows alone) the precision is not accepted, a safer
one is kept and the selection's `notes` say why; what was measured is in the candidate's row. Each
candidate is compiled and timed for AUTO_ITERATIONS batch-1 calls after AUTO_WARMUP; the lowest
median wins. The choice is cached in `<cache_dir>/auto/<bundle digest>-<device stamp hash>.json`,
sealed (`edgekd.runtime.cache_seal`) for this bundle's digest and signer and the device stamp
(CPU model, machine, GPUs, backend library versions, threads, the competing backends and
MIN_MEASURE_WINDOWS): a new device, library or backend set, another bundle or signer, a choice
made under another window rule, or an entry edited on disk measures again.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import BackendUnavailable, EdgeKDError
from edgekd.modalities import ModalitySpec, preprocess, raw_shape
from edgekd.runtime.backends import BACKENDS, PRECISION_PREFERENCE, Engine, backend_module
from edgekd.runtime.bundle import PRECISIONS, Bundle, load_npz
from edgekd.runtime.cache_seal import CacheSeal, context_hash
from edgekd.runtime.model import Model
from edgekd.runtime.probe import driver_library_present, probe_cuda

AUTO_ITERATIONS = 30
AUTO_WARMUP = 5
# A precision the export could not score is accepted on this device only when measured on at
# least this many windows: the 8 golden windows of a bundle are a smoke test, not evidence that
# an int8 engine stays within the accuracy budget.
MIN_MEASURE_WINDOWS = 64
_BACKEND_DISTS = ("onnxruntime", "openvino", "tensorrt")
AUTO_KIND = "auto_precision"  # the cache seal's kind of a cached choice
log = logging.getLogger("edgekd.runtime")

OpenEngine = Callable[[str, str], Engine]  # (backend, precision) -> compiled engine


def accuracy_key(backend: str, precision: str) -> str:
    """The export report's key for an artifact run on a backend (see edgekd.export.accuracy)."""
    return "fp32" if (backend, precision) == ("onnxruntime", "fp32") else f"{precision}_{backend}"


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def _report(manifest: dict[str, Any]) -> tuple[dict[str, Any], float | None, float | None]:
    """(the export's accuracy report, its max_drop in points, torch FP32's accuracy), with
    untrusted types read as absent."""
    report = manifest.get("accuracy") if isinstance(manifest.get("accuracy"), dict) else {}
    export = manifest.get("export") if isinstance(manifest.get("export"), dict) else {}
    options = export.get("options") if isinstance(export.get("options"), dict) else {}
    ref = report.get("torch_fp32") or report.get("fp32")
    ref_acc = _number(ref.get("accuracy")) if isinstance(ref, dict) else None
    return report, _number(options.get("max_drop")), ref_acc


def budget(manifest: dict[str, Any], backend: str, precision: str) -> tuple[bool, str]:
    """(within the accuracy budget?, why) for `precision` on `backend`, from the manifest."""
    if precision == "fp32":
        return True, "fp32 is the reference"
    report, max_drop, ref_acc = _report(manifest)
    key = accuracy_key(backend, precision)
    entry = report.get(key)
    acc = _number(entry.get("accuracy")) if isinstance(entry, dict) else None
    if max_drop is None or ref_acc is None or acc is None:
        return False, f"accuracy of {key} not measured at export"
    drop = round(100.0 * (ref_acc - acc), 6)
    return drop <= max_drop, f"{key} drops {drop:+.2f} points (limit {max_drop:g})"


def scored_at_export(manifest: dict[str, Any], backend: str, precision: str) -> bool:
    """Whether the export's report has a row for `precision` on `backend`."""
    return isinstance(_report(manifest)[0].get(accuracy_key(backend, precision)), dict)


def decisive(measured: dict[str, Any]) -> str | None:
    """Which of the measured window sets may decide the budget: "eval" if it has at least
    MIN_MEASURE_WINDOWS windows, else "golden" if that has, else None (too few to decide)."""
    return next((kind for kind in ("eval", "golden")
                 if kind in measured and measured[kind]["n"] >= MIN_MEASURE_WINDOWS), None)


def measure_budget(bundle: Bundle, engine: Engine) -> tuple[bool, str, dict[str, Any]]:
    """(within budget?, why, what was measured) for an engine the export could not score, run
    here on the bundle's windows: `{"eval": {"accuracy", "drop_points", "n"}}` on the labelled
    eval windows (inside the bundle, else beside it if it matches the manifest) against the
    export's torch FP32 accuracy on them, and `{"golden": {"top1_agreement", "max_abs_diff",
    "n"}}` against the FP32 outputs in golden.npz. Only a set of at least MIN_MEASURE_WINDOWS
    windows decides (`decisive`): the eval drop, else the golden disagreement (in points).
    Fewer windows (the 8 golden ones alone), nothing to measure on, or no max_drop / FP32
    accuracy in the manifest, is not within budget: a safer precision is kept, and `why` says
    so."""
    _, max_drop, ref_acc = _report(bundle.manifest)
    key = accuracy_key(engine.backend, engine.precision)
    model = Model(bundle, engine, ModalitySpec.from_dict(bundle.modality), 0.0)
    measured: dict[str, Any] = {}
    if bundle.read_data("golden") is not None:
        measured["golden"] = model.self_check()
    held_out = bundle.held_out()[0]
    data = load_npz(held_out) if held_out is not None and ref_acc is not None else {}
    if "y" in data:  # unlabelled windows cannot score accuracy; golden may still decide
        x, y = data["x"], data["y"]
        acc = float((model.predict(x).index == y).mean())
        measured["eval"] = {"accuracy": acc, "drop_points": round(100.0 * (ref_acc - acc), 6),
                            "n": len(x)}
    if max_drop is None:
        return False, f"{key} not scored at export and the manifest has no max_drop", measured
    kind = decisive(measured)
    if kind == "eval":
        drop, n = measured["eval"]["drop_points"], measured["eval"]["n"]
        return (drop <= max_drop, f"{key} measured here: drops {drop:+.2f} points on {n} eval "
                f"windows (limit {max_drop:g})", measured)
    if kind == "golden":
        off = round(100.0 * (1.0 - measured["golden"]["top1_agreement"]), 6)
        n = measured["golden"]["n"]
        return (off <= max_drop, f"{key} measured here: differs from FP32 on {off:.2f}% of {n} "
                f"golden windows (limit {max_drop:g} points)", measured)
    if not measured:
        return (False, f"{key} not scored at export and the bundle has no windows to measure",
                measured)
    have = " and ".join(f"{measured[k]['n']} {k}" for k in ("eval", "golden") if k in measured)
    return (False, f"{key} not scored at export, and only {have} windows here to measure it on: "
            f"fewer than the {MIN_MEASURE_WINDOWS} needed to accept it, so a safer precision is "
            "kept (export with labelled eval windows, inside or beside the bundle, to let it "
            "compete)", measured)


def cpu_fields() -> dict[str, str]:
    """The first value of each /proc/cpuinfo field (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def installed_versions(dists: Sequence[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for dist in dists:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def device_stamp(threads: int | None, with_gpu: bool) -> dict[str, Any]:
    """What a timing depends on besides the bundle: CPU, GPUs, backend versions, threads."""
    return {"cpu": cpu_fields().get("model name") or platform.processor(),
            "machine": platform.machine(), "versions": installed_versions(_BACKEND_DISTS),
            "threads": threads or 1,
            "gpus": probe_cuda().get("gpus") if with_gpu else None}


def _cache_file(cache: Path, bundle: Bundle, stamp: dict[str, Any]) -> Path:
    return cache / "auto" / f"{bundle.digest[:16]}-{context_hash(stamp)[:16]}.json"


def _cached_choice(seal: CacheSeal | None, path: Path, bundle: Bundle, stamp: dict[str, Any],
                   names: Sequence[str]) -> tuple[str, str, list[str]] | None:
    """The cached (backend, precision, notes) if `seal` vouches for the entry (this bundle,
    signer and stamp, bytes unchanged) and it names a competing backend; else None (measure)."""
    if seal is None:
        return None
    payload, why = seal.read(path, kind=AUTO_KIND, digest=bundle.digest, signer=bundle.signer,
                             context=stamp)
    if payload is None:
        if why != "missing":
            log.info("auto: cached choice %s not used (%s); measuring", path, why)
        return None
    try:
        entry = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(entry, dict):
        return None
    backend, precision, notes = entry.get("backend"), entry.get("precision"), entry.get("notes")
    if backend not in names or precision not in PRECISIONS:
        return None
    notes = [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []
    return str(backend), str(precision), notes


def _batch1(bundle: Bundle) -> np.ndarray:
    spec = ModalitySpec.from_dict(bundle.modality)
    golden = bundle.read_data("golden")
    if golden is not None:
        x = load_npz(golden)["x"][:1]
    else:
        x = np.zeros((1, *raw_shape(spec)), dtype=np.float32)
    return np.ascontiguousarray(preprocess(spec, x))


def _median_ms(engine: Engine, features: np.ndarray) -> float:
    run = engine.new_runner()
    for _ in range(AUTO_WARMUP):
        run(features)
    seconds = []
    for _ in range(AUTO_ITERATIONS):
        t = time.perf_counter()
        run(features)
        seconds.append(time.perf_counter() - t)
    return float(np.median(seconds)) * 1e3


def choose(bundle: Bundle, backend: str, threads: int | None, cache: Path,
           open_engine: OpenEngine) -> tuple[Engine, dict[str, Any]]:
    """The fastest candidate engine within budget and `{"source": "cache"|"measured",
    "candidates": [...], "cache_file", "notes"}`; `notes` says which precision was passed over
    for having too few windows to be measured on (MIN_MEASURE_WINDOWS) and what was kept
    instead (the CLI prints them). BackendUnavailable when there is none."""
    names = BACKENDS if backend == "auto" else (backend,)
    available = []
    for name in names:
        if backend == "auto" and name == "tensorrt" and not driver_library_present():
            continue  # no GPU possible: spare the probe subprocess
        try:
            backend_module(name).check_available()
            available.append(name)
        except BackendUnavailable as exc:
            log.debug("auto: %s skipped: %s", name, exc)
    # the backends that could compete are part of the key: an `auto` choice is not valid for a
    # call restricted to one backend, nor the reverse
    # and so is the rule a measured precision passed: a choice cached under an older rule (int8
    # accepted on 8 golden windows) is measured again, not reused
    stamp = {**device_stamp(threads, with_gpu="tensorrt" in available), "backends": available,
             "min_measure_windows": MIN_MEASURE_WINDOWS}
    path = _cache_file(cache, bundle, stamp)
    seal = CacheSeal.for_cache(cache)  # None: a warning says why the choice is not cached
    cached = _cached_choice(seal, path, bundle, stamp, available)
    if cached is not None:
        try:
            return open_engine(*cached[:2]), {"source": "cache", "cache_file": str(path),
                                              "notes": cached[2]}
        except EdgeKDError as exc:
            log.info("auto: cached choice %s/%s no longer loads (%s); measuring", *cached[:2],
                     exc)
    features = _batch1(bundle)
    best: tuple[float, Engine] | None = None
    candidates: list[dict[str, Any]] = []
    for name in available:
        module = backend_module(name)
        offered = module.precisions(bundle)
        for precision in sorted(offered, key=_preference):
            ok, why = budget(bundle.manifest, name, precision)
            row: dict[str, Any] = {"backend": name, "precision": precision}
            candidates.append(row)
            engine = None
            if not ok and not scored_at_export(bundle.manifest, name, precision):
                engine = open_engine(name, precision)
                ok, why, row["measured"] = measure_budget(bundle, engine)
            row.update(within_budget=ok, why=why)
            if not ok:
                continue
            engine = engine or open_engine(name, precision)
            row["p50_ms"] = _median_ms(engine, features)
            if best is None or row["p50_ms"] < best[0]:
                best = (row["p50_ms"], engine)
    if best is None:
        tried = "; ".join(f"{c['backend']}/{c['precision']}: {c['why']}" for c in candidates)
        raise BackendUnavailable(f"precision auto: no artifact of {bundle.root} is within the "
                                 f"accuracy budget on {', '.join(available) or 'any backend'}"
                                 f" ({tried or 'no backend available'})")
    engine = best[1]
    notes = [f"precision auto kept {engine.backend}/{engine.precision}, not "
             f"{c['backend']}/{c['precision']}: {c['why']}" for c in candidates
             if "measured" in c and not c["within_budget"] and decisive(c["measured"]) is None]
    for note in notes:
        log.info("auto: %s", note)  # also in the selection's notes, which the CLI prints
    if seal is not None:
        entry = {"bundle_digest": bundle.digest, "stamp": stamp, "backend": engine.backend,
                 "precision": engine.precision, "iterations": AUTO_ITERATIONS,
                 "candidates": candidates, "notes": notes}
        seal.write(path, json.dumps(entry, indent=2).encode("utf-8"), kind=AUTO_KIND,
                   digest=bundle.digest, signer=bundle.signer, context=stamp)
    return engine, {"source": "measured", "candidates": candidates, "cache_file": str(path),
                    "notes": notes}


def _preference(precision: str) -> int:
    order = (*PRECISION_PREFERENCE, "bf16")
    return order.index(precision) if precision in order else len(order)
