"""`edgekd bench`, `edgekd run` and `edgekd info`: thin commands over `edgekd.runtime`."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import wave
from pathlib import Path
from typing import Annotated, Any

import typer

from edgekd.commands import user_errors

BundleArg = Annotated[Path, typer.Argument(help="Bundle folder (NAME.edgekd).")]
BackendOpt = Annotated[str, typer.Option(help="auto, openvino, onnxruntime or tensorrt.")]
PrecisionOpt = Annotated[str | None, typer.Option(
    help="fp32, fp16, bf16, int8 (default: the bundle target's, else the best available), or "
    "auto (the fastest here within the export's accuracy budget).")]
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU inference threads (default 1).")]
InputOpt = Annotated[Path, typer.Option(
    "--input", "-i", help="Recording: .csv or .npy (T, C) samples, or .wav (16-bit PCM).")]
StreamOpt = Annotated[bool, typer.Option(
    "--stream", help="Push the samples through a live stream in chunks.")]
BatchOpt = Annotated[str, typer.Option(
    help="Batch sizes: latency at the smallest, throughput at the largest.")]
DurationOpt = Annotated[float | None, typer.Option(
    help="Seconds per measured figure (default 2).")]
IterationsOpt = Annotated[int | None, typer.Option(
    help="Timed calls per figure (instead of --duration).")]
JsonOpt = Annotated[Path | None, typer.Option(
    "--json", help="Write the full report (every figure) here.")]
PlotOpt = Annotated[Path | None, typer.Option(
    "--plot", help="Write latency distributions as PNG here.")]
RunOpt = Annotated[Path | None, typer.Option(
    "--run", help="The student's run folder: adds a PyTorch eager FP32 row (needs torch).")]
TrustedKeyOpt = Annotated[list[Path] | None, typer.Option(
    "--trusted-key", help="Ed25519 public key (PEM) the bundle must be signed by; repeatable "
    "(default: the paths in $EDGEKD_TRUSTED_KEYS, if set).")]
MinVersionOpt = Annotated[int | None, typer.Option(
    "--min-version", min=0, help="Refuse a bundle whose manifest version is lower than N (or "
    "that has none).", metavar="N")]
AllowRollbackOpt = Annotated[bool, typer.Option(
    "--allow-rollback", help="Accept a signed bundle older than the newest one of its signer "
    "read on this device (refused by default); turns the rollback guard off, which also "
    "refuses signed bundles where the cache has no usable seal key.")]


def _csv_list(text: str, what: str) -> list[str]:
    from edgekd.errors import ConfigError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{what} is empty")
    return items


def _int_list(text: str, what: str) -> list[int]:
    from edgekd.errors import ConfigError

    try:
        return [int(t) for t in _csv_list(text, what)]
    except ValueError as exc:
        raise ConfigError(f"--{what} must be comma-separated integers, got {text!r}") from exc


# -- input files for `run` ----------------------------------------------------------------------
def takes(spec: Any) -> str:
    """What a recording for `spec` must be, for error messages."""
    name = f"this bundle's model takes {spec.name!r} as"
    if spec.kind == "timeseries":
        return (f"{name} a time series of {spec.channels} channels at {spec.rate_hz:g} Hz: a .csv "
                f"or .npy of shape (T, {spec.channels}) (or a .wav at exactly {spec.rate_hz:g} Hz)")
    if spec.kind == "audio":
        return (f"{name} mono audio at {spec.rate_hz:g} Hz: a 16-bit PCM .wav, or a .npy / "
                "one-column .csv of samples")
    height, width = spec.size
    return (f"{name} {height}x{width} images of {spec.channels} channel(s): a .npy of shape "
            f"({height}, {width}, {spec.channels}) or (N, {height}, {width}, {spec.channels})")


def read_samples(path: Path, spec: Any) -> Any:
    """Raw samples of a recording: .npy / .csv as (T, C) (audio (T,)), .wav as int16 PCM.

    InputError names the file and what the bundle takes when the recording does not fit the
    modality spec (suffix, sample rate, channels), and the row and column of a NaN or inf (the
    file's 1-based line for CSV, header included).
    """
    import numpy as np

    from edgekd.errors import InputError

    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{path}: not a numeric .npy array ({exc})") from exc
        _check_finite_npy(path, data)
    elif suffix == ".csv":
        data = _read_csv(path)
    elif suffix == ".wav":
        data = _read_wav(path, spec)
    else:
        raise InputError(f"{path}: unsupported input type {suffix!r}; {takes(spec)}")
    if spec.kind == "audio" and data.ndim == 2 and data.shape[1] == 1:
        data = data[:, 0]
    if spec.kind == "timeseries" and data.ndim == 2 and data.shape[1] != spec.channels:
        raise InputError(f"{path}: {data.shape[1]} columns, but {takes(spec)}")
    if spec.kind == "audio" and data.ndim != 1:
        raise InputError(f"{path}: samples of shape {data.shape}, but {takes(spec)}")
    return data


def _check_finite_npy(path: Path, data: Any) -> None:
    import numpy as np

    from edgekd.errors import InputError

    if data.dtype.kind != "f":
        return
    bad = ~np.isfinite(data)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = (f"row {first[0] + 1}, column {first[1] + 1} (1-based; array index "
                 f"[{first[0]}, {first[1]}])" if data.ndim == 2 else f"array index {list(first)}")
        raise InputError(f"{path}: NaN or inf at {where}; {int(bad.sum())} such values in all; "
                         "the model needs finite samples")


def _read_csv(path: Path) -> Any:
    import math

    import numpy as np

    from edgekd.data.readers import read_utf8
    from edgekd.errors import InputError

    text = read_utf8(path, InputError, "the CSV")
    rows: list[list[float]] = []
    names: list[str] = []
    with io.StringIO(text, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                values = [float(cell) for cell in row]
            except ValueError as exc:
                if lineno == 1 and not rows:
                    names = [cell.strip() for cell in row]
                    continue  # a header line
                raise InputError(f"{path}:{lineno}: not a number ({exc})") from exc
            if rows and len(values) != len(rows[0]):
                raise InputError(f"{path}:{lineno}: {len(values)} columns, earlier rows have "
                                 f"{len(rows[0])}")
            bad = next((j for j, v in enumerate(values) if not math.isfinite(v)), None)
            if bad is not None:
                name = f" ({names[bad]})" if bad < len(names) and names[bad] else ""
                raise InputError(f"{path}:{lineno}: NaN or inf in column {bad + 1}{name} "
                                 f"({row[bad].strip()!r}); the model needs finite samples")
            rows.append(values)
    if not rows:
        raise InputError(f"{path}: no samples")
    return np.asarray(rows, dtype=np.float32)


def _read_wav(path: Path, spec: Any) -> Any:
    import numpy as np

    from edgekd.errors import InputError

    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        from edgekd.data.readers import wav_failure

        why = wav_failure(path, exc)
        raise InputError(f"{path}: not a readable PCM .wav file ({why})") from exc
    if not frames:
        raise InputError(f"{path}: the .wav file holds no samples (a header only)")
    if width != 2:
        raise InputError(f"{path}: {8 * width}-bit samples; only 16-bit PCM .wav is supported")
    if spec.kind == "image":
        raise InputError(f"{path}: a .wav recording, but {takes(spec)}")
    if abs(rate - spec.rate_hz) > 1e-6 * spec.rate_hz:
        # Resampling is only the fix for audio: a time-series model fed a wav of another rate
        # was given the wrong kind of file.
        fix = "resample it first" if spec.kind == "audio" else takes(spec)
        raise InputError(f"{path}: recorded at {rate} Hz but the model expects "
                         f"{spec.rate_hz:g} Hz; {fix}")
    if channels != spec.channels:
        raise InputError(f"{path}: {channels} channel(s), the model expects {spec.channels}; "
                         f"{takes(spec)}")
    return np.frombuffer(frames, dtype="<i2").reshape(-1, channels)


def _offline_events(model: Any, samples: Any) -> list[tuple[float, str, float]]:
    """Windows at 0, hop, 2*hop ... classified by `predict` (the batch path)."""
    import numpy as np

    from edgekd.errors import InputError

    spec = model.spec
    if len(samples) < spec.window:
        raise InputError(f"the recording has {len(samples)} samples, fewer than one window "
                         f"({spec.window} samples = {spec.window / spec.rate_hz:g} s)")
    samples = np.ascontiguousarray(samples)
    m = (len(samples) - spec.window) // spec.hop + 1
    step = samples.strides[0]
    windows = np.lib.stride_tricks.as_strided(
        samples, shape=(m, spec.window, *samples.shape[1:]),
        strides=(spec.hop * step, *samples.strides), writeable=False)
    out = []
    for start in range(0, m, 1024):  # bounded memory for long recordings
        pred = model.predict(windows[start : start + 1024])
        for j, (label, score) in enumerate(zip(pred.labels, pred.scores, strict=True)):
            end = (start + j) * spec.hop + spec.window
            out.append((end / spec.rate_hz, label, float(score)))
    return out


# -- info ---------------------------------------------------------------------------------------
def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _info(bundle: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    m = bundle.manifest
    console = Console()  # wraps at the terminal's width (80 columns in a pipe)
    model, mod, target = m.get("model", {}), m["modality"], m.get("target", {})
    checked = ("[green]all sha256 verified[/green]" if bundle.verified
               else "[yellow]files not verified[/yellow]")
    signed = (f"signed by trusted key {bundle.signer}" if bundle.signer
              else "signature not checked")
    console.print(f"[bold]{bundle.root}[/bold]")
    console.print(f"schema {m['schema_version']}  digest {bundle.digest[:16]}  {checked}")
    console.print(signed)
    console.print(f"model: {model.get('name', '?')}  arch {model.get('arch', '?')}  "
                  f"params {model.get('params', '?')}")
    console.print(f"labels ({len(m['labels'])}): {', '.join(m['labels'])}")
    if mod.get("kind") == "image":
        shape = f"{mod.get('size')} x {mod.get('channels')} channels"
    else:
        rate = float(mod.get("rate_hz", 0)) or float("nan")
        shape = (f"{mod.get('rate_hz')} Hz, {mod.get('channels')} channel(s)\n  window "
                 f"{mod.get('window')} samples ({mod.get('window', 0) / rate:.2f} s), hop "
                 f"{mod.get('hop')} ({mod.get('hop', 0) / rate:.2f} s)")
    console.print(f"modality: {mod.get('name')} ({mod.get('kind')}), {shape}")
    io = m["io"]
    console.print(f"io: {io['input']['name']} {io['input']['shape']} -> "
                  f"{io['output']['name']} {io['output']['shape']}")
    if target:
        console.print(f"target: {target.get('name')} "
                      f"({target.get('backend')}, {target.get('precision')})")
    table = Table(title="artifacts")
    for col in ("path", "format", "precision", "size"):
        table.add_column(col, justify="right" if col == "size" else "left", no_wrap=True)
    table.add_column("notes", overflow="fold")
    for a in bundle.artifacts:
        notes = ", ".join(_note(k, v) for k, v in {"backend": a.backend, **a.extra}.items() if v)
        table.add_row(a.path, a.format, a.precision, _size(a.size), notes)
    for kind in ("golden", "eval"):
        if m.get(kind):
            table.add_row(m[kind]["path"], "npz", "-", _size(m[kind]["size"]), kind)
    if m.get("eval_beside"):
        from edgekd.runtime.bundle import beside_eval_path

        beside = beside_eval_path(bundle.root)
        table.add_row(f"../{beside.name}", "npz", "-", _size(m["eval_beside"]["size"]),
                      "eval, beside the bundle" + ("" if beside.is_file() else " (missing)"))
    console.print(table)
    if m.get("accuracy"):
        acc = Table(title="accuracy (held-out data)")
        metrics = sorted({k for v in m["accuracy"].values() if isinstance(v, dict) for k in v})
        acc.add_column("model")
        for k in metrics:
            acc.add_column(k, justify="right")
        for name, values in m["accuracy"].items():
            values = values if isinstance(values, dict) else {}
            acc.add_row(name, *[f"{values[k]:.4f}" if isinstance(values.get(k), float)
                                else str(values.get(k, "-")) for k in metrics])
        console.print(acc)
    for section in ("teacher", "calibration", "tensorrt_build", "provenance"):
        if m.get(section):
            console.print(f"{section}: " + ", ".join(_note(k, v) for k, v in m[section].items()))


def _note(key: str, value: Any) -> str:
    """`key=value` short enough for an 80-column table cell: hashes cut to 12 hex digits, floats
    to 2 significant digits, the OpenVINO int8 evidence as a layer count."""
    if key == "int8_check" and isinstance(value, dict) and "int8_layers" in value:
        return f"int8 layers {value['int8_layers']}/{value.get('weighted_layers', '?')}"
    if isinstance(value, float):
        return f"{key}={value:.2g}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"{key}={value[:12]}…"
    return f"{key}={value}"


def _same_threads_for_torch(has_torch: bool, threads: int) -> Any:
    """The PyTorch row gets the runtime rows' thread budget; nothing to set without torch."""
    if not has_torch:
        return contextlib.nullcontext()
    from edgekd.reference import torch_threads

    return torch_threads(threads)


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def info(
        bundle: BundleArg,
        as_json: Annotated[bool, typer.Option("--json", help="Print the manifest.")] = False,
        verify: Annotated[bool, typer.Option(help="Check every file's sha256 first.")] = True,
        trusted_key: TrustedKeyOpt = None,
        min_version: MinVersionOpt = None,
        allow_rollback: AllowRollbackOpt = False,
    ) -> None:
        """Summarise a bundle: labels, modality, artifacts, accuracy, target, provenance."""
        from edgekd.runtime import read_bundle

        b = read_bundle(bundle, verify=verify, trusted_keys=trusted_key or None,
                        min_version=min_version, allow_rollback=allow_rollback)
        if as_json:
            typer.echo(json.dumps(b.manifest, indent=2))
        else:
            _info(b)

    @app.command()
    @user_errors
    def run(
        bundle: BundleArg,
        input: InputOpt,
        stream: StreamOpt = False,
        chunk: Annotated[int, typer.Option(help="Samples per push with --stream.")] = 32,
        backend: BackendOpt = "auto",
        precision: PrecisionOpt = None,
        threads: ThreadsOpt = None,
        trusted_key: TrustedKeyOpt = None,
        min_version: MinVersionOpt = None,
        allow_rollback: AllowRollbackOpt = False,
    ) -> None:
        """Classify a recording: one line per window (end time, label, score)."""
        import numpy as np

        from edgekd.errors import InputError
        from edgekd.runtime import load

        model = load(bundle, backend=backend, precision=precision, threads=threads,
                     trusted_keys=trusted_key or None, min_version=min_version,
                     allow_rollback=allow_rollback)
        samples = read_samples(input, model.spec)
        for note in (model.selection or {}).get("notes", []):  # why auto kept what it kept
            typer.echo(f"# note: {note}", err=True)
        typer.echo(f"# {model.backend}/{model.precision}, {len(samples)} samples from {input}",
                   err=True)
        if model.spec.kind == "image":
            pred = model.predict(samples)
            for i, (label, score) in enumerate(zip(np.atleast_1d(pred.labels),
                                                   np.atleast_1d(pred.scores), strict=True)):
                typer.echo(f"{i:6d}  {label}  {float(score):.4f}")
            return
        if stream:
            if chunk < 1:
                raise InputError(f"--chunk must be >= 1 sample, got {chunk}")
            live = model.stream()
            count = 0
            for i in range(0, len(samples), chunk):
                for ev in live.push(samples[i : i + chunk]):  # printed as they happen
                    typer.echo(f"{ev.t_end_s:10.3f} s  {ev.label}  {ev.score:.4f}")
                    count += 1
            if count == 0:
                raise InputError(f"{input}: the recording has {len(samples)} samples, fewer "
                                 f"than one window ({model.spec.window})")
        else:
            try:
                events = _offline_events(model, samples)
            except InputError as exc:
                raise InputError(f"{input}: {exc}") from None
            for t, label, score in events:
                typer.echo(f"{t:10.3f} s  {label}  {score:.4f}")

    @app.command()
    @user_errors
    def bench(
        bundle: BundleArg,
        backend: Annotated[str, typer.Option(help="all, or backends, comma-separated.")] = "all",
        precision: Annotated[str, typer.Option(help="all, or some, comma-separated.")] = "all",
        batch: BatchOpt = "1,32",
        duration: DurationOpt = None,
        iterations: IterationsOpt = None,
        warmup: Annotated[int, typer.Option(help="Untimed calls before each figure.")] = 10,
        threads: ThreadsOpt = None,
        json_out: JsonOpt = None,
        plot_out: PlotOpt = None,
        run_dir: RunOpt = None,
        cold: Annotated[bool, typer.Option(
            help="Time to first prediction + its peak RSS, per row, in a fresh process.")] = True,
        trusted_key: TrustedKeyOpt = None,
        min_version: MinVersionOpt = None,
        allow_rollback: AllowRollbackOpt = False,
    ) -> None:
        """Latency, throughput, streaming cost, memory, cold start and accuracy per backend x
        precision, and which one `--precision auto` would choose."""
        from rich.console import Console

        from edgekd.commands import require_extra
        from edgekd.report import plots_unavailable
        from edgekd.runtime import read_bundle
        from edgekd.runtime.bench import plot, render_table, run_benchmark, write_json

        # a pipe or file gets the full table rather than rich's 80-column default
        console = Console() if sys.stdout.isatty() else Console(width=200)
        no_plot = plots_unavailable() if plot_out is not None else None
        if no_plot:
            console.print(f"note: --plot {plot_out}: {no_plot}", style="yellow", markup=False)
            plot_out = None
        b = read_bundle(bundle, verify=False, trusted_keys=trusted_key or None,
                        min_version=min_version, allow_rollback=allow_rollback)
        reference = None
        if run_dir is not None:  # only when asked for: torch being importable is no reason
            require_extra("train", "the PyTorch reference row (--run)")
            from edgekd.errors import ConfigError
            from edgekd.reference import eager_reference

            if not run_dir.is_dir():
                raise ConfigError(f"--run {run_dir}: no such run folder")
            reference = eager_reference(run_dir, b.labels)
        with _same_threads_for_torch(reference is not None, threads or 1):
            report = run_benchmark(
                b.root, backends=_csv_list(backend, "backend"),
                precisions=_csv_list(precision, "precision"),
                batch_sizes=_int_list(batch, "batch"), duration_s=duration,
                iterations=iterations, warmup=warmup, threads=threads, reference=reference,
                progress=lambda name: console.print(f"[dim]measuring {name}...[/dim]"),
                trusted_keys=trusted_key or None, min_version=min_version,
                allow_rollback=allow_rollback, cold=cold,
            )
        console.print(render_table(report))
        for s in report["skipped"]:
            what = s["backend"] + (f"/{s['precision']}" if "precision" in s else "")
            console.print(f"[yellow]skipped {what}: {s['reason']}[/yellow]")
        for note in report["notes"]:
            console.print(f"[yellow]note: {note}[/yellow]")
        rec = report["recommendation"]
        if rec is None:
            console.print("recommended (--precision auto): none within the accuracy budget")
        else:
            console.print(f"recommended (--precision auto): {rec['backend']}/{rec['precision']}"
                          f"  p50 {rec['p50_ms']:.3f} ms  ({rec['why']})")
        if json_out is not None:
            write_json(report, json_out)
            console.print(f"report: {json_out}")
        if plot_out is not None:
            plot(report, plot_out)
            console.print(f"plot: {plot_out}")
