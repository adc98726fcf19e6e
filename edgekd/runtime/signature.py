"""Ed25519 bundle signatures, checked: public keys, trusted keys, `check_signature`.

The contract is docs/bundle.md, "Integrity". `signature.json` lies beside `manifest.json`:
`{"algorithm": "ed25519", "key_id", "manifest_sha256", "signature"}`; the signature (base64) is
Ed25519 over SIGNED_PREFIX + the manifest digest's hex ASCII (`edgekd.runtime.digest`). `key_id`
is the first 16 hex digits of sha256(raw 32-byte public key). Signing (`edgekd.runtime.integrity`)
adds that file only, so a bundle can be signed after export without changing its digest.

Public keys are PEM files (SubjectPublicKeyInfo). Trusted keys are given per call or listed in
$EDGEKD_TRUSTED_KEYS. The `cryptography` package is imported only when a key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekd.errors import BundleError, ConfigError

SIGNATURE = "signature.json"
SIGNED_PREFIX = b"edgekd-bundle-signature-v1\n"
TRUSTED_KEYS_ENV = "EDGEKD_TRUSTED_KEYS"
_SIG_BYTES = 64


# -- keys --------------------------------------------------------------------------------------
def crypto() -> Any:
    """cryptography's (serialization, ed25519) modules, imported on first use of a key."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # a core dependency; only a broken install gets here
        raise ConfigError(
            f"bundle signatures need the 'cryptography' package ({exc}); "
            "install it with: pip install cryptography"
        ) from exc
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    serialization, _ = crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_public_key(path: str | Path) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"public key file not found: {p}")
    return p.read_bytes()


def load_public_key(path: str | Path) -> Any:
    """An Ed25519 public key from a PEM file; ConfigError names the file if it is not one."""
    serialization, ed25519 = crypto()
    data = _read_public_key(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path}: expected an Ed25519 public key, found {type(key).__name__}")
    return key


def trusted_keys_from_env() -> list[Path]:
    """Key paths listed in $EDGEKD_TRUSTED_KEYS (os.pathsep-separated; unset or empty: none)."""
    raw = os.environ.get(TRUSTED_KEYS_ENV, "")
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


def resolve_trusted_keys(keys: Sequence[str | Path] | None) -> list[Path]:
    """`keys` if given (an empty list means: no signature required), else the env variable."""
    return [Path(k) for k in keys] if keys is not None else trusted_keys_from_env()


# -- verify ------------------------------------------------------------------------------------
def check_signature(path: Path, record: Any, digest: str, trusted: Sequence[Path]) -> str:
    """The key_id of the trusted key that signed `digest`, given `record`, the parsed content
    of the signature file `path` (None: there is none); BundleError saying what is wrong (no
    signature, malformed, unknown key, bad signature)."""
    keys = {key_id(k): k for k in (load_public_key(p) for p in trusted)}
    if record is None:
        raise BundleError(f"{path.parent}: unsigned bundle (no {SIGNATURE}) but trusted keys "
                          "are set; sign it with `edgekd sign` or drop the trusted keys")
    if not isinstance(record, dict) or record.get("algorithm") != "ed25519":
        found = record.get("algorithm") if isinstance(record, dict) else record
        raise BundleError(f"{path}: field 'algorithm' must be 'ed25519', found {found!r}")
    if record.get("manifest_sha256") != digest:
        raise BundleError(f"{path}: signs manifest digest {str(record.get('manifest_sha256'))[:16]}"
                          f"..., the manifest's is {digest[:16]}...: signature of another bundle")
    kid = record.get("key_id")
    if not isinstance(kid, str) or kid not in keys:
        raise BundleError(f"{path}: signed by key {kid!r}, which is not among the trusted keys "
                          f"({', '.join(sorted(keys))})")
    try:
        sig = base64.b64decode(str(record.get("signature")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{path}: field 'signature' is not base64 ({exc})") from exc
    if len(sig) != _SIG_BYTES:
        raise BundleError(f"{path}: signature is {len(sig)} bytes, expected {_SIG_BYTES} "
                          "(truncated or corrupt)")
    from cryptography.exceptions import InvalidSignature

    try:
        keys[kid].verify(sig, SIGNED_PREFIX + digest.encode("ascii"))
    except InvalidSignature:
        raise BundleError(f"{path}: Ed25519 signature does not verify with trusted key {kid}: "
                          "the bundle or its signature was altered") from None
    return str(kid)
