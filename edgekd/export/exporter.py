"""`export_run`: a trained student run folder -> a verified, measured bundle for a target.

Export builds from a table of formats (`edgekd.export.formats.FORMATS`: name, bundle file,
manifest format, backend, precision, builder, verifier), one builder function per format; a
target lists the formats it gets and the export precision picks among them (FP32 formats always,
int8 ones for int8). This module runs them: options, data, the job, measurement, writing.

Steps: load the run and its data; build each format in table order (FP32 ONNX checked against
torch; int8 by PTQ or QAT, linted for TensorRT's Q/DQ rules; OpenVINO IRs with int8 execution
checked; a TensorRT engine when TensorRT and a GPU are here, else the build options travel in the
manifest); golden and eval windows. Everything is then written as a probe bundle in a temporary
folder and loaded through `edgekd.runtime` on every (backend, precision) the formats serve:
golden self-check and accuracy on held-out test windows. Only if every reduced-precision artifact
is within `max_drop` points of torch FP32 is the real bundle written (atomically, by
BundleWriter): a failed export leaves nothing at `out`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import BackendUnavailable, ConfigError, ExportError
from edgekd.export.accuracy import REFERENCE, format_table, over_limit
from edgekd.export.formats import FORMATS, Format
from edgekd.export.quantize import PTQ_METHODS
from edgekd.export.run_data import RunData, load_run_data
from edgekd.targets import Target, get_target

log = logging.getLogger("edgekd.export")

BACKEND_QUANTIZERS = ("ort", "nncf")
TRT_FRONTENDS = ("onnx", "torch-tensorrt")
DEFAULT_CALIB = 512  # calibration windows when --calib is not given (all, if fewer exist)
GOLDEN_N = 8
GOLDEN_ATOL = 1e-4  # FP32 probabilities on any backend vs torch, on golden windows


@dataclass(frozen=True)
class ExportOptions:
    """The knobs of `edgekd export` (see `export_run` for their meaning)."""

    target: str = "cpu"
    precision: str | None = None
    ptq: str = "minmax"
    calib: int | None = None
    qat: bool = False
    qat_epochs: int = 3
    max_drop: float = 1.0
    force: bool = False
    backend_quantizer: str = "ort"
    trt_frontend: str = "onnx"
    seed: int = 0
    allow_float: tuple[str, ...] = ()
    data: str | None = None
    dla_core: int | None = None

    def resolve(self, out: Path) -> tuple[Target, str]:
        """(target, precision), checking everything that needs no model: fail in milliseconds."""
        tgt = get_target(self.target)
        prec = tgt.resolve_precision(self.precision)
        choices = (
            ("--ptq", self.ptq, PTQ_METHODS),
            ("--backend-quantizer", self.backend_quantizer, BACKEND_QUANTIZERS),
            ("--trt-frontend", self.trt_frontend, TRT_FRONTENDS),
        )
        for flag, value, allowed in choices:
            if value not in allowed:
                raise ConfigError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
        unknown = [f for f in tgt.formats if f not in FORMATS]
        if unknown:
            raise ConfigError(f"target {tgt.name!r} lists unknown export formats {unknown}")
        if self.max_drop < 0:
            raise ConfigError(f"--max-drop must be >= 0 points, got {self.max_drop:g}")
        if self.calib is not None and self.calib < 0:
            raise ConfigError(f"--calib must be >= 0 windows, got {self.calib}")
        if prec == "int8" and not self.qat and self.calib == 0:
            raise ConfigError(
                "int8 needs calibration data, but --calib is 0; pass --calib N (e.g. 512), "
                "use --qat, or --precision fp32"
            )
        if self.qat and prec != "int8":
            raise ConfigError(f"--qat trains for int8, but the precision is {prec}")
        if self.qat and self.qat_epochs < 1:
            raise ConfigError(f"--qat-epochs must be >= 1, got {self.qat_epochs}")
        if self.backend_quantizer == "nncf" and (prec != "int8" or self.calib == 0):
            raise ConfigError(
                "--backend-quantizer nncf quantizes to int8 from calibration windows: it needs "
                f"precision int8 (here {prec}) and --calib N >= 1 (here {self.calib})"
            )
        if self.allow_float and prec != "int8":
            raise ConfigError(f"--allow-float applies to int8 exports, the precision is {prec}")
        if self.dla_core is not None:
            tgt.tensorrt_build(prec, dla_core=self.dla_core)  # ConfigError if not on this target
            if self.trt_frontend != "onnx":
                raise ConfigError("--dla-core builds with the ONNX frontend (--trt-frontend onnx)")
        if self.trt_frontend == "torch-tensorrt":
            if not tgt.uses_tensorrt:
                raise ConfigError(f"--trt-frontend applies to TensorRT targets, not {tgt.name!r}")
            if importlib.util.find_spec("torch_tensorrt") is None:
                from edgekd.export.tensorrt import TORCH_TENSORRT_HINT

                raise BackendUnavailable(
                    "--trt-frontend torch-tensorrt needs the torch-tensorrt package, which is "
                    f"not installed; {TORCH_TENSORRT_HINT}"
                )
        if out.exists() or out.is_symlink():
            if not self.force:
                raise ConfigError(f"{out} already exists; pass --force to replace it")
            from edgekd.export.bundle import check_replaceable

            check_replaceable(out)  # refuse a non-bundle now, not after the whole export
        return tgt, prec


@dataclass
class ExportResult:
    """What `export_run` produced: the bundle path, its manifest, the accuracy report, notices
    for the user (e.g. the on-device TensorRT build), step timings (s), OpenVINO int8 evidence."""

    out: Path
    manifest: dict[str, Any]
    accuracy: dict[str, dict[str, Any]]
    notices: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    int8_evidence: dict[str, Any] | None = None

    @property
    def sizes(self) -> dict[str, int]:
        """Bytes per bundled file (artifacts, golden, eval)."""
        out = {a["path"]: int(a["size"]) for a in self.manifest["artifacts"]}
        for kind in ("golden", "eval"):
            if kind in self.manifest:
                out[self.manifest[kind]["path"]] = int(self.manifest[kind]["size"])
        return out


def export_run(
    run_dir: Path,
    out: Path,
    *,
    target: str = "cpu",
    precision: str | None = None,
    ptq: str = "minmax",
    calib: int | None = None,
    qat: bool = False,
    qat_epochs: int = 3,
    max_drop: float = 1.0,
    force: bool = False,
    backend_quantizer: str = "ort",
    trt_frontend: str = "onnx",
    seed: int = 0,
    progress: bool = True,
    allow_float: tuple[str, ...] | list[str] = (),
    data: str | Path | None = None,
    dla_core: int | None = None,
    with_eval: bool = False,
    sign_key: Path | None = None,
) -> ExportResult:
    """Export the student in `run_dir` to the bundle folder `out` for `target`.

    precision: None = the target's default. int8 takes `calib` calibration windows from the
    training split for PTQ (`ptq` = minmax | percentile | entropy; None = DEFAULT_CALIB, or all
    training windows when there are fewer, said in the log and the calibration record), or
    fine-tunes `qat_epochs` epochs with fake quantization (`qat`; the PTQ model then stays as a
    comparison row). `max_drop`: the most accuracy (percentage points) an int8/fp16 artifact may
    lose against torch FP32 on held-out windows. `backend_quantizer="nncf"` replaces the OpenVINO
    int8 IR by NNCF's accuracy-controlled one. `trt_frontend`: "onnx" (TensorRT's ONNX parser) or
    "torch-tensorrt". `seed` picks calibration and held-out windows. `progress`: rich step lines
    on stderr. `allow_float`: names of Conv/Gemm/MatMul nodes the int8 lint accepts in float.
    `data`: the run's dataset at a new place (checked against the run's labels and modality
    layouts). `dla_core`: build the TensorRT engine for this DLA core (targets with DLA; GPU
    fallback allowed). Raises ConfigError (options, run folder, data), DataError,
    BackendUnavailable, ExportError (lint, accuracy, a backend failing). `with_eval`: keep the
    held-out windows inside the bundle (default: beside it as `<stem>.eval.npz`). `sign_key`:
    Ed25519 private key (PEM) to sign the bundle with.
    """
    opts = ExportOptions(
        target=target,
        precision=precision,
        ptq=ptq,
        calib=calib,
        qat=qat,
        qat_epochs=qat_epochs,
        max_drop=max_drop,
        force=force,
        backend_quantizer=backend_quantizer,
        trt_frontend=trt_frontend,
        seed=seed,
        allow_float=tuple(allow_float),
        data=None if data is None else str(data),
        dla_core=dla_core,
    )
    out = Path(out)
    tgt, prec = opts.resolve(out)
    from edgekd.export.bundle import writer_options

    with writer_options(with_eval=with_eval, sign_key=sign_key):
        return _Export(Path(run_dir), out, opts, tgt, prec, _Steps(progress)).run()


class _Steps:
    """One line per finished step with its duration (rich, on stderr); silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, soft_wrap=True) if enabled else None
        self.timings: dict[str, float] = {}
        self._status: Any = None

    @contextlib.contextmanager
    def step(self, key: str, text: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if self.console is None:
            yield
        else:
            with self.console.status(text) as status:
                self._status = status
                yield
            self._status = None
        seconds = time.perf_counter() - t0
        self.timings[key] = self.timings.get(key, 0.0) + seconds
        if self.console is not None:
            self.console.print(f"[green]✓[/green] {text} [dim]({seconds:.1f} s)[/dim]")

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)

    def show(self, text: str, *, notice: bool = False) -> None:
        if self.console is not None:
            self.console.print(f"[yellow]![/yellow] {text}" if notice else text, markup=notice)


@dataclass
class _Parts:
    """Everything that goes into a bundle, gathered before anything is published."""

    files: list[tuple[str, Path | bytes, str, str, dict[str, Any]]] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    npz: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def add(self, rel: str, source: Path | bytes, fmt: str, precision: str, **extra: Any) -> None:
        self.files.append((rel, source, fmt, precision, extra))

    def write(self, out: Path, force: bool) -> dict[str, Any]:
        """Publish through BundleWriter (staged, hashed, read back, renamed); the manifest."""
        from edgekd.export.bundle import BundleWriter

        with BundleWriter(out, force=force) as writer:
            for rel, source, fmt, precision, extra in self.files:
                writer.add_file(rel, source, format=fmt, precision=precision, **extra)
            for kind, arrays in self.npz.items():
                writer.add_npz(kind, **arrays)
            for key, value in self.sections.items():
                writer.set(key, value)
        assert writer.manifest is not None  # set on a clean exit
        return writer.manifest


class _Export:
    """One export job: builds the target's formats into `work`, gathers them in `parts`,
    measures them through the runtime, writes the bundle."""

    def __init__(
        self, run_dir: Path, out: Path, opts: ExportOptions, tgt: Target, prec: str, steps: _Steps
    ) -> None:
        self.run_dir, self.out, self.opts = run_dir, out, opts
        self.tgt, self.prec, self.steps = tgt, prec, steps
        self.parts = _Parts()
        self.notices: list[str] = []
        self.accuracy: dict[str, dict[str, Any]] = {}
        self.evidence: dict[str, Any] | None = None
        self.built: dict[str, Path] = {}  # format name -> its file in the work folder
        self.extra: dict[str, dict[str, Any]] = {}  # format name -> its manifest fields
        self.measured: list[Format] = []  # formats in the bundle, in table order
        self.calib = 0  # calibration windows used (resolved after loading)
        self.calib_shortfall: dict[str, Any] = {}  # calibration record fields when capped
        self.work = Path()  # set in run()
        self.data: RunData

    def formats(self) -> list[Format]:
        """The target's formats at this export's precision, in table order."""
        return [f for f in FORMATS.values() if f.name in self.tgt.formats and f.wanted(self.prec)]

    def run(self) -> ExportResult:
        t_start = time.perf_counter()
        opts, steps = self.opts, self.steps
        with steps.step("load", f"load run {self.run_dir} and its data"):
            self.data = load_run_data(self.run_dir, opts.seed, opts.data)
        if self.prec == "int8":
            self._resolve_calib()
        self.accuracy[REFERENCE] = self.data.score(self.data.torch_logits)
        with tempfile.TemporaryDirectory(prefix="edgekd-export-") as tmp:
            self.work = Path(tmp)
            for fmt in self.formats():
                self._make(fmt)
            self.parts.npz["golden"] = {
                "x": self.data.eval_x[:GOLDEN_N],
                "probs": _softmax(self.data.torch_logits[:GOLDEN_N]),
            }
            self.parts.npz["eval"] = {"x": self.data.eval_x, "y": self.data.eval_y}
            self.parts.sections.update(self._sections())
            with steps.step("accuracy", "load the bundle on every backend: golden check, accuracy"):
                probe = self.work / "probe.edgekd"
                self._measure(probe, self.parts.write(probe, force=False))
            table = format_table(self.accuracy, opts.max_drop)
            failing = over_limit(self.accuracy, opts.max_drop)
            if failing:
                raise ExportError(
                    f"accuracy drop over --max-drop {opts.max_drop:g} points for "
                    f"{', '.join(failing)}; no bundle written.\n{table}\n"
                    "Try --ptq percentile or entropy, more --calib windows, --qat, "
                    "or a larger --max-drop."
                )
            self.parts.sections["accuracy"] = self.accuracy
            self.parts.sections["export"] = {
                "options": {
                    **asdict(opts),
                    "allow_float": list(opts.allow_float),  # as JSON reads it back
                    "precision": self.prec,
                },
                "timings_s": {k: round(v, 3) for k, v in steps.timings.items()},
            }
            with steps.step("write", f"write {self.out}"):
                manifest = self.parts.write(self.out, force=opts.force)
        steps.timings["total"] = time.perf_counter() - t_start
        steps.show(table)
        for notice in self.notices:
            steps.show(notice, notice=True)
        return ExportResult(
            out=self.out,
            manifest=manifest,
            accuracy=self.accuracy,
            notices=self.notices,
            timings=dict(steps.timings),
            int8_evidence=self.evidence,
        )

    def _make(self, fmt: Format) -> None:
        """Build, verify and stage one format (an IR with its .bin)."""
        built = fmt.build(self)
        if built is None:
            return
        precision = fmt.precision_for(self.prec)
        rel = fmt.path.format(precision=precision)
        main_only: dict[str, Any] = {}
        if isinstance(built.path, Path):
            self.built[fmt.name] = built.path
            if fmt.verify is not None:  # verifiers check files; in-memory plans have none
                main_only = fmt.verify(self, built.path)
        self.extra[fmt.name] = built.extra
        self.parts.add(rel, built.path, fmt.kind, precision, **built.extra, **main_only)
        if fmt.kind == "openvino_xml":
            assert isinstance(built.path, Path)  # an IR is always a file pair
            bin_rel = rel.removesuffix(".xml") + ".bin"
            self.parts.add(
                bin_rel, built.path.with_suffix(".bin"), "openvino_bin", precision, **built.extra
            )
        self.measured.append(fmt)

    def _resolve_calib(self) -> None:
        """How many calibration windows PTQ uses: --calib, or DEFAULT_CALIB capped at the
        training windows (said in the log, the notices and the calibration record). An explicit
        --calib above the count is an error."""
        n, requested = len(self.data.train), self.opts.calib
        if requested is not None:
            if requested > n:
                raise ConfigError(
                    f"--calib {requested} is more than the {n} training windows of "
                    f"{self.data.source}; use at most {n}"
                )
            self.calib = requested
            return
        self.calib = min(DEFAULT_CALIB, n)
        if self.calib < DEFAULT_CALIB and not self.opts.qat:
            reason = f"{self.data.source} has only {n} labelled training windows"
            self.calib_shortfall = {"requested": DEFAULT_CALIB, "reason": reason}
            line = f"calibrating on all {n} training windows (default {DEFAULT_CALIB}): {reason}"
            log.info(line)
            self.notices.append(line)

    def calibration_windows(self) -> np.ndarray:
        """`self.calib` seeded training windows as model features (float32); only those
        windows are read."""
        data, rng = self.data, np.random.default_rng(self.opts.seed)
        return data.train_features(np.sort(rng.choice(len(data.train), self.calib, replace=False)))

    # -- manifest, measurement -----------------------------------------------------------------

    def _sections(self) -> dict[str, Any]:
        from edgekd.modalities import feature_shape

        run = self.data.run
        side = run.sidecar
        k = len(self.data.labels)
        return {
            "model": {
                "name": run.dir.name,
                "arch": side["arch"],
                "arch_args": side["arch_args"],
                "params": int(sum(p.numel() for p in run.model.parameters())),
                "run_metrics": side.get("metrics", {}),
            },
            "labels": self.data.labels,
            "modality": self.data.spec.to_dict(),
            "io": {
                "input": {
                    "name": "input",
                    "shape": ["batch", *feature_shape(self.data.spec)],
                    "dtype": "float32",
                },
                "output": {"name": "logits", "shape": ["batch", k], "dtype": "float32"},
            },
            "target": self.tgt.to_dict(self.prec),
            # Whom the student learnt from: source, weights sha256, licence and card.
            "teacher": side.get("teacher") or {"source": "none"},
            "provenance": {
                **_versions(),
                "git_commit": _git_commit(),
                "run_dir": str(run.dir.resolve()),
                "run_weights_sha256": side.get("weights_sha256"),
            },
        }

    def _measure(self, probe: Path, manifest: dict[str, Any]) -> None:
        """Load the probe bundle on the (precision, backend) of each format it holds, through
        edgekd.runtime: FP32 must reproduce torch on the golden windows; every one is scored on
        eval windows. `manifest`: the probe's (what a replacement measurement may inspect)."""
        import edgekd.runtime as rt

        combos = []
        for fmt in self.measured:
            precision = fmt.precision_for(self.prec)
            combos.append((precision, fmt.backend, fmt.accuracy_key.format(precision=precision)))
        for precision, backend, key in combos:
            try:
                model = rt.load(
                    probe, backend=backend, precision=precision, cache_dir=self.work / "cache"
                )
            except BackendUnavailable as exc:
                self.notices.append(f"{key}: not measured ({exc})")
                continue
            golden = model.self_check()
            if precision == "fp32" and (
                golden["top1_agreement"] < 1.0 or golden["max_abs_diff"] > GOLDEN_ATOL
            ):
                raise ExportError(
                    f"FP32 on {backend} does not reproduce torch on the golden windows: {golden}"
                )
            probs = model.predict(self.data.eval_x).probs
            self.accuracy[key] = {
                **self.data.score(probs),
                "golden_max_abs_diff": golden["max_abs_diff"],
            }


def _softmax(logits: np.ndarray) -> np.ndarray:
    from edgekd.runtime import softmax

    return softmax(logits)


def _versions() -> dict[str, str | None]:
    """Installed versions of the toolchain that made the bundle (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "torchao"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _git_commit() -> str | None:
    """HEAD of the repository edgekd runs from, if it is a git checkout with a commit."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        proc = subprocess.run(
            [git, "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None
