"""Sealed cache entries: used only for the bundle, signer, context and bytes they were made for."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

import pytest

from edgekd.runtime.cache_seal import KEY_BYTES, KEY_FILE, CacheSeal, sidecar

CTX = {"stamp": {"gpu": "Orin", "tensorrt": "10.3"}}


def _write(seal: CacheSeal, path: Path, payload: bytes = b"engine-bytes") -> None:
    seal.write(path, payload, kind="tensorrt_engine", digest="d" * 64, signer="k1", context=CTX)


def _read(seal: CacheSeal, path: Path, **over: object) -> tuple[bytes | None, str | None]:
    args = {"kind": "tensorrt_engine", "digest": "d" * 64, "signer": "k1", "context": CTX}
    args.update(over)
    return seal.read(path, **args)  # type: ignore[arg-type]


def test_key_is_created_private_and_reused(tmp_path: Path) -> None:
    first = CacheSeal.for_cache(tmp_path)
    assert first is not None and len(first.key) == KEY_BYTES
    st = os.stat(tmp_path / KEY_FILE)
    assert st.st_mode & 0o777 == 0o600
    assert CacheSeal.for_cache(tmp_path) == first


def test_seal_is_the_documented_hmac(tmp_path: Path) -> None:
    seal = CacheSeal(b"k" * KEY_BYTES)
    message = json.dumps({"kind": "x", "bundle_digest": "abc", "signer": "unsigned",
                          "context": {"a": 1}, "payload_sha256": hashlib.sha256(b"p").hexdigest()},
                         sort_keys=True, separators=(",", ":")).encode()
    expected = hmac.new(b"k" * KEY_BYTES, message, hashlib.sha256).hexdigest()
    assert seal.seal("x", "abc", None, b"p", {"a": 1}) == expected


def test_round_trip_returns_the_checked_bytes(tmp_path: Path) -> None:
    seal = CacheSeal.for_cache(tmp_path)
    assert seal is not None
    _write(seal, tmp_path / "e.engine")
    assert _read(seal, tmp_path / "e.engine") == (b"engine-bytes", None)


@pytest.mark.parametrize("change", [
    {"digest": "e" * 64}, {"signer": "k2"}, {"signer": None}, {"kind": "openvino_blob"},
    {"context": {"stamp": {"gpu": "Orin", "tensorrt": "10.4"}}},
])
def test_entry_for_another_bundle_signer_kind_or_device_is_refused(
        tmp_path: Path, change: dict[str, object]) -> None:
    seal = CacheSeal.for_cache(tmp_path)
    assert seal is not None
    _write(seal, tmp_path / "e.engine")
    payload, why = _read(seal, tmp_path / "e.engine", **change)
    assert payload is None and "does not match" in str(why)


def test_edited_payload_or_forged_sidecar_is_refused(tmp_path: Path) -> None:
    seal = CacheSeal.for_cache(tmp_path)
    assert seal is not None
    path = tmp_path / "e.engine"
    _write(seal, path)
    path.write_bytes(b"evil-engine")
    assert _read(seal, path)[0] is None
    # a sidecar recomputed with another key (an attacker who cannot read seal.key)
    CacheSeal(b"x" * KEY_BYTES).write(path, b"evil-engine", kind="tensorrt_engine",
                                      digest="d" * 64, signer="k1", context=CTX)
    assert _read(seal, path)[0] is None


def test_missing_entry_says_missing(tmp_path: Path) -> None:
    seal = CacheSeal.for_cache(tmp_path)
    assert seal is not None
    assert _read(seal, tmp_path / "none.engine") == (None, "missing")
    (tmp_path / "half.engine").write_bytes(b"x")  # payload without its seal
    assert _read(seal, tmp_path / "half.engine") == (None, "missing")
    assert not sidecar(tmp_path / "half.engine").exists()


def test_key_readable_by_others_bypasses_the_cache(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    assert CacheSeal.for_cache(tmp_path) is not None
    os.chmod(tmp_path / KEY_FILE, 0o644)
    assert CacheSeal.for_cache(tmp_path) is None
    assert "0644" in caplog.text and "0600" in caplog.text


def test_symlinked_or_short_key_bypasses_the_cache(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.key"
    real.write_bytes(b"k" * KEY_BYTES)
    os.chmod(real, 0o600)
    (tmp_path / KEY_FILE).symlink_to(real)
    assert CacheSeal.for_cache(tmp_path) is None
    other = tmp_path / "other"
    other.mkdir()
    (other / KEY_FILE).write_bytes(b"short")
    os.chmod(other / KEY_FILE, 0o600)
    assert CacheSeal.for_cache(other) is None
