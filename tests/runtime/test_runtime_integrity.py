"""Manifest digest and Ed25519 signatures: every way to alter a bundle is refused, and says how."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import BundleError, ConfigError
from edgekd.export.bundle import BundleWriter
from edgekd.runtime import load, read_bundle
from edgekd.runtime.bundle import load_npz
from edgekd.runtime.integrity import (
    SIGNATURE,
    TRUSTED_KEYS_ENV,
    digest_entry,
    keygen,
    sign_bundle,
)

pytest.importorskip("cryptography")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("keys")
    return {name: keygen(root / name) for name in ("ours", "theirs")}


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signed reads keep a rollback record in the cache: this test's, not the user's."""
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "edgekd-cache"))


@pytest.fixture()
def signed(bundle_copy: Path, keys: dict[str, tuple[Path, Path]]) -> Path:
    sign_bundle(bundle_copy, keys["ours"][0])
    return bundle_copy


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_digest_is_sha256_of_the_canonical_manifest(bundle_path: Path) -> None:
    manifest = _manifest(bundle_path)
    body = {k: v for k, v in manifest.items() if k != "digest"}
    by_hand = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                        ensure_ascii=False).encode("utf-8")).hexdigest()
    assert manifest["digest"] == {"algorithm": "sha256", "value": by_hand}
    assert read_bundle(bundle_path).digest == by_hand


@pytest.mark.parametrize("edit", ["label", "mean", "std"])
def test_edited_manifest_is_refused_before_anything_else(bundle_copy: Path, edit: str) -> None:
    manifest = _manifest(bundle_copy)
    if edit == "label":
        manifest["labels"][0] = "definitely-not-still"
    else:
        manifest["modality"][edit][0] += 0.5
    _write(bundle_copy, manifest)
    with pytest.raises(BundleError, match=r"manifest.json: manifest digest mismatch .* edited"):
        read_bundle(bundle_copy, verify=False)
    with pytest.raises(BundleError, match="manifest digest mismatch"):
        load(bundle_copy, backend="onnxruntime")


def test_reformatted_manifest_still_reads(bundle_copy: Path) -> None:
    _write(bundle_copy, _manifest(bundle_copy))  # same content, other whitespace
    assert read_bundle(bundle_copy).digest == _manifest(bundle_copy)["digest"]["value"]


def test_swapped_artifact_is_refused(bundle_copy: Path) -> None:
    shutil.copyfile(bundle_copy / "model.fp32.onnx", bundle_copy / "model.int8.qdq.onnx")
    with pytest.raises(BundleError, match=r"model.int8.qdq.onnx: size \d+ bytes, manifest says"):
        load(bundle_copy, backend="onnxruntime", precision="int8")


def test_signed_bundle_loads_with_its_key(signed: Path, keys: dict, cache_root: Path) -> None:
    public = keys["ours"][1]
    b = read_bundle(signed, trusted_keys=[public])
    record = json.loads((signed / SIGNATURE).read_text())
    assert b.signer == record["key_id"] and record["manifest_sha256"] == b.digest
    model = load(signed, backend="onnxruntime", trusted_keys=[public], cache_dir=cache_root)
    assert model.bundle.signer == b.signer
    # without trusted keys a signature is not required, and not checked
    assert read_bundle(signed, trusted_keys=[]).signer is None


def test_unsigned_bundle_is_refused_under_a_key(bundle_copy: Path, keys: dict) -> None:
    with pytest.raises(BundleError, match=r"unsigned bundle \(no signature.json\)"):
        load(bundle_copy, backend="onnxruntime", trusted_keys=[keys["ours"][1]])


def test_signature_by_another_key_is_refused(bundle_copy: Path, keys: dict) -> None:
    sign_bundle(bundle_copy, keys["theirs"][0])
    with pytest.raises(BundleError, match=r"signed by key '[0-9a-f]{16}', which is not among"):
        read_bundle(bundle_copy, trusted_keys=[keys["ours"][1]])


def test_truncated_signature_is_refused(signed: Path, keys: dict) -> None:
    record = json.loads((signed / SIGNATURE).read_text())
    record["signature"] = base64.b64encode(base64.b64decode(record["signature"])[:40]).decode()
    (signed / SIGNATURE).write_text(json.dumps(record))
    with pytest.raises(BundleError, match=r"signature is 40 bytes, expected 64 \(truncated"):
        read_bundle(signed, trusted_keys=[keys["ours"][1]])


def test_altered_signature_bytes_are_refused(signed: Path, keys: dict) -> None:
    record = json.loads((signed / SIGNATURE).read_text())
    raw = bytearray(base64.b64decode(record["signature"]))
    raw[10] ^= 0x01
    record["signature"] = base64.b64encode(bytes(raw)).decode()
    (signed / SIGNATURE).write_text(json.dumps(record))
    with pytest.raises(BundleError, match=r"Ed25519 signature does not verify"):
        read_bundle(signed, trusted_keys=[keys["ours"][1]])


def test_re_digested_edit_of_a_signed_bundle_is_refused(signed: Path, keys: dict) -> None:
    """Whoever edits the manifest can recompute its digest, not the signature over it."""
    manifest = _manifest(signed)
    manifest["labels"][1] = "sprint"
    manifest["digest"] = digest_entry(manifest)
    _write(signed, manifest)
    assert read_bundle(signed, trusted_keys=[]).labels[1] == "sprint"  # unsigned use: fine
    with pytest.raises(BundleError, match=r"signs manifest digest .* signature of another"):
        read_bundle(signed, trusted_keys=[keys["ours"][1]])


def test_trusted_keys_from_the_environment(signed: Path, keys: dict,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys["theirs"][1]))
    with pytest.raises(BundleError, match="not among the trusted keys"):
        load(signed, backend="onnxruntime")
    monkeypatch.setenv(TRUSTED_KEYS_ENV, f"{keys['theirs'][1]}:{keys['ours'][1]}")
    assert read_bundle(signed).signer is not None


def test_nothing_is_cached_from_a_refused_bundle(bundle_copy: Path, keys: dict,
                                                 tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(BundleError, match="unsigned bundle"):
        load(bundle_copy, precision="auto", trusted_keys=[keys["ours"][1]], cache_dir=cache)
    assert not cache.exists()
    with (bundle_copy / "openvino/model.int8.bin").open("r+b") as fh:
        fh.write(b"\0\0\0\0")
    with pytest.raises(BundleError, match="model.int8.bin: sha256 does not match"):
        load(bundle_copy, backend="openvino", precision="int8", cache_dir=cache)
    assert not cache.exists()  # not even an empty OpenVINO cache folder


def test_keygen_writes_a_private_key_only_we_can_read(tmp_path: Path, bundle_path: Path) -> None:
    private, public = keygen(tmp_path / "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ConfigError, match="refusing to overwrite a key"):
        keygen(tmp_path / "k")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        read_bundle(bundle_path, trusted_keys=[private])  # a private key is no trusted key


def test_writer_signs_inside_the_staging_folder(tmp_path: Path, keys: dict) -> None:
    out = tmp_path / "s.edgekd"
    with BundleWriter(out, sign_key=keys["ours"][0]) as w:
        w.add_file("model.fp32.onnx", b"onnx", format="onnx", precision="fp32")
        w.add_npz("golden", x=np.zeros((1, 128, 3), np.float32), probs=np.ones((1, 2)))
        w.set("labels", ["a", "b"])
        w.set("modality", {"name": "accel", "kind": "timeseries", "rate_hz": 50.0,
                           "channels": 3, "window": 128, "hop": 64})
        w.set("io", {"input": {"name": "input", "shape": ["batch", 3, 128]},
                     "output": {"name": "logits", "shape": ["batch", 2]}})
    assert read_bundle(out, trusted_keys=[keys["ours"][1]]).signer is not None


def test_cli_keygen_sign_and_trusted_key(bundle_copy: Path, tmp_path: Path,
                                         private_cache: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["keygen", "--out", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "k" / "edgekd-signing.key", tmp_path / "k" / "edgekd-signing.pub"
    refused = runner.invoke(app, ["info", str(bundle_copy), "--trusted-key", str(public)])
    assert refused.exit_code == 2 and "unsigned bundle" in refused.output
    assert runner.invoke(app, ["sign", str(bundle_copy), "--key", str(private)]).exit_code == 0
    info = runner.invoke(app, ["info", str(bundle_copy), "--trusted-key", str(public)])
    assert info.exit_code == 0 and "signed by trusted key" in info.output
    x = np.load(bundle_copy / "golden.npz")["x"].reshape(-1, 3)
    np.save(tmp_path / "rec.npy", x)
    run = runner.invoke(app, ["run", str(bundle_copy), "-i", str(tmp_path / "rec.npy"),
                              "--backend", "onnxruntime", "--trusted-key", str(public)])
    assert run.exit_code == 0, run.output


class _Unpickled:
    """Unpickling this touches `path`: the proof that a reader unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def _pickled_npz(marker: Path) -> bytes:
    """npz bytes whose `probs` is a pickled object array (np.savez pickles object arrays)."""
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 128, 3), np.float32),
             probs=np.array([_Unpickled(marker)], dtype=object))  # fmt: skip
    return buf.getvalue()


def test_a_pickled_npz_in_a_bundle_is_refused_never_unpickled(
    bundle_copy: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    data = _pickled_npz(marker)
    with np.load(io.BytesIO(data), allow_pickle=True) as npz:  # the payload works ...
        npz["probs"]
    assert marker.exists()
    marker.unlink()
    # ... and a bundle whose golden.npz holds it, sealed as its writer would (sha256, size,
    # digest), so that only the pickle can stop it.
    (bundle_copy / "golden.npz").write_bytes(data)
    manifest = _manifest(bundle_copy)
    manifest["golden"] = {**manifest["golden"], "sha256": hashlib.sha256(data).hexdigest(),
                          "size": len(data)}  # fmt: skip
    manifest["digest"] = digest_entry(manifest)
    _write(bundle_copy, manifest)
    bundle = read_bundle(bundle_copy, verify=True, trusted_keys=[])
    assert bundle.read_data("golden") == data  # intact and listed: the checks pass
    refused = BundleError
    with pytest.raises(refused, match="(?i)pickle|object"):
        load_npz(bundle.read_data("golden"))
    try:
        model = load(bundle_copy, backend="onnxruntime")
    except refused:
        pass  # refused at load: fine too
    else:
        with pytest.raises(refused, match="(?i)pickle|object"):
            model.self_check()
    try:  # precision auto times on the golden windows
        load(bundle_copy, precision="auto", cache_dir=tmp_path / "cache")
    except refused:
        pass
    assert not marker.exists(), "a bundle's npz was unpickled"
