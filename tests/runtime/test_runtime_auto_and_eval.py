"""Held-out windows beside the bundle, cold start and the recommendation of `bench`,
`precision="auto"` with its cache, and what a load hashes."""

from __future__ import annotations

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
from edgekd.runtime.bench import run_benchmark


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
    (cached_file,) = (cache / "auto").iterdir()
    entry = json.loads(cached_file.read_text())
    assert entry["bundle_digest"] == model.bundle.digest and entry["precision"] == model.precision

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
    assert len(list((cache / "auto").iterdir())) == 2


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
