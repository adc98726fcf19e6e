"""Bundle reader and writer: schema, hashes, atomic publish, and every way a bundle can be bad."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from runtime_synth import IO, SPEC, leftovers, write_minimal

from edgekd.errors import BundleError, ExportError
from edgekd.export.bundle import BundleWriter
from edgekd.runtime import load, read_bundle
from edgekd.runtime.bundle import SCHEMA_VERSION, check_relpath, sha256_file
from edgekd.runtime.integrity import digest_entry


def test_written_manifest_reads_back_with_hand_checked_hashes(tmp_path: Path) -> None:
    out = tmp_path / "m.edgekd"
    manifest = write_minimal(out)
    b = read_bundle(out)
    assert b.manifest == manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["format"] == "edgekd-bundle"
    (a,) = b.artifacts
    assert (a.path, a.format, a.precision, a.size) == ("model.fp32.onnx", "onnx", "fp32", 10)
    assert a.sha256 == hashlib.sha256(b"onnx-bytes").hexdigest()
    assert manifest["golden"]["sha256"] == sha256_file(out / "golden.npz")
    assert manifest["provenance"]["git_commit"] == "abc" and manifest["provenance"]["created"]
    assert b.labels == ["a", "b"] and b.read_data("eval") is None
    assert leftovers(tmp_path) == []  # no staging folder left behind


def test_real_bundle_lists_every_artifact(bundle_path: Path) -> None:
    b = read_bundle(bundle_path)
    listed = {a.path for a in b.artifacts}
    assert listed == {"model.fp32.onnx", "model.int8.qdq.onnx", "openvino/model.fp32.xml",
                      "openvino/model.fp32.bin", "openvino/model.int8.xml",
                      "openvino/model.int8.bin"}
    assert b.find("openvino_xml", "int8").path == "openvino/model.int8.xml"
    assert b.find("onnx", "int8").extra == {"quantizer": "ort-ptq-minmax"}
    assert b.find("onnx", "bf16") is None


@pytest.mark.parametrize(("victim", "backend"), [
    ("model.int8.qdq.onnx", "onnxruntime"), ("openvino/model.int8.bin", "openvino"),
    ("openvino/model.int8.xml", "openvino"), ("eval.npz", None),
])
def test_one_changed_byte_is_caught_and_named(bundle_copy: Path, victim: str,
                                              backend: str | None) -> None:
    path = bundle_copy / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{victim}: sha256 does not match"):
        read_bundle(bundle_copy)
    if backend is not None:  # nothing is loaded from a tampered file...
        with pytest.raises(BundleError, match=rf"{victim}: sha256 does not match"):
            load(bundle_copy, backend=backend, precision="int8")
    # ...and a load hashes only what it opens: the FP32 model still loads
    assert load(bundle_copy, backend="onnxruntime", precision="fp32").precision == "fp32"


def test_truncated_and_missing_files(bundle_copy: Path) -> None:
    (bundle_copy / "golden.npz").write_bytes(b"short")
    with pytest.raises(BundleError, match=r"golden.npz: size 5 bytes, manifest says"):
        read_bundle(bundle_copy)
    (bundle_copy / "golden.npz").unlink()
    with pytest.raises(BundleError, match=r"golden.npz: listed in the manifest but missing"):
        read_bundle(bundle_copy)
    # without verification the schema still loads (e.g. for `info` on a damaged copy)
    assert read_bundle(bundle_copy, verify=False).verified is False


def _edit_manifest(bundle: Path, **changes: object) -> None:
    """Edit the manifest and re-digest it, as a careless tool would: the schema checks remain."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    manifest["digest"] = digest_entry(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema_version": 1}, r"unknown schema_version 1; this edgekd reads 2, 3"),
        ({"format": "zip"}, r"format is 'zip', expected 'edgekd-bundle'"),
        ({"labels": []}, r"labels must be a non-empty list of strings"),
        ({"io": {"input": {"name": "input"}}}, r"io.input must be an object with a name and"),
        ({"artifacts": [{"path": "../../etc/passwd", "format": "onnx", "precision": "fp32",
                         "sha256": "0", "size": 1}]}, r"must be relative to the bundle"),
        ({"artifacts": [{"path": "m.onnx", "format": "pickle", "precision": "fp32",
                         "sha256": "0", "size": 1}]}, r"m.onnx: unknown format 'pickle'"),
        ({"artifacts": [{"path": "m.onnx", "format": "onnx", "precision": "fp32"}]},
         r"artifacts\[0\] lacks sha256, size"),
    ],
)
def test_schema_violations(bundle_copy: Path, changes: dict, message: str) -> None:
    _edit_manifest(bundle_copy, **changes)
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle_copy)


@pytest.mark.parametrize(("changes", "message"), [
    ({"labels": ["a", "b"]}, r"the model outputs 4 classes but the manifest lists 2 labels"),
    ({"modality": {"name": "nose", "kind": "smell"}}, r"bad modality section: .*'smell'"),
])
def test_model_sections_are_checked_before_compiling(bundle_copy: Path, changes: dict,
                                                     message: str) -> None:
    _edit_manifest(bundle_copy, **changes)
    with pytest.raises(BundleError, match=message):
        load(bundle_copy, backend="onnxruntime")


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle folder not found"):
        read_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="holds no manifest.json"):
        read_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle(tmp_path)


@pytest.mark.parametrize("rel", ["/abs", "a/../b", "./a", "a//b", "a\\b", "manifest.json", ""])
def test_relpath_rules(rel: str) -> None:
    with pytest.raises(BundleError):
        check_relpath(rel)


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "m.edgekd"
    write_minimal(out)
    with pytest.raises(ExportError, match="exists; pass force"):
        write_minimal(out)


def test_force_replaces_and_failure_keeps_old_bundle(tmp_path: Path) -> None:
    out = tmp_path / "m.edgekd"
    write_minimal(out, payload=b"old")
    with pytest.raises(RuntimeError, match="boom"), BundleWriter(out, force=True) as w:
        w.add_file("model.fp32.onnx", b"new", format="onnx", precision="fp32")
        raise RuntimeError("boom")
    assert read_bundle(out).artifacts[0].size == 3
    assert (out / "model.fp32.onnx").read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    write_minimal(out, payload=b"newer", force=True)
    assert (out / "model.fp32.onnx").read_bytes() == b"newer"
    assert leftovers(tmp_path) == []


def test_incomplete_or_invalid_content_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "m.edgekd"
    with pytest.raises(ExportError, match=r"section\(s\) modality, io never set"), \
            BundleWriter(out) as w:
        w.add_file("model.fp32.onnx", b"x", format="onnx", precision="fp32")
        w.set("labels", ["a"])
    assert not out.exists() and leftovers(tmp_path) == []
    with BundleWriter(out) as w:
        with pytest.raises(ExportError, match="has dtype object"):
            w.add_npz("eval", x=np.array([object()]))
        with pytest.raises(ExportError, match="written by BundleWriter itself"):
            w.set("artifacts", [])
        with pytest.raises(ExportError, match="not plain JSON"):
            w.set("accuracy", {"fp32": float("nan")})
        with pytest.raises(ExportError, match="must be relative"):
            w.add_file("../escape.onnx", b"x", format="onnx", precision="fp32")
        with pytest.raises(ExportError, match="unknown precision 'int4'"):
            w.add_file("m.onnx", b"x", format="onnx", precision="int4")
        w.add_file("m.onnx", b"x", format="onnx", precision="fp32")
        with pytest.raises(ExportError, match="added to the bundle twice"):
            w.add_file("m.onnx", b"y", format="onnx", precision="fp32")
        w.set("labels", ["a", "b"])
        w.set("modality", SPEC)
        w.set("io", IO)
    assert [a.path for a in read_bundle(out).artifacts] == ["m.onnx"]


def test_writer_options_reach_writers_deep_inside_an_export(tmp_path: Path) -> None:
    """`export_run(with_eval=..., sign_key=...)` sets them for the writers it creates."""
    from edgekd.export.bundle import writer_options

    key = tmp_path / "k.key"
    with writer_options(with_eval=True, sign_key=key):
        inside = BundleWriter(tmp_path / "a.edgekd")
        explicit = BundleWriter(tmp_path / "b.edgekd", with_eval=False)  # an argument wins
    outside = BundleWriter(tmp_path / "c.edgekd")
    assert (inside.with_eval, inside.sign_key) == (True, key)
    assert (explicit.with_eval, explicit.sign_key) == (False, key)
    assert (outside.with_eval, outside.sign_key) == (False, None)


def test_eval_inside_or_beside(tmp_path: Path) -> None:
    x, y = np.zeros((3, 128, 3), np.float32), np.arange(3, dtype=np.int64)
    for with_eval in (True, False):
        out = tmp_path / f"{with_eval}.edgekd"
        with BundleWriter(out, with_eval=with_eval) as w:
            w.add_file("model.fp32.onnx", b"m", format="onnx", precision="fp32")
            w.add_npz("eval", x=x, y=y)
            w.set("labels", ["a", "b"])
            w.set("modality", SPEC)
            w.set("io", IO)
        b = read_bundle(out)
        beside = tmp_path / f"{with_eval}.eval.npz"
        if with_eval:
            assert b.read_data("eval") == (out / "eval.npz").read_bytes()
            assert not beside.exists()
        else:
            assert b.read_data("eval") is None and b.beside_eval() == (beside.read_bytes(), None)
            assert b.manifest["eval_beside"]["size"] == beside.stat().st_size
    assert leftovers(tmp_path) == []
