"""Latency and size of a candidate student before it is trained.

`predict_latency` (one candidate) and `LatencyPredictor.predict` (many, one cache) build the
UNTRAINED candidate, export it with the export library (dynamo ONNX, int8 PTQ to TensorRT-style
Q/DQ, the OpenVINO int8 IR for OpenVINO targets), and price it:

- int8 size (bytes; KB = 1000 bytes in reports): the int8 QDQ ONNX, the portable int8 artifact
  every target's bundle carries (ONNX Runtime loads it, TensorRT builds its engine from it); the
  OpenVINO IR converted from it holds the same weights plus an XML graph description whose
  size grows with the node count, not with what the device keeps in memory;
- batch-1 p50 latency (ms) from one of three sources, named in every result:
  `local`: a probe bundle timed here through `edgekd.runtime` (the runtime's runner, the
  benchmark's `time_calls` / `latency_stats`, 1 thread) in a fresh process (`measure_bundle`),
  when the machine is quiet (`edgekd.search.quiet`): only for CPU targets (OpenVINO, ONNX
  Runtime) and only when no latency table is given;
  `table`: a latency table recorded on the target device (`record_latency_table`);
  `ray`: the same measurement as `local`, run as a Ray task on a node that declares the target's
  name as a custom resource (e.g. `ray start --resources '{"jetson-orin-nano": 1}'`).
  A TensorRT target without a table or such a node is refused (ConfigError): this machine's
  timing is never presented as the target's;
- peak resident memory (`rss_mb`, MB = 10^6 bytes) of the process that loaded and timed the
  probe bundle (`local` and `ray`; a table holds none).

A measured price carries the conditions it was taken under (`Estimate.conditions`, see
`edgekd.search.quiet.Conditions`) and `noisy` when the machine stayed busy for the whole wait.

Weights do not change the timing of these int8 graphs (no data-dependent control flow), so an
untrained model with seeded random weights and CALIB_WINDOWS seeded N(0, 1) feature windows (the
features are normalised) for calibration prices the trained one; `edgekd search` re-measures the
chosen student after training and reports both.

Results are cached in `<out>/latency_cache.json`, keyed by the architecture signature
(`arch_signature`) and the source's stamp (for `local`, `edgekd.runtime.autoselect.device_stamp`
plus the backend): a second call for the same candidate exports nothing, unless the cached price
is measured and not known to be quiet (`noisy`, or written by a version that stored no
conditions): a later predictor prices it again once, and keeps the new price if it is quiet or
faster (noise only slows a timing). The cache also keeps, per stamp, the quietest reference
kernel time seen (under QUIET_KEY), so a machine busy from a search's start is still recognised.

Latency table (JSON): `{"format": "edgekd-latency-table", "target": NAME, "device": {...},
"p50_ms": {signature: p50_ms}}`, written by `record_latency_table` (`edgekd latency-table`) on
the device itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import edgekd.errors
from edgekd.errors import ConfigError
from edgekd.io import atomic_write_json
from edgekd.modalities import ModalitySpec
from edgekd.search import quiet
from edgekd.search.quiet import MAX_WAIT_S
from edgekd.targets import Target, get_target

LOCAL_BACKENDS = ("openvino", "onnxruntime")
CALIB_WINDOWS = 16
TIMING_WARMUP = 20
TIMING_DURATION_S = 1.0
TABLE_FORMAT = "edgekd-latency-table"
CACHE_FILE = "latency_cache.json"
QUIET_KEY = "quiet_reference_ms"  # in the cache: {stamp digest: quietest reference kernel ms}
MEASURE_TIMEOUT_S = 300.0  # a measuring process's load and compile, beyond its timing
MB = 1e6


def arch_signature(arch: str, arch_args: Mapping[str, Any]) -> str:
    """`arch` + every constructor keyword (defaults filled in), the input shape and the class
    count, as one canonical string: `tcn_tiny{"input_shape":[3,128],"kernel_size":5,...}`.
    `arch_args` is a built model's `arch_args` (see `edgekd.models.registry`)."""
    return arch + json.dumps(dict(arch_args), sort_keys=True, separators=(",", ":"))


def resolved_args(arch: str, args: Mapping[str, Any], spec: ModalitySpec, num_classes: int) -> dict:
    """The full `arch_args` of the candidate (builds it: milliseconds for these students)."""
    from edgekd.models import create_student

    return dict(create_student(arch, spec, num_classes, **args).arch_args)


@dataclass(frozen=True)
class Estimate:
    """A priced candidate. `p50_ms` is None when no source could time it (`source` says why);
    `int8_bytes`: the int8 QDQ ONNX; `source`: local | table | ray | none;
    `detail`: where exactly (machine, table file, Ray resource); `rss_mb`: the measuring
    process's peak resident memory (MB = 10^6 bytes, see `Measured`; None from a table);
    `noisy` and `conditions` (`edgekd.search.quiet.Conditions` as a dict; None from a table or a
    cache written before conditions were kept)."""

    signature: str
    params: int
    int8_bytes: int
    p50_ms: float | None
    source: str
    detail: str
    rss_mb: float | None = None
    noisy: bool = False
    conditions: dict[str, Any] | None = None

    @property
    def trusted(self) -> bool:
        """False for a measured price not known to be quiet: it is to be taken again."""
        measured = self.source in ("local", "ray")
        return not measured or (self.conditions is not None and not self.noisy)

    @property
    def int8_kb(self) -> float:
        return self.int8_bytes / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "int8_kb": self.int8_kb}


# --- export and timing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """An untrained candidate's int8 artifact(s) for one backend, in a work folder."""

    files: tuple[Path, ...]  # what the backend loads (an IR: .xml then .bin)
    int8_bytes: int  # of the QDQ ONNX
    params: int


def export_candidate(
    arch: str, args: Mapping[str, Any], spec: ModalitySpec, num_classes: int, backend: str,
    work: Path, seed: int = 0,
) -> Exported:  # fmt: skip
    """Export the untrained candidate (seeded weights, eval mode) to int8 for `backend`."""
    import torch

    from edgekd.export.onnx import export_onnx
    from edgekd.export.quantize import quantize_ptq
    from edgekd.modalities import feature_shape
    from edgekd.models import create_student

    torch.manual_seed(seed)
    model = create_student(arch, spec, num_classes, **args).eval()
    rng = np.random.default_rng(seed)
    calib = rng.standard_normal((CALIB_WINDOWS, *feature_shape(spec))).astype(np.float32)
    fp32 = export_onnx(model, torch.from_numpy(calib[:4]), work / "model.fp32.onnx")
    qdq = quantize_ptq(fp32, work / "model.int8.qdq.onnx", calib, "minmax")
    files: tuple[Path, ...] = (qdq,)
    if backend == "openvino":
        from edgekd.export.openvino import convert_ir

        xml = convert_ir(qdq, work / "ir" / "model.int8.xml")
        files = (xml, xml.with_suffix(".bin"))
    params = int(sum(p.numel() for p in model.parameters()))
    return Exported(files, qdq.stat().st_size, params)


def _probe_bundle(exported: Exported, spec: ModalitySpec, num_classes: int, target: Target,
                  out: Path) -> Path:
    """A minimal bundle holding the int8 artifact(s), so the runtime loads them as it would a
    real export (its runner, its compile options, TensorRT's first-load engine build)."""
    from edgekd.export.bundle import BundleWriter
    from edgekd.modalities import feature_shape

    with BundleWriter(out, with_eval=False) as writer:
        first = exported.files[0]
        if first.suffix == ".xml":
            writer.add_file("openvino/model.int8.xml", first, format="openvino_xml",
                            precision="int8")
            writer.add_file("openvino/model.int8.bin", exported.files[1], format="openvino_bin",
                            precision="int8")
        else:
            writer.add_file("model.int8.qdq.onnx", first, format="onnx", precision="int8")
        writer.set("labels", [f"class{i}" for i in range(num_classes)])
        writer.set("modality", spec.to_dict())
        writer.set("io", {
            "input": {"name": "input", "shape": ["batch", *feature_shape(spec)],
                      "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", num_classes], "dtype": "float32"},
        })  # fmt: skip
        writer.set("target", target.to_dict("int8"))
        if target.uses_tensorrt:
            writer.set("tensorrt_build", target.tensorrt_build("int8"))
    return out


@dataclass(frozen=True)
class Measured:
    """A bundle loaded and timed in a fresh process (`measure_bundle`).

    `p50_ms`: batch-1 p50, 1 thread. `rss_mb`: that process's peak resident memory (MB = 10^6
    bytes): the interpreter, numpy, the runtime, the backend library, the compiled model and the
    timing calls (plus the benchmark module, about 4 MB); what a device must hold to run the
    model this way, so it is the figure a memory budget judges. `rss_over_import_mb`: that peak
    over the process's resident memory once the runtime and the backend library were imported:
    what the model adds. Both None where /proc/self/status cannot be read. `conditions`
    (`edgekd.search.quiet.Conditions` as a dict) and `noisy`: the machine around the timing.
    """

    p50_ms: float
    rss_mb: float | None
    rss_over_import_mb: float | None
    conditions: dict[str, Any]
    noisy: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Runs in a fresh interpreter (torch blocked: the runtime never needs it, and its memory is not
# the model's). Peaks are read from /proc/self/status, not ru_maxrss: ru_maxrss survives exec on
# Linux, so it would report the parent's (a torch process's) peak. Prints one JSON line.
_MEASURE = textwrap.dedent("""
    import importlib.abc, json, sys, tempfile

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in the measuring process")
            return None

    def kib(field):
        try:
            with open("/proc/self/status") as fh:
                return int(next(line for line in fh if line.startswith(field + ":")).split()[1])
        except (OSError, StopIteration):
            return None

    sys.meta_path.insert(0, NoTorch())
    import numpy as np
    import edgekd.runtime as rt
    from edgekd.errors import EdgeKDError
    from edgekd.modalities import feature_shape
    from edgekd.runtime.backends import backend_module
    from edgekd.runtime.bench import latency_stats, time_calls
    bundle, backend, precision, duration_s, warmup = sys.argv[1:6]
    try:
        backend_module(backend).check_available()  # imports the backend library
        base = kib("VmRSS")
        with tempfile.TemporaryDirectory(prefix="edgekd-latency-cache-") as cache:
            model = rt.load(bundle, backend=backend, precision=precision, threads=1,
                            cache_dir=cache)  # compiled fresh: no cache from another build
            run = model.runner()
            x = np.random.default_rng(0).standard_normal((1, *feature_shape(model.spec)))
            x = np.ascontiguousarray(x, dtype=np.float32)
            seconds = time_calls(lambda: run(x), warmup=int(warmup), iterations=None,
                                 duration_s=float(duration_s))
    except EdgeKDError as exc:
        print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        sys.exit(1)
    print(json.dumps({"p50_ms": latency_stats(seconds)["p50"], "peak_kib": kib("VmHWM"),
                      "base_kib": base}))
""")


def _measure_process(bundle: Path, backend: str, precision: str,
                     duration_s: float) -> dict[str, Any]:  # fmt: skip
    """One run of _MEASURE: `{"p50_ms", "peak_kib", "base_kib"}`. Its EdgeKDError is raised
    here as the same class; a crash or a timeout as RuntimeError."""
    env = dict(os.environ)
    package_root = str(Path(edgekd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    args = [sys.executable, "-c", _MEASURE, str(bundle), backend, precision, str(duration_s),
            str(TIMING_WARMUP)]  # fmt: skip
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env,
                              timeout=MEASURE_TIMEOUT_S + duration_s)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timing {bundle} on {backend} took over "
                           f"{MEASURE_TIMEOUT_S + duration_s:g} s") from None  # fmt: skip
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"timing {bundle} on {backend} failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-500:]}") from None  # fmt: skip
    if "error" in out:
        raise getattr(edgekd.errors, out["kind"], edgekd.errors.EdgeKDError)(out["error"])
    return out


def measure_bundle(bundle: Path, backend: str, precision: str = "int8",
                   duration_s: float = TIMING_DURATION_S, *,
                   max_wait_s: float = MAX_WAIT_S) -> Measured:  # fmt: skip
    """Batch-1 p50 (ms, 1 thread, `duration_s` of calls after TIMING_WARMUP) and peak memory of
    `bundle` on `backend`, in a fresh process, when this machine is quiet: waiting up to
    `max_wait_s` (s) for quiet, else `noisy` (see `edgekd.search.quiet.quietly`)."""

    def once() -> dict[str, Any]:
        return _measure_process(Path(bundle), backend, precision, duration_s)

    out, conditions = quiet.quietly(once, max_wait_s)
    peak, base = out["peak_kib"], out["base_kib"]
    rss = None if peak is None else peak * 1024 / MB  # /proc counts KiB
    over = None if peak is None or base is None else (peak - base) * 1024 / MB
    return Measured(float(out["p50_ms"]), rss, over, conditions.to_dict(), conditions.noisy)


def time_bundle(bundle: Path, backend: str, precision: str = "int8",
                duration_s: float = TIMING_DURATION_S) -> float:
    """Batch-1 p50 (ms) of a bundle on `backend`: `measure_bundle`'s."""
    return measure_bundle(bundle, backend, precision, duration_s).p50_ms


def measure_here(arch: str, args: Mapping[str, Any], spec: dict[str, Any], num_classes: int,
                 target_name: str, duration_s: float = TIMING_DURATION_S,
                 max_wait_s: float = MAX_WAIT_S,
                 quiet_reference_ms: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Export, quantize and measure the candidate on THIS machine with `target_name`'s backend
    (`measure_bundle`; `quiet_reference_ms`: a stored quiet reference to judge against);
    `{"p50_ms", "int8_bytes", "params", "machine", "rss_mb", "rss_over_import_mb", "noisy",
    "conditions"}`. Plain arguments (a spec dict), so it can run as a Ray task on the device or
    via `edgekd latency-table` there."""
    from edgekd.runtime.autoselect import device_stamp

    if quiet_reference_ms is not None:
        quiet.remember_reference(quiet_reference_ms)
    target = get_target(target_name)
    modality = ModalitySpec.from_dict(spec)
    with tempfile.TemporaryDirectory(prefix="edgekd-latency-") as tmp:
        work = Path(tmp)
        exported = export_candidate(arch, args, modality, num_classes, target.backend, work)
        bundle = _probe_bundle(exported, modality, num_classes, target, work / "probe.edgekd")
        measured = measure_bundle(bundle, target.backend, duration_s=duration_s,
                                  max_wait_s=max_wait_s)  # fmt: skip
    stamp = device_stamp(1, with_gpu=target.uses_tensorrt)
    return {**measured.to_dict(), "int8_bytes": exported.int8_bytes, "params": exported.params,
            "machine": stamp}  # fmt: skip


# --- latency tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyTable:
    """p50 (ms) per architecture signature, recorded on one device for one target."""

    path: Path
    target: str
    device: dict[str, Any]
    p50_ms: dict[str, float]

    @classmethod
    def load(cls, path: Path, target: str) -> LatencyTable:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--latency-table {path}: file not found") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--latency-table {path}: not readable JSON ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != TABLE_FORMAT:
            raise ConfigError(f"--latency-table {path}: not an {TABLE_FORMAT} file")
        if raw.get("target") != target:
            raise ConfigError(
                f"--latency-table {path} was recorded for target {raw.get('target')!r}, "
                f"not --target {target!r}"
            )
        table = {str(k): float(v) for k, v in dict(raw.get("p50_ms") or {}).items()}
        return cls(path, target, dict(raw.get("device") or {}), table)

    @property
    def digest(self) -> str:
        blob = json.dumps(self.p50_ms, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        cpu = self.device.get("gpus") or self.device.get("cpu") or "unknown device"
        return f"latency table {self.path} (recorded on {cpu})"


def record_latency_table(
    candidates: Iterable[tuple[str, Mapping[str, Any]]], spec: ModalitySpec, num_classes: int,
    target: str, path: Path, *, duration_s: float = TIMING_DURATION_S, log: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Time each (arch, args) candidate on THIS machine for `target` and write (or extend) the
    latency table at `path`; run it on the target device. Returns the table."""
    from edgekd.runtime.autoselect import device_stamp

    get_target(target)
    path = Path(path)
    old: dict[str, float] = {}
    if path.is_file():
        old = LatencyTable.load(path, target).p50_ms
    table = {"format": TABLE_FORMAT, "target": target,
             "device": device_stamp(1, with_gpu=get_target(target).uses_tensorrt),
             "p50_ms": dict(old)}  # fmt: skip
    for arch, args in candidates:
        signature = arch_signature(arch, resolved_args(arch, args, spec, num_classes))
        if signature in table["p50_ms"]:
            continue
        result = measure_here(arch, args, spec.to_dict(), num_classes, target, duration_s)
        table["p50_ms"][signature] = result["p50_ms"]
        atomic_write_json(path, table)  # after each: a long recording survives a stop
        if log is not None:
            noisy = f" (noisy: {result['conditions']['reason']})" if result["noisy"] else ""
            log(f"{signature}: p50 {result['p50_ms']:.4f} ms{noisy}")
    atomic_write_json(path, table)
    return table


def untimed_candidates(search_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """The (arch, args) a search in `search_dir` rejected for want of a latency (missing from
    its table), once each: what to record next on the device."""
    path = Path(search_dir) / "search.json"
    if not path.is_file():
        raise ConfigError(f"--from-search {search_dir}: no search.json (run `edgekd search` first)")
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for row in json.loads(path.read_text(encoding="utf-8"))["trials"]:
        if str(row.get("rejected") or "").startswith("no latency") and row.get("arch"):
            key = arch_signature(row["arch"], row["args"])
            seen.setdefault(key, (row["arch"], dict(row["args"])))
    return list(seen.values())


# --- the predictor --------------------------------------------------------------------------


class LatencyPredictor:
    """Prices candidates for one target and modality, with the JSON cache in `out`.

    `table`: a latency table (then it is the only source, also for CPU targets); `executor`: an
    `edgekd.executor` backend; a Ray one with a node declaring the target's resource measures
    there. `max_wait_s`: the longest a measurement waits for a quiet machine (s; 0: measure at
    once, flagging it noisy if busy). ConfigError at construction when the target has no usable
    source.
    """

    def __init__(
        self, target: str, spec: ModalitySpec, num_classes: int, out: Path, *,
        table: Path | None = None, executor: Any = None, duration_s: float = TIMING_DURATION_S,
        max_wait_s: float = MAX_WAIT_S,
    ) -> None:  # fmt: skip
        self.target = get_target(target)
        self.spec, self.num_classes = spec, num_classes
        self.duration_s, self.max_wait_s = duration_s, max_wait_s
        self.table = None if table is None else LatencyTable.load(table, self.target.name)
        self.executor = executor
        self.cache_path = Path(out) / CACHE_FILE
        self.cache: dict[str, Any] = {}
        if self.cache_path.is_file():
            self.cache = json.loads(self.cache_path.read_text(encoding="utf-8"))
        self.source = self._source()
        # keys priced by this predictor: it does not price them again (a busy search would
        # spend its time re-pricing what it could not price quietly)
        self._priced: set[str] = set()

    def _source(self) -> str:
        if self.table is not None:
            return "table"
        if self.target.backend in LOCAL_BACKENDS:
            return "local"
        if self.executor is not None and self.executor.has_resource(self.target.name):
            return "ray"
        raise ConfigError(
            f"--target {self.target.name} runs on {self.target.backend}, not on this machine, "
            "and its latency cannot be measured here: pass --latency-table FILE (recorded on the "
            f"device with `edgekd latency-table --target {self.target.name}`), or --executor ray "
            f"with a node started with --resources '{{\"{self.target.name}\": 1}}'"
        )

    def describe(self) -> str:
        """Where the p50 figures come from, for the plan and the report."""
        if self.source == "table":
            assert self.table is not None
            return self.table.describe()
        if self.source == "ray":
            return f"Ray tasks on a node with resource {self.target.name!r}"
        from edgekd.runtime.autoselect import cpu_fields

        cpu = cpu_fields().get("model name", "this CPU")
        return f"measured on this machine ({cpu}), {self.target.backend} int8, batch 1, 1 thread"

    def _stamp(self) -> dict[str, Any]:
        if self.source == "table":
            assert self.table is not None
            return {"table": self.table.digest}
        if self.source == "ray":
            return {"ray_resource": self.target.name}
        from edgekd.runtime.autoselect import device_stamp

        return {**device_stamp(1, with_gpu=False), "backend": self.target.backend}

    def _key(self, signature: str) -> str:
        blob = json.dumps({"signature": signature, "target": self.target.name,
                           "stamp": self._stamp()}, sort_keys=True)  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _stamp_key(self) -> str:
        return hashlib.sha256(json.dumps(self._stamp(), sort_keys=True).encode()).hexdigest()[:24]

    def predict(self, arch: str, args: Mapping[str, Any]) -> Estimate:
        """The candidate's estimate: from the cache when it is trusted (`Estimate.trusted`) or
        was priced by this predictor, else freshly exported and measured. A re-price replaces
        the cached one when it is quiet or faster."""
        signature = arch_signature(arch, resolved_args(arch, args, self.spec, self.num_classes))
        key = self._key(signature)
        hit = self.cache.get(key)
        old = None if hit is None else Estimate(**hit)
        if old is not None and (old.trusted or key in self._priced):
            return old
        estimate = self._price(arch, args, signature)
        self._priced.add(key)
        if estimate.conditions is not None:
            quiet_ms = self.cache.setdefault(QUIET_KEY, {})
            stamp, seen = self._stamp_key(), estimate.conditions["quiet_reference_ms"]
            quiet_ms[stamp] = min(quiet_ms.get(stamp, seen), seen)
        if old is not None and estimate.noisy and _faster(old, estimate):
            estimate = old  # both untrusted: noise only slows a timing, so the faster is closer
        self.cache[key] = asdict(estimate)
        atomic_write_json(self.cache_path, self.cache)
        return estimate

    def _price(self, arch: str, args: Mapping[str, Any], signature: str) -> Estimate:
        if self.source in ("local", "ray"):
            plain = (arch, dict(args), self.spec.to_dict(), self.num_classes, self.target.name,
                     self.duration_s, self.max_wait_s,
                     self.cache.get(QUIET_KEY, {}).get(self._stamp_key()))  # fmt: skip
            if self.source == "local":
                m = measure_here(*plain)
            else:
                from edgekd.executor import Resources

                resources = Resources(custom={self.target.name: 1})
                m = self.executor.submit(measure_here, *plain, resources=resources).result()
            return Estimate(signature, m["params"], m["int8_bytes"], m["p50_ms"], self.source,
                            self.describe(), m["rss_mb"], m["noisy"],
                            m["conditions"])  # fmt: skip
        # table: the size is device-independent, so it is measured here; the time is looked up
        assert self.table is not None
        with tempfile.TemporaryDirectory(prefix="edgekd-size-") as tmp:
            # the size is the QDQ ONNX's: no backend conversion needed
            exported = export_candidate(arch, args, self.spec, self.num_classes, "onnxruntime",
                                        Path(tmp))
            params, size = exported.params, exported.int8_bytes
        p50 = self.table.p50_ms.get(signature)
        detail = self.describe() if p50 is not None else f"not in {self.table.path}"
        return Estimate(signature, params, size, p50, "table" if p50 is not None else "none",
                        detail)


def _faster(a: Estimate, b: Estimate) -> bool:
    """`a` timed no slower than `b` (a missing time is slowest)."""
    return a.p50_ms is not None and (b.p50_ms is None or a.p50_ms <= b.p50_ms)


def predict_latency(
    arch: str, args: Mapping[str, Any], spec: ModalitySpec, num_classes: int, target: str,
    out: Path, *, table: Path | None = None, executor: Any = None,
    duration_s: float = TIMING_DURATION_S, max_wait_s: float = MAX_WAIT_S,
) -> Estimate:  # fmt: skip
    """One candidate's estimate (see `LatencyPredictor`; cached in `out`)."""
    predictor = LatencyPredictor(target, spec, num_classes, out, table=table, executor=executor,
                                 duration_s=duration_s, max_wait_s=max_wait_s)  # fmt: skip
    return predictor.predict(arch, args)
