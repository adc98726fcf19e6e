"""The trust boundary of a load: what was checked is what runs, nothing outside the bundle is
followed, the manifest means one thing only, older signed bundles are refused, caches are sealed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import runtime_synth as synth
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import BundleError, ConfigError
from edgekd.export.bundle import BundleWriter
from edgekd.runtime import bundle as bundle_mod
from edgekd.runtime import load, read_bundle
from edgekd.runtime.integrity import digest_entry, keygen, sign_bundle

GOLDEN_X = synth.make_windows(8, seed=2)[0]


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _other_model(tmp_path: Path) -> bytes:
    """A valid ONNX model with the synth bundle's input and output, but other weights."""
    other = synth.build_pooled_bundle(tmp_path / "other.edgekd", synth.base_spec(), synth.LABELS,
                                      seed=7)
    return (other / "model.fp32.onnx").read_bytes()


# -- what was checked is what runs -------------------------------------------------------------
def test_onnxruntime_runs_the_checked_bytes_not_a_file_swapped_after_the_check(
        bundle_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    expected = load(bundle_copy, backend="onnxruntime", precision="fp32").predict(GOLDEN_X).probs
    victim, evil = bundle_copy / "model.fp32.onnx", _other_model(tmp_path)
    real = ort.InferenceSession

    def swap_then_open(model: object, *args: object, **kwargs: object) -> object:
        victim.write_bytes(evil)  # after the sha256 check, before ONNX Runtime reads the model
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", swap_then_open)
    model = load(bundle_copy, backend="onnxruntime", precision="fp32")
    assert victim.read_bytes() == evil
    np.testing.assert_array_equal(model.predict(GOLDEN_X).probs, expected)


def test_openvino_compiles_the_checked_bytes_not_a_file_swapped_after_the_check(
        bundle_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openvino as ov

    expected = load(bundle_copy, backend="openvino", precision="fp32",
                    cache_dir=tmp_path / "first").predict(GOLDEN_X).probs
    victim = bundle_copy / "openvino/model.fp32.bin"
    zeros = bytes(victim.stat().st_size)  # same size, other weights
    real = ov.Core.read_model

    def swap_then_read(self: object, *args: object, **kwargs: object) -> object:
        victim.write_bytes(zeros)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ov.Core, "read_model", swap_then_read)
    model = load(bundle_copy, backend="openvino", precision="fp32", cache_dir=tmp_path / "c")
    assert victim.read_bytes() == zeros
    np.testing.assert_array_equal(model.predict(GOLDEN_X).probs, expected)


def test_golden_is_read_once_from_the_checked_bytes(bundle_copy: Path) -> None:
    model = load(bundle_copy, backend="onnxruntime", precision="fp32")
    before = model.self_check()
    (bundle_copy / "golden.npz").write_bytes(b"not the golden file any more")
    assert model.self_check() == before  # the bytes checked at load, not the file again


# -- nothing outside the bundle ----------------------------------------------------------------
@pytest.mark.parametrize(("victim", "backend", "precision"), [
    ("model.int8.qdq.onnx", "onnxruntime", "int8"),
    ("openvino", "openvino", "int8"),
    ("golden.npz", "onnxruntime", "fp32"),
])
def test_a_symlink_inside_the_bundle_is_refused(bundle_copy: Path, tmp_path: Path, victim: str,
                                                backend: str, precision: str) -> None:
    """Even to a valid copy of the very file: a link can be retargeted after the check."""
    outside = tmp_path / "outside" / victim
    outside.parent.mkdir()
    shutil.move(bundle_copy / victim, outside)
    (bundle_copy / victim).symlink_to(outside)
    message = rf"{victim}: is a symlink; symlinks inside a bundle are refused"
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle_copy)
    with pytest.raises(BundleError, match=message):
        load(bundle_copy, backend=backend, precision=precision, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("link", [
    "model.fp32.onnx",  # listed, but not what an int8 load reads
    "notes.txt",  # not listed at all
    "openvino/extra.bin",  # inside a real folder
    "spare",  # a symlinked folder nothing reads
])
def test_a_symlink_anywhere_makes_the_whole_bundle_invalid(
        bundle_copy: Path, tmp_path: Path, private_cache: Path, link: str) -> None:
    """info, run, bench and rt.load alike, even when the link is not what they would read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    if link == "model.fp32.onnx":
        shutil.move(bundle_copy / link, outside / link)  # the very file, a valid copy
        (bundle_copy / link).symlink_to(outside / link)
    elif link == "spare":
        (bundle_copy / link).symlink_to(outside, target_is_directory=True)
    else:
        (outside / "x").write_bytes(b"x")
        (bundle_copy / link).symlink_to(outside / "x")
    message = f"{bundle_copy.resolve() / link}: is a symlink; symlinks inside a bundle are refused"
    for verify in (True, False):
        with pytest.raises(BundleError) as info:
            read_bundle(bundle_copy, verify=verify)
        assert str(info.value).startswith(message)
    with pytest.raises(BundleError) as info:  # int8: the FP32 ONNX is never opened
        load(bundle_copy, backend="onnxruntime", precision="int8", cache_dir=tmp_path / "c")
    assert str(info.value).startswith(message)
    np.save(tmp_path / "rec.npy", synth.make_recording(300, 2, np.random.default_rng(1)))
    for command in (["info", bundle_copy], ["info", bundle_copy, "--no-verify"],
                    ["run", bundle_copy, "--input", tmp_path / "rec.npy", "--backend",
                     "onnxruntime", "--precision", "int8"],
                    ["bench", bundle_copy, "--backend", "onnxruntime", "--precision", "int8",
                     "--batch", "1", "--iterations", "2", "--warmup", "0", "--no-cold"]):
        result = CliRunner().invoke(app, [str(a) for a in command])
        assert result.exit_code == 2, (command, result.output)
        assert result.output.startswith(f"error: {message}"), (command, result.output)


def test_a_symlinked_manifest_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    shutil.move(bundle_copy / "manifest.json", tmp_path / "manifest.json")
    (bundle_copy / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(BundleError, match=r"manifest.json: is a symlink"):
        read_bundle(bundle_copy, verify=False)


def test_a_fifo_inside_the_bundle_is_refused_without_hanging(bundle_copy: Path) -> None:
    (bundle_copy / "model.fp32.onnx").unlink()
    os.mkfifo(bundle_copy / "model.fp32.onnx")
    with pytest.raises(BundleError, match=r"model.fp32.onnx: not a regular file"):
        read_bundle(bundle_copy)


# -- the manifest means one thing --------------------------------------------------------------
def test_a_duplicate_key_is_refused(bundle_copy: Path) -> None:
    """Last-wins parsers would read the real labels and this digest would match."""
    text = json.dumps(_manifest(bundle_copy))
    (bundle_copy / "manifest.json").write_text('{"labels": ["evil"], ' + text[1:])
    with pytest.raises(BundleError, match=r"key 'labels' appears twice in one object"):
        read_bundle(bundle_copy, verify=False)


def test_a_duplicate_key_in_the_signature_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    private, public = keygen(tmp_path / "k")
    sign_bundle(bundle_copy, private)
    record = (bundle_copy / "signature.json").read_text()
    (bundle_copy / "signature.json").write_text('{"key_id": "0", ' + record.lstrip()[1:])
    with pytest.raises(BundleError, match=r"signature.json: key 'key_id' appears twice"):
        read_bundle(bundle_copy, trusted_keys=[public], cache_dir=tmp_path / "c")


@pytest.mark.parametrize(("value", "message"), [
    ('"\\ud800"', r"holds the lone surrogate '\\ud800', which is not valid Unicode"),
    ("NaN", r"NaN is not allowed"),
])
def test_invalid_values_are_a_bundle_error(bundle_copy: Path, value: str, message: str) -> None:
    text = json.dumps(_manifest(bundle_copy))
    (bundle_copy / "manifest.json").write_text(text[:-1] + f', "note": {value}}}')
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle_copy, verify=False)


def test_a_manifest_without_digest_is_refused_for_what_it_is(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    del manifest["digest"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"field 'digest' missing: the manifest has no digest, "
                                          r"so not even accidental corruption would be detected"):
        read_bundle(bundle_copy, verify=False)


# -- a publish during a load -------------------------------------------------------------------
def test_a_load_restarts_when_a_publish_replaces_the_folder_mid_read(
        bundle_copy: Path, bundle_path: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    newer = tmp_path / "newer.edgekd"
    shutil.copytree(bundle_path, newer)
    manifest = _manifest(newer)
    manifest["version"] += 1
    manifest["digest"] = digest_entry(manifest)
    (newer / "manifest.json").write_text(json.dumps(manifest))
    real, published = bundle_mod.BundleDir.checked, []

    def publish_first(self: bundle_mod.BundleDir, rel: str, sha256: str, size: int) -> bytes:
        if not published:  # as the writer does: swap the folders, then delete the old one
            published.append(rel)
            aside = tmp_path / "old.edgekd"
            os.rename(bundle_copy, aside)
            os.rename(newer, bundle_copy)
            shutil.rmtree(aside)
        return real(self, rel, sha256, size)

    monkeypatch.setattr(bundle_mod.BundleDir, "checked", publish_first)
    model = load(bundle_copy, backend="onnxruntime", precision="int8")
    assert published and model.bundle.version == manifest["version"]


def test_a_missing_file_without_a_publish_is_no_retry(bundle_copy: Path) -> None:
    (bundle_copy / "model.int8.qdq.onnx").unlink()
    with pytest.raises(BundleError, match=r"listed in the manifest but missing") as info:
        load(bundle_copy, backend="onnxruntime", precision="int8")
    assert not isinstance(info.value, bundle_mod.BundleReplaced)


def test_a_load_under_endless_publishes_gives_up_after_the_documented_attempts(
        bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []

    def always_replaced(path: Path, verify: bool, keys: list) -> bundle_mod.Bundle:
        reads.append(path)
        raise bundle_mod.BundleReplaced(f"{path} was replaced while it was read")

    monkeypatch.setattr(bundle_mod, "_read_once", always_replaced)
    with pytest.raises(bundle_mod.BundleReplaced):
        load(bundle_copy, backend="onnxruntime", precision="int8")
    assert len(reads) == bundle_mod.REPLACED_RETRIES  # one retry loop, not one inside another
    reads.clear()
    with pytest.raises(bundle_mod.BundleReplaced):
        read_bundle(bundle_copy)
    assert len(reads) == bundle_mod.REPLACED_RETRIES


# -- versions and rollback ---------------------------------------------------------------------
def _signed_minimal(out: Path, key: Path) -> Path:
    with BundleWriter(out, sign_key=key) as w:
        w.add_file("model.fp32.onnx", out.name.encode(), format="onnx", precision="fp32")
        w.set("labels", ["a", "b"])
        w.set("modality", {"name": "accel", "kind": "timeseries", "rate_hz": 50.0,
                           "channels": 3, "window": 128, "hop": 64})
        w.set("io", {"input": {"name": "input", "shape": ["batch", 3, 128]},
                     "output": {"name": "logits", "shape": ["batch", 2]}})
    return out


def test_an_older_signed_bundle_is_refused_after_a_newer_one(tmp_path: Path) -> None:
    private, public = keygen(tmp_path / "k")
    cache = tmp_path / "cache"
    older = _signed_minimal(tmp_path / "older.edgekd", private)
    newer = _signed_minimal(tmp_path / "newer.edgekd", private)
    v_old, v_new = (_manifest(b)["version"] for b in (older, newer))
    assert v_old < v_new
    read_bundle(older, trusted_keys=[public], cache_dir=cache)  # first seen: fine
    read_bundle(newer, trusted_keys=[public], cache_dir=cache)
    with pytest.raises(BundleError, match=rf"bundle has version {v_old}, older than version "
                                          rf"{v_new} already read on this device"):
        read_bundle(older, trusted_keys=[public], cache_dir=cache)
    assert read_bundle(older, trusted_keys=[public], cache_dir=cache,
                       allow_rollback=True).version == v_old
    # the record stays at the newest: the newer bundle reads, the older is still refused
    assert read_bundle(newer, trusted_keys=[public], cache_dir=cache).version == v_new
    with pytest.raises(BundleError, match="refusing a rollback"):
        read_bundle(older, trusted_keys=[public], cache_dir=cache)
    assert read_bundle(older, trusted_keys=[], cache_dir=cache).version == v_old  # unsigned use


def test_an_edited_rollback_record_is_not_believed(tmp_path: Path) -> None:
    private, public = keygen(tmp_path / "k")
    cache = tmp_path / "cache"
    older = _signed_minimal(tmp_path / "older.edgekd", private)
    newer = _signed_minimal(tmp_path / "newer.edgekd", private)
    signer = read_bundle(newer, trusted_keys=[public], cache_dir=cache).signer
    record = cache / "rollback" / f"{signer}.json"
    record.write_text(json.dumps({"version": 1}))  # lower the record by hand: seal breaks
    read_bundle(older, trusted_keys=[public], cache_dir=cache)  # record ignored and rewritten
    assert json.loads(record.read_text())["version"] == _manifest(older)["version"]


@pytest.mark.parametrize("broken", ["others can read it", "symlink", "cannot be created"])
def test_without_a_seal_key_the_rollback_guard_refuses_to_vouch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    from edgekd.runtime.cache_seal import KEY_BYTES, KEY_FILE

    private, public = keygen(tmp_path / "k")
    signed = _signed_minimal(tmp_path / "b.edgekd", private)
    cache = tmp_path / "cache"
    if broken == "cannot be created":
        cache.write_text("a file where the cache folder should be")
    else:
        cache.mkdir()
        real = tmp_path / "real.key" if broken == "symlink" else cache / KEY_FILE
        real.write_bytes(os.urandom(KEY_BYTES))
        real.chmod(0o644 if broken == "others can read it" else 0o600)
        if broken == "symlink":
            (cache / KEY_FILE).symlink_to(real)

    def refusal(**kw: object) -> str:
        with pytest.raises(BundleError) as info:
            read_bundle(signed, trusted_keys=[public], cache_dir=cache, **kw)
        return str(info.value)

    for message in (refusal(), refusal(min_version=0)):
        assert "the rollback guard cannot vouch" in message
        assert "has no usable seal key: " + {
            "others can read it": f"its key {cache / KEY_FILE} has mode 0644",
            "symlink": f"its key {cache / KEY_FILE} cannot be opened safely",
            "cannot be created": f"cannot create its key {cache / KEY_FILE}: {cache} is not a "
                                 "folder; choose another cache folder"}[broken] in message
        assert "CacheSeal.for_cache(cache)" in message  # how the key is made
        assert message.endswith("turn the guard off on purpose with --allow-rollback "
                                "(allow_rollback=True)")
    with pytest.raises(BundleError, match="the rollback guard cannot vouch"):
        load(signed, backend="onnxruntime", trusted_keys=[public], cache_dir=cache)
    # the guard turned off on purpose, or no signature to guard: read as before
    assert read_bundle(signed, trusted_keys=[public], cache_dir=cache,
                       allow_rollback=True).signer is not None
    assert read_bundle(signed, trusted_keys=[], cache_dir=cache).signer is None
    monkeypatch.setenv("EDGEKD_CACHE", str(cache))  # the CLI's default cache
    result = CliRunner().invoke(app, ["info", str(signed), "--trusted-key", str(public)])
    assert result.exit_code == 2 and "the rollback guard cannot vouch" in result.output
    assert "--allow-rollback" in result.output
    result = CliRunner().invoke(app, ["info", str(signed), "--trusted-key", str(public),
                                      "--allow-rollback"])
    assert result.exit_code == 0, result.output


def test_a_usable_seal_key_keeps_the_rollback_guard_as_it_was(tmp_path: Path) -> None:
    """A missing key is made at the first read, and the record is kept under it."""
    private, public = keygen(tmp_path / "k")
    signed = _signed_minimal(tmp_path / "b.edgekd", private)
    cache = tmp_path / "cache"
    signer = read_bundle(signed, trusted_keys=[public], cache_dir=cache).signer
    assert (cache / "seal.key").is_file()
    record = json.loads((cache / "rollback" / f"{signer}.json").read_text())
    assert record == {"version": _manifest(signed)["version"]}


def test_min_version(bundle_copy: Path) -> None:
    version = _manifest(bundle_copy)["version"]
    assert read_bundle(bundle_copy, min_version=version).version == version
    with pytest.raises(BundleError, match=rf"bundle version {version} is older than the "
                                          rf"minimum {version + 1} required"):
        load(bundle_copy, backend="onnxruntime", min_version=version + 1)


def test_a_schema_2_bundle_still_reads_but_has_no_version(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    manifest["schema_version"] = 2
    del manifest["version"]
    manifest["digest"] = digest_entry(manifest)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert load(bundle_copy, backend="onnxruntime").bundle.version is None
    with pytest.raises(BundleError, match=r"has no version \(schema_version 2\) and version "
                                          r">= 1 is required"):
        read_bundle(bundle_copy, min_version=1)


def test_a_private_key_others_can_read_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    private, _ = keygen(tmp_path / "k")
    private.chmod(0o644)
    with pytest.raises(ConfigError, match=r"has mode 0644: group or others can read it.*"
                                          r"chmod 600"):
        sign_bundle(bundle_copy, private)
    result = CliRunner().invoke(app, ["sign", str(bundle_copy), "--key", str(private)])
    assert result.exit_code == 2 and "chmod 600" in result.output
    assert not (bundle_copy / "signature.json").exists()
    private.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert CliRunner().invoke(app, ["sign", str(bundle_copy), "--key", str(private)]
                              ).exit_code == 0


# -- the OpenVINO cache ------------------------------------------------------------------------
def test_openvino_cache_is_sealed_and_an_edited_blob_is_recompiled(bundle_path: Path,
                                                                   tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load(bundle_path, backend="openvino", precision="int8", cache_dir=cache)
    assert first.info["cache"] == "miss (missing)"
    blob = Path(first.info["cache_blob"])
    assert blob.parent == cache / "openvino" and blob.is_file()
    expected = first.predict(GOLDEN_X).probs
    second = load(bundle_path, backend="openvino", precision="int8", cache_dir=cache)
    assert second.info["cache"] == "hit"
    np.testing.assert_array_equal(second.predict(GOLDEN_X).probs, expected)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    third = load(bundle_path, backend="openvino", precision="int8", cache_dir=cache)
    assert third.info["cache"].startswith("miss (its seal does not match")
    np.testing.assert_array_equal(third.predict(GOLDEN_X).probs, expected)
    assert load(bundle_path, backend="openvino", precision="int8",
                cache_dir=cache).info["cache"] == "hit"  # the recompiled blob was resealed
    # OpenVINO's own cache (CACHE_DIR) is not used: only sealed entries are there
    assert sorted(p.name for p in (cache / "openvino").iterdir()) == [
        blob.name, blob.name + ".seal.json"]


def _exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): both paths exist at every instant (how the writer publishes)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        pytest.skip("this C library has no renameat2")
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        pytest.skip(f"renameat2(RENAME_EXCHANGE) unsupported here: {os.strerror(err)}")


def _variant(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` with other golden windows (so every file of the two is not the same)
    and a higher version, re-digested: what the next export would publish."""
    import hashlib

    shutil.copytree(bundle, out)
    golden = dict(np.load(out / "golden.npz"))
    np.savez(out / "golden.npz", **{k: v[:4] for k, v in golden.items()})
    data = (out / "golden.npz").read_bytes()
    manifest = _manifest(out)
    manifest["golden"].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    manifest["version"] += 1
    manifest["digest"] = digest_entry(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_a_load_loop_never_fails_while_bundles_are_published(bundle_copy: Path,
                                                             tmp_path: Path) -> None:
    """Two bundles published in turn under one path; every load reads one of them whole."""
    import threading

    _exchange(bundle_copy, bundle_copy)  # skips where the exchange is unavailable
    sources = [tmp_path / "a.edgekd", _variant(bundle_copy, tmp_path / "b.edgekd")]
    shutil.copytree(bundle_copy, sources[0])
    done, errors = threading.Event(), []

    def publish() -> None:
        for i in range(30):
            staging = tmp_path / f"staging{i}"
            shutil.copytree(sources[i % 2], staging)
            _exchange(staging, bundle_copy)
            shutil.rmtree(staging)  # the old bundle, deleted under the readers
        done.set()

    publisher = threading.Thread(target=publish)
    publisher.start()
    loads = 0
    try:
        while not done.is_set() or loads < 5:
            check = load(bundle_copy, backend="onnxruntime", precision="int8").self_check()
            assert check["n"] in (4, 8) and check["top1_agreement"] >= 0.75
            loads += 1
    except Exception as exc:  # reported once the publisher has stopped
        errors.append(exc)
    publisher.join()
    assert not errors, errors[0]


def test_an_unreadable_cache_is_a_bundle_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgekd.runtime.cache_seal import CacheSeal

    private, public = keygen(tmp_path / "k")
    signed = _signed_minimal(tmp_path / "b.edgekd", private)

    def denied(cache: Path) -> None:  # what another user's 0700 cache folder gives
        raise PermissionError(13, "Permission denied", str(cache))

    monkeypatch.setattr(CacheSeal, "open_key", classmethod(lambda cls, cache: denied(cache)))
    with pytest.raises(BundleError, match="cannot be read here .*Permission denied.*this user's"):
        read_bundle(signed, trusted_keys=[public], cache_dir=tmp_path / "cache")
    read_bundle(signed, trusted_keys=[public], cache_dir=tmp_path / "cache", allow_rollback=True)
