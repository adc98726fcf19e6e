"""Held-out windows beside the bundle, cold start and the recommendation of `bench`,
`precision="auto"` with its cache, and what a load hashes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import runtime_synth as synth

import edgekd.runtime.autoselect as autoselect
import edgekd.runtime.bundle as bundle_mod
import edgekd.runtime.probe as probe_mod
from edgekd.errors import BackendUnavailable
from edgekd.runtime import load, read_bundle
from edgekd.runtime.backends import Engine, backend_module
from edgekd.runtime.bench import run_benchmark
from edgekd.runtime.cache_seal import SIDECAR_SUFFIX, sidecar


def _entries(cache: Path) -> list[Path]:
    """The cached auto choices (not their seals)."""
    return sorted(f for f in (cache / "auto").iterdir() if not f.name.endswith(SIDECAR_SUFFIX))


@pytest.fixture(scope="module")
def beside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle exported the default way: eval.npz beside it as synth.eval.npz."""
    root = tmp_path_factory.mktemp("beside")
    return synth.build_bundle(root / "synth.edgekd", root / "work", openvino_ir=False,
                              with_eval=False)


def _bench(bundle: Path, cache: Path, **kw: object) -> dict:
    return run_benchmark(bundle, backends=["onnxruntime"], precisions=["all"], batch_sizes=[1],
                         iterations=5, warmup=1, cache_dir=cache, **kw)


def test_eval_goes_beside_and_is_tied_to_the_bundle(beside: Path, cache_root: Path) -> None:
    eval_file = beside.parent / "synth.eval.npz"
    manifest = read_bundle(beside).manifest
    assert "eval" not in manifest and not (beside / "eval.npz").exists()
    assert manifest["eval_beside"]["sha256"] == bundle_mod.sha256_file(eval_file)
    report = _bench(beside, cache_root, cold=False)
    assert report["notes"] == []
    assert {r["accuracy"]["n"] for r in report["rows"]} == {96}


def test_bench_without_or_with_foreign_eval_omits_accuracy(beside: Path, tmp_path: Path,
                                                           cache_root: Path) -> None:
    copy = tmp_path / "synth.edgekd"
    shutil.copytree(beside, copy)
    report = _bench(copy, cache_root, cold=False)  # no synth.eval.npz beside the copy
    assert all(r["accuracy"] is None for r in report["rows"])
    assert report["notes"] == [f"no eval data ({tmp_path / 'synth.eval.npz'} not found): "
                               "accuracy omitted"]
    x, y = synth.make_windows(8, seed=9)
    np.savez(tmp_path / "synth.eval.npz", x=x, y=y)  # someone else's windows
    report = _bench(copy, cache_root, cold=False)
    assert all(r["accuracy"] is None for r in report["rows"])
    assert "synth.eval.npz: size" in report["notes"][0]


def test_bench_cold_start_and_recommendation(bundle_path: Path, cache_root: Path) -> None:
    report = _bench(bundle_path, cache_root)
    for row in report["rows"]:
        cold = row["cold_start"]
        assert cold["torch_loaded"] is False, cold
        assert 0 < cold["ttfp_ms"] < cold["process_ms"] and cold["peak_rss_mb"] > 10
        # its own peak, not this (torch-laden) process's, which ru_maxrss would report
        assert cold["peak_rss_mb"] < row["memory"]["peak_rss_mb"]
    rec = report["recommendation"]
    # int8 drops 0 points on the synthetic set (budget 5): the faster of fp32 / int8 wins
    fastest = min(report["rows"], key=lambda r: r["latency"]["p50"])
    assert (rec["backend"], rec["precision"]) == ("onnxruntime", fastest["precision"])


def test_budget_from_the_manifest() -> None:
    manifest = {"accuracy": {"torch_fp32": {"accuracy": 0.90}, "int8_openvino": {"accuracy": 0.885},
                             "int8_onnxruntime": {"accuracy": 0.87}},
                "export": {"options": {"max_drop": 1.5}}}
    assert autoselect.budget(manifest, "openvino", "int8") == (
        True, "int8_openvino drops +1.50 points (limit 1.5)")
    assert autoselect.budget(manifest, "onnxruntime", "int8")[0] is False
    assert autoselect.budget(manifest, "openvino", "bf16") == (
        False, "accuracy of bf16_openvino not measured at export")
    assert autoselect.budget(manifest, "tensorrt", "fp32")[0] is True
    assert autoselect.budget({"accuracy": {"torch_fp32": {"accuracy": "x"}}}, "openvino",
                             "int8")[0] is False  # untrusted types are no number


def test_precision_auto_measures_once_then_uses_the_cache(bundle_path: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    model = load(bundle_path, backend="onnxruntime", precision="auto", cache_dir=cache)
    sel = model.selection
    assert sel["source"] == "measured"
    timed = [c for c in sel["candidates"] if "p50_ms" in c]
    assert {c["precision"] for c in timed} == {"int8", "fp32"}
    assert model.precision == min(timed, key=lambda c: c["p50_ms"])["precision"]
    (cached_file,) = _entries(cache)
    entry = json.loads(cached_file.read_text())
    assert entry["bundle_digest"] == model.bundle.digest and entry["precision"] == model.precision
    assert json.loads(sidecar(cached_file).read_text())["kind"] == autoselect.AUTO_KIND

    def no_timing(*_a: object) -> float:
        raise AssertionError("a cached choice must not be measured again")

    monkeypatch.setattr(autoselect, "_median_ms", no_timing)
    again = load(bundle_path, backend="onnxruntime", precision="auto", cache_dir=cache)
    assert again.selection["source"] == "cache" and again.precision == model.precision
    explicit = load(bundle_path, backend="onnxruntime", precision="fp32", cache_dir=cache)
    assert explicit.precision == "fp32" and explicit.selection is None
    monkeypatch.undo()
    both = load(bundle_path, backend="auto", precision="auto", cache_dir=cache)
    assert both.selection["source"] == "measured"  # other competitors: its own cache entry
    assert {c["backend"] for c in both.selection["candidates"]} == {"openvino", "onnxruntime"}
    assert len(_entries(cache)) == 2


def test_precision_auto_with_nothing_in_budget_is_refused(bundle_path: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoselect, "budget", lambda m, b, p: (False, f"{p} over the limit"))
    with pytest.raises(BackendUnavailable, match=r"within the accuracy budget on onnxruntime "
                       r"\(onnxruntime/int8: int8 over the limit; onnxruntime/fp32: fp32"):
        load(bundle_path, backend="onnxruntime", precision="auto", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "auto").exists()  # nothing cached


def test_load_hashes_only_what_it_opens(bundle_path: Path, cache_root: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[str] = []
    real = bundle_mod.BundleDir.checked

    def counting(self: bundle_mod.BundleDir, rel: str, sha256: str, size: int) -> bytes:
        hashed.append(Path(rel).name)
        return real(self, rel, sha256, size)

    monkeypatch.setattr(bundle_mod.BundleDir, "checked", counting)
    load(bundle_path, backend="openvino", precision="int8", cache_dir=cache_root)
    assert sorted(hashed) == ["golden.npz", "model.int8.bin", "model.int8.xml"]
    hashed.clear()
    run_benchmark(bundle_path, backends=["openvino", "onnxruntime"], precisions=["int8"],
                  batch_sizes=[1], iterations=3, warmup=1, cache_dir=cache_root, cold=False)
    # one read for the whole bench: each file hashed once however many rows use it
    assert sorted(hashed) == ["eval.npz", "golden.npz", "model.int8.bin", "model.int8.qdq.onnx",
                              "model.int8.xml"]


def test_auto_backend_skips_the_cuda_probe_without_a_driver(
        bundle_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe_mod, "_cache", None)
    monkeypatch.setattr(probe_mod, "driver_library_present", lambda: False)

    def no_probe(timeout_s: float) -> dict:
        raise AssertionError("the probe subprocess must not start without a driver library")

    monkeypatch.setattr(probe_mod, "_run_probe", no_probe)
    assert load(bundle_path, backend="auto", cache_dir=cache_root).backend == "openvino"


def test_auto_choice_edited_by_hand_or_copied_is_measured_again(
        bundle_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load(bundle_path, backend="onnxruntime", precision="auto", cache_dir=cache)
    (entry,) = _entries(cache)
    other = "fp32" if first.precision == "int8" else "int8"
    record = json.loads(entry.read_text())
    entry.write_text(json.dumps({**record, "precision": other}))  # "choose mine"
    again = load(bundle_path, backend="onnxruntime", precision="auto", cache_dir=cache)
    assert again.selection["source"] == "measured"
    # what the cache held before seals: a plain JSON anyone could write
    sidecar(entry).unlink()
    entry.write_text(json.dumps({**record, "precision": other}))
    assert load(bundle_path, backend="onnxruntime", precision="auto",
                cache_dir=cache).selection["source"] == "measured"
    # another bundle's sealed entry copied to this bundle's name is not this bundle's choice
    b = read_bundle(bundle_path, verify=False)
    twin = dataclasses.replace(b, digest="0" * 64)
    open_one = lambda name, prec: backend_module(name).open(  # noqa: E731
        b, prec, threads=None, cache_dir=cache)
    _, sel = autoselect.choose(twin, "onnxruntime", None, cache, open_one)
    assert sel["source"] == "measured"
    (mine, theirs) = (Path(sel["cache_file"]), entry)
    mine.write_bytes(theirs.read_bytes())
    sidecar(mine).write_bytes(sidecar(theirs).read_bytes())
    assert autoselect.choose(twin, "onnxruntime", None, cache, open_one)[1]["source"] == "measured"
    assert autoselect.choose(b, "onnxruntime", None, cache, open_one)[1]["source"] == "cache"


def _stand_in_tensorrt(bundle: object, cache: Path, monkeypatch: pytest.MonkeyPatch
                       ) -> tuple[list[tuple[str, str]], autoselect.OpenEngine]:
    """TensorRT "on a GPU" whose engines are stand-ins over the FP32 ONNX on ONNX Runtime:
    int8 and fp32 give FP32's logits, fp16 gives garbage (the negated logits: always the least
    likely class) and is the fastest. Returns the engines opened and the opener."""
    trt = backend_module("tensorrt")
    monkeypatch.setattr(trt, "check_available", lambda: None)
    monkeypatch.setattr(trt, "precisions", lambda b: ["int8", "fp16", "fp32"])
    monkeypatch.setattr(autoselect, "probe_cuda", lambda: {"gpus": [{"name": "Orin"}]})
    speed = {"int8": 0.5, "fp16": 0.1, "fp32": 1.0}
    monkeypatch.setattr(autoselect, "_median_ms", lambda engine, f: speed[engine.precision])
    reference = backend_module("onnxruntime").open(bundle, "fp32", threads=1, cache_dir=cache)
    opened: list[tuple[str, str]] = []

    def open_engine(name: str, precision: str) -> Engine:
        assert name == "tensorrt"
        opened.append((name, precision))

        def new_runner():  # type: ignore[no-untyped-def]
            run = reference.new_runner()
            return (lambda f: -run(f)) if precision == "fp16" else run

        return Engine("tensorrt", precision, f"stand-in {precision}", new_runner,
                      reference.max_batch)

    return opened, open_engine


def test_auto_measures_engines_the_export_could_not_score(
        bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = read_bundle(bundle_path)
    assert not any(k.endswith("_tensorrt") for k in b.manifest["accuracy"])  # no GPU at export
    cache = tmp_path / "cache"
    opened, open_engine = _stand_in_tensorrt(b, cache, monkeypatch)
    engine, sel = autoselect.choose(b, "tensorrt", None, cache, open_engine)
    assert (engine.backend, engine.precision) == ("tensorrt", "int8")
    rows = {c["precision"]: c for c in sel["candidates"]}
    ref = b.manifest["accuracy"]["fp32"]["accuracy"]  # the synthetic bundle's FP32 row
    assert rows["int8"]["within_budget"] is True
    assert rows["int8"]["measured"]["eval"] == {"accuracy": ref, "drop_points": 0.0, "n": 96}
    assert rows["int8"]["measured"]["golden"]["top1_agreement"] == 1.0
    assert rows["int8"]["why"] == ("int8_tensorrt measured here: drops +0.00 points on 96 eval "
                                   "windows (limit 5)")
    garbage = rows["fp16"]
    assert garbage["within_budget"] is False and "p50_ms" not in garbage  # fastest, refused
    assert garbage["measured"]["golden"]["top1_agreement"] == 0.0
    assert garbage["measured"]["eval"]["drop_points"] > 5
    assert rows["fp32"] == {"backend": "tensorrt", "precision": "fp32", "within_budget": True,
                            "why": "fp32 is the reference", "p50_ms": 1.0}
    # the measured choice is cached sealed: the next load neither opens nor measures
    opened.clear()
    assert autoselect.choose(b, "tensorrt", None, cache, open_engine)[1]["source"] == "cache"
    assert opened == [("tensorrt", "int8")]


TOO_FEW = ("{key} not scored at export, and only {have} windows here to measure it on: fewer "
           "than the 64 needed to accept it, so a safer precision is kept (export with labelled "
           "eval windows, inside or beside the bundle, to let it compete)")


def test_auto_with_only_the_golden_windows_keeps_the_safer_precision(
        bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 golden windows agreeing with FP32 are no evidence that int8 is within budget."""
    full = read_bundle(bundle_path)
    manifest = {k: v for k, v in full.manifest.items() if k not in ("eval", "eval_beside")}
    b = dataclasses.replace(full, manifest=manifest)
    cache = tmp_path / "cache"
    _, open_engine = _stand_in_tensorrt(b, cache, monkeypatch)
    engine, sel = autoselect.choose(b, "tensorrt", None, cache, open_engine)
    assert engine.precision == "fp32"  # int8 is faster and agrees on all 8, yet not chosen
    assert autoselect.MIN_MEASURE_WINDOWS == 64
    rows = {c["precision"]: c for c in sel["candidates"]}
    assert set(rows["int8"]["measured"]) == {"golden"}
    assert rows["int8"]["measured"]["golden"]["top1_agreement"] == 1.0
    assert rows["int8"]["within_budget"] is False and "p50_ms" not in rows["int8"]
    assert rows["int8"]["why"] == TOO_FEW.format(key="int8_tensorrt", have="8 golden")
    assert rows["fp16"]["within_budget"] is False
    assert sel["notes"] == [f"precision auto kept tensorrt/fp32, not tensorrt/{p}: "
                            f"{rows[p]['why']}" for p in ("int8", "fp16")]
    # the notes come back with the cached choice
    cached = autoselect.choose(b, "tensorrt", None, cache, open_engine)[1]
    assert cached["source"] == "cache" and cached["notes"] == sel["notes"]


def test_auto_with_unlabelled_eval_windows_measures_on_the_golden_ones(
        bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = read_bundle(bundle_path)
    x = bundle_mod.load_npz(b.read_data("eval"))["x"]
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=x)  # windows without "y": no accuracy, not a KeyError
    read_data = bundle_mod.Bundle.read_data
    monkeypatch.setattr(bundle_mod.Bundle, "read_data", lambda self, kind: (
        unlabelled.read_bytes() if kind == "eval" else read_data(self, kind)))
    _, open_engine = _stand_in_tensorrt(b, tmp_path / "cache", monkeypatch)
    engine, sel = autoselect.choose(b, "tensorrt", None, tmp_path / "cache", open_engine)
    assert engine.precision == "fp32"  # the golden windows alone are too few to accept int8
    rows = {c["precision"]: c for c in sel["candidates"]}
    assert set(rows["int8"]["measured"]) == {"golden"}
    assert rows["int8"]["why"] == TOO_FEW.format(key="int8_tensorrt", have="8 golden")


@pytest.mark.parametrize("n", [63, 64])
def test_auto_needs_64_eval_windows_to_accept_a_precision_measured_here(
        bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    b = read_bundle(bundle_path)
    data = bundle_mod.load_npz(b.read_data("eval"))
    few = tmp_path / "few.npz"
    np.savez(few, x=data["x"][:n], y=data["y"][:n])
    read_data = bundle_mod.Bundle.read_data
    monkeypatch.setattr(bundle_mod.Bundle, "read_data", lambda self, kind: (
        few.read_bytes() if kind == "eval" else read_data(self, kind)))
    _, open_engine = _stand_in_tensorrt(b, tmp_path / "cache", monkeypatch)
    engine, sel = autoselect.choose(b, "tensorrt", None, tmp_path / "cache", open_engine)
    rows = {c["precision"]: c for c in sel["candidates"]}
    assert rows["int8"]["measured"]["eval"]["n"] == n
    if n < 64:  # autoselect.MIN_MEASURE_WINDOWS
        assert engine.precision == "fp32"
        assert rows["int8"]["why"] == TOO_FEW.format(key="int8_tensorrt",
                                                     have=f"{n} eval and 8 golden")
        assert len(sel["notes"]) == 2  # int8 and fp16 both passed over
    else:
        assert engine.precision == "int8" and sel["notes"] == []
        assert rows["int8"]["why"].startswith("int8_tensorrt measured here: drops ")
        assert f" points on {n} eval windows (limit 5)" in rows["int8"]["why"]
