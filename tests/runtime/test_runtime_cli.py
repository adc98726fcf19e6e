"""`edgekd info`, `run` and `bench` through typer's CliRunner on the fixture bundle."""

from __future__ import annotations

import json
import re
import shutil
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import runtime_synth as synth
from typer.testing import CliRunner

from edgekd.cli import app
from tests.conftest import run_events

runner = CliRunner()
RECORDING = synth.make_recording(700, 2, np.random.default_rng(1))  # "run" for 14 s: 9 windows


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_info(bundle_path: Path) -> None:
    result = invoke("info", bundle_path)
    assert result.exit_code == 0, result.output
    for text in ("all sha256 verified", "still, walk, run, shake", "accel (timeseries), 50.0 Hz",
                 "window 128 samples (2.56 s)", "openvino/model.int8.xml", "7.5 KiB",
                 "target: cpu (openvino, int8)", "provenance: edgekd=0.1.0",
                 "accuracy (held-out data)", "int8_onnxruntime"):
        assert text in result.output, text
    as_json = json.loads(invoke("info", bundle_path, "--json").output)
    assert as_json["labels"] == synth.LABELS
    fp32 = as_json["accuracy"]["fp32"]
    assert f"{fp32['accuracy']:.4f}" in result.output and fp32["n"] == 96


def test_info_fits_80_columns(bundle_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke("info", bundle_path)
    assert result.exit_code == 0, result.output
    widths = [len(line) for line in result.output.splitlines()]
    assert max(widths) <= 80, result.output


def test_info_on_tampered_bundle_is_a_clean_error(bundle_copy: Path) -> None:
    (bundle_copy / "model.fp32.onnx").write_bytes(b"evil")
    result = invoke("info", bundle_copy)
    assert result.exit_code == 2
    assert "error:" in result.output and "model.fp32.onnx: size 4 bytes" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_run_offline_and_streaming_agree(bundle_path: Path, tmp_path: Path, private_cache: Path,
                                         suffix: str) -> None:
    path = tmp_path / f"rec{suffix}"
    if suffix == ".csv":
        np.savetxt(path, RECORDING, delimiter=",", header="ax,ay,az", comments="")
    else:
        np.save(path, RECORDING)
    offline = invoke("run", bundle_path, "--input", path, "--backend", "onnxruntime")
    live = invoke("run", bundle_path, "--input", path, "--stream", "--chunk", "7",
                  "--backend", "onnxruntime")
    assert offline.exit_code == live.exit_code == 0, offline.output + live.output
    events = run_events(offline.output)
    assert events == run_events(live.output)
    assert [t for t, _ in events] == [pytest.approx((k * 64 + 128) / 50) for k in range(9)]
    assert {label for _, label in events} == {"run"}


def write_wav(path: Path, data: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(data.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.astype("<i2").tobytes())


def test_run_wav_checks_rate_and_channels(bundle_path: Path, tmp_path: Path,
                                          private_cache: Path) -> None:
    counts = np.round(RECORDING * 1000).astype(np.int16)  # integer samples, as a logger writes
    ok = tmp_path / "ok.wav"
    write_wav(ok, counts, 50)
    result = invoke("run", bundle_path, "--input", ok, "--backend", "onnxruntime")
    assert result.exit_code == 0 and len(run_events(result.output)) == 9
    fast = tmp_path / "fast.wav"
    write_wav(fast, counts, 100)
    result = invoke("run", bundle_path, "--input", fast)
    assert result.exit_code == 2
    assert "recorded at 100 Hz but the model expects 50 Hz" in result.output
    mono = tmp_path / "mono.wav"
    write_wav(mono, counts[:, :1], 50)
    result = invoke("run", bundle_path, "--input", mono)
    assert result.exit_code == 2 and "1 channel(s), the model expects 3" in result.output


@pytest.mark.parametrize(("content", "message"), [
    ("ax,ay,az\n0,0,1\n0,x,1\n", r"bad.csv:3: not a number"),
    ("0,0,1\n0,0\n", r"bad.csv:2: 2 columns, earlier rows have 3"),
    ("0,0,1\n" * 10, r"bad.csv: the recording has 10 samples, fewer than one window \(128 "
     r"samples = 2.56 s\)"),
    ("0,nan,1\n" * 200, r"NaN or inf"),
])
def test_run_bad_input_files(bundle_path: Path, tmp_path: Path, private_cache: Path,
                             content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = invoke("run", bundle_path, "--input", path, "--backend", "onnxruntime")
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output


def test_run_csv_with_byte_order_mark_keeps_every_window(bundle_path: Path, tmp_path: Path,
                                                        private_cache: Path) -> None:
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    # 640 = window 128 + 8 hops of 64 samples: 9 windows exactly, so a first row lost as a
    # "header" leaves 8.
    np.savetxt(plain, RECORDING[:640], delimiter=",")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    results = [invoke("run", bundle_path, "--input", p, "--backend", "onnxruntime")
               for p in (plain, bom)]
    assert [r.exit_code for r in results] == [0, 0], results[1].output
    assert len(run_events(results[0].output)) == 9
    assert run_events(results[1].output) == run_events(results[0].output)


@pytest.mark.parametrize(("content", "message"), [
    (b"ax,ay,az\n0,0,1\n\xff\xfe", r"bad.csv: not UTF-8 text \(byte 0xff at "
     r"offset 15\); save the CSV as UTF-8"),
    ("accélération\n".encode("latin-1"), r"bad.csv: not UTF-8 text \(byte 0xe9 at offset 3\)"),
])
def test_run_csv_not_in_utf8_is_one_line(bundle_path: Path, tmp_path: Path, private_cache: Path,
                                         content: bytes, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = invoke("run", bundle_path, "--input", path, "--backend", "onnxruntime")
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output


def test_run_empty_wav_names_the_file_and_the_reason(bundle_path: Path, tmp_path: Path,
                                                     private_cache: Path) -> None:
    header_only = tmp_path / "header_only.wav"
    write_wav(header_only, np.zeros((0, 3)), 50)
    result = invoke("run", bundle_path, "--input", header_only)
    assert result.exit_code == 2, result.output
    assert f"{header_only}: the .wav file holds no samples" in result.output.replace("\n", "")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    result = invoke("run", bundle_path, "--input", empty)
    assert result.exit_code == 2, result.output
    assert "(the file is empty, 0 bytes)" in result.output and "()" not in result.output


def test_bench_plot_without_matplotlib_is_a_note_first(bundle_path: Path, tmp_path: Path,
                                                       private_cache: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = invoke("bench", bundle_path, "--backend", "onnxruntime", "--precision", "int8",
                    "--batch", "1,8", "--iterations", "5", "--warmup", "1", "--no-cold",
                    "--json", out, "--plot", png)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (f"note: --plot {png}: plots skipped: matplotlib is not installed "
                        "(pip install 'edgekd[report]')")
    assert "measuring" in lines[1]  # said before the measurements, not after them
    assert json.loads(out.read_text())["rows"] and not png.exists()


def test_bench_json_and_plot(bundle_path: Path, tmp_path: Path, private_cache: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = invoke("bench", bundle_path, "--backend", "openvino,onnxruntime", "--precision",
                    "int8,fp32", "--batch", "1,8", "--iterations", "20", "--warmup", "2",
                    "--json", out, "--plot", png)
    assert result.exit_code == 0, result.output
    assert "openvino/int8" in result.output and "onnxruntime/fp32" in result.output
    report = json.loads(out.read_text())
    assert set(report) >= {"bundle", "environment", "settings", "rows", "skipped"}
    assert {r["name"] for r in report["rows"]} == {"openvino/int8", "openvino/fp32",
                                                   "onnxruntime/int8", "onnxruntime/fp32"}
    row = report["rows"][0]
    assert set(row) >= {"load_s", "first_inference_ms", "latency", "throughput", "batches",
                        "stream", "memory", "accuracy", "details"}
    lat = row["latency"]
    assert set(lat) >= {"unit", "count", "p50", "p90", "p99", "mean", "stdev", "min", "max",
                        "values"}
    assert lat["count"] == 20 and len(lat["values"]) == 20
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert row["throughput"]["batch"] == 8 and row["throughput"]["value"] > 0
    assert set(row["stream"]) >= {"push_latency", "model_latency_p50_ms", "overhead_us",
                                  "model_in_stream_p50_ms", "overhead_vs_hot_model_us"}
    assert row["stream"]["push_latency"]["p50"] > row["stream"]["model_in_stream_p50_ms"]
    assert row["accuracy"]["accuracy"] > 0.85 and row["accuracy"]["n"] == 96
    assert row["memory"]["peak_rss_mb"] > 0
    env = report["environment"]
    assert env["cores_logical"] >= 1 and env["versions"]["numpy"] == np.__version__
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_options(bundle_path: Path) -> None:
    result = invoke("bench", bundle_path, "--batch", "1,x")
    assert result.exit_code == 2 and "--batch must be comma-separated integers" in result.output
    result = invoke("bench", bundle_path, "--backend", "tensorrt", "--iterations", "2")
    assert result.exit_code == 2 and "TensorRT needs an NVIDIA GPU" in result.output


# -- version floor and rollback protection from the command line --------------------------------
def _command(name: str, bundle: Path, tmp_path: Path) -> list[Any]:
    """`edgekd <name>` on `bundle`, as small as it gets (bench: one row, two timed calls)."""
    if name == "info":
        return ["info", bundle]
    if name == "run":
        np.save(tmp_path / "rec.npy", RECORDING)
        return ["run", bundle, "--input", tmp_path / "rec.npy", "--backend", "onnxruntime"]
    return ["bench", bundle, "--backend", "onnxruntime", "--precision", "fp32", "--batch", "1",
            "--iterations", "2", "--warmup", "0", "--json", tmp_path / "bench.json"]


def _version(bundle: Path) -> int:
    return json.loads((bundle / "manifest.json").read_text())["version"]


@pytest.mark.parametrize("command", ["info", "run", "bench"])
def test_min_version_refuses_an_older_bundle(bundle_path: Path, tmp_path: Path,
                                             private_cache: Path, command: str) -> None:
    version = _version(bundle_path)
    refused = invoke(*_command(command, bundle_path, tmp_path), "--min-version", version + 1)
    assert refused.exit_code == 2
    assert refused.output.splitlines() == [
        f"error: {bundle_path.resolve() / 'manifest.json'}: bundle version {version} is older "
        f"than the minimum {version + 1} required"]
    accepted = invoke(*_command(command, bundle_path, tmp_path), "--min-version", version)
    assert accepted.exit_code == 0, accepted.output


@pytest.mark.parametrize("command", ["info", "run", "bench"])
def test_allow_rollback_loads_an_older_signed_bundle(bundle_path: Path, tmp_path: Path,
                                                     private_cache: Path, command: str) -> None:
    from edgekd.runtime.integrity import digest_entry, keygen, sign_bundle

    private, public = keygen(tmp_path / "k")  # a signer of its own: its own rollback record
    older, newer = tmp_path / "older.edgekd", tmp_path / "newer.edgekd"
    for copy in (older, newer):
        shutil.copytree(bundle_path, copy)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["version"] -= 1
    manifest["digest"] = digest_entry(manifest)
    (older / "manifest.json").write_text(json.dumps(manifest))
    for copy in (older, newer):
        sign_bundle(copy, private)
    key = ["--trusted-key", public]
    assert invoke(*_command(command, newer, tmp_path), *key).exit_code == 0  # recorded
    refused = invoke(*_command(command, older, tmp_path), *key)
    assert refused.exit_code == 2
    [line] = refused.output.splitlines()
    assert line.startswith(f"error: {older.resolve() / 'manifest.json'}: bundle has version "
                           f"{_version(older)}, older than version {_version(newer)} already "
                           "read on this device")
    assert "--allow-rollback" in line
    rolled_back = invoke(*_command(command, older, tmp_path), *key, "--allow-rollback")
    assert rolled_back.exit_code == 0, rolled_back.output
    if command == "bench":  # the cold-start process loads under the same flag
        [row] = json.loads((tmp_path / "bench.json").read_text())["rows"]
        assert "error" not in row["cold_start"], row["cold_start"]


def test_run_auto_says_why_it_kept_the_safer_precision(bundle_path: Path, tmp_path: Path,
                                                       private_cache: Path) -> None:
    """int8 not scored at export and only the 8 golden windows to measure it on: fp32 is kept,
    and `run` prints why."""
    from edgekd.runtime.integrity import digest_entry

    bundle = tmp_path / "golden-only.edgekd"
    shutil.copytree(bundle_path, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for key in ("eval", "eval_beside"):
        manifest.pop(key, None)
    del manifest["accuracy"]["int8_onnxruntime"]
    manifest["digest"] = digest_entry(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    np.save(tmp_path / "rec.npy", RECORDING)
    for _ in ("measured", "cached"):  # the notes are kept with the cached choice
        result = invoke("run", bundle, "--input", tmp_path / "rec.npy", "--backend",
                        "onnxruntime", "--precision", "auto")
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == (
            "# note: precision auto kept onnxruntime/fp32, not onnxruntime/int8: "
            "int8_onnxruntime not scored at export, and only 8 golden windows here to measure "
            "it on: fewer than the 64 needed to accept it, so a safer precision is kept (export "
            "with labelled eval windows, inside or beside the bundle, to let it compete)")
        assert lines[1].startswith("# onnxruntime/fp32, 700 samples")
