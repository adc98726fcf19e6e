"""Manifest digest and Ed25519 bundle signatures (the contract is docs/bundle.md, "Integrity").

Digest: sha256 of the canonical manifest, i.e. the manifest without its `digest` key, serialised
as JSON with sorted keys, no whitespace (separators `,` and `:`), non-ASCII kept as UTF-8, NaN and
infinity refused. It is stored in the manifest as `"digest": {"algorithm": "sha256", "value":
HEX}`. Every file entry of the manifest holds that file's sha256, so the digest pins every byte
the runtime may load. Without trusted keys the digest only detects accidents (a truncated copy,
a flipped bit, a careless edit): whoever can change the manifest can recompute it. Manifests and
signature records are parsed strictly (`strict_json`): a duplicate key, NaN, or a lone surrogate
is refused, so one file cannot mean two things to two parsers.

Signature: `signature.json` beside `manifest.json`, `{"algorithm": "ed25519", "key_id",
"manifest_sha256", "signature"}`; the signature (base64) is Ed25519 over SIGNED_PREFIX + the
digest's hex ASCII. `key_id` is the first 16 hex digits of sha256(raw 32-byte public key).
Signing adds that file only, so a bundle can be signed after export without changing its digest.

Rollback: a signed bundle older (manifest `version`) than the newest one of the same signer read
on this device is refused (`check_rollback`; a sealed record per signer in the cache folder), and
so is any signed bundle where the cache has no usable seal key to keep that record, unless the
guard is turned off on purpose (`allow_rollback=True`, `--allow-rollback`).

Keys are PEM files: PKCS#8 private key (written mode 0600, and refused for signing when group or
others may read it), SubjectPublicKeyInfo public key (mode per umask, like signature.json: both
are meant to be read by other users). The `cryptography` package is imported only when a key is
used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekd.errors import BundleError, ConfigError

DIGEST_KEY = "digest"
SIGNATURE = "signature.json"
SIGNED_PREFIX = b"edgekd-bundle-signature-v1\n"
TRUSTED_KEYS_ENV = "EDGEKD_TRUSTED_KEYS"
PRIVATE_KEY_NAME = "edgekd-signing.key"
PUBLIC_KEY_NAME = "edgekd-signing.pub"
_SIG_BYTES = 64
ROLLBACK_DIR = "rollback"  # in the cache folder: <key_id>.json per signer, sealed
ROLLBACK_KIND = "rollback-record"
log = logging.getLogger("edgekd.runtime")


def canonical_manifest(manifest: dict[str, Any]) -> bytes:
    """The bytes the digest is taken over (see the module docstring)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except ValueError as exc:
        raise BundleError(f"manifest is not canonical JSON: {exc}") from exc
    return text.encode("utf-8")


def strict_json(data: bytes, where: Path) -> Any:
    """Parse untrusted JSON (a manifest, a signature record) so that it means one thing only:
    UTF-8, no key twice in one object (parsers disagree on which one wins), no NaN or infinity,
    no lone surrogate escape such as "\\ud800" (not Unicode: it cannot be hashed canonically).
    BundleError names the file and what is wrong."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise BundleError(f"{where}: key {key!r} appears twice in one object; "
                                  "a manifest must say each thing once")
            out[key] = value
        return out

    def no_constant(name: str) -> Any:
        raise BundleError(f"{where}: {name} is not allowed (not plain JSON)")

    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=unique,
                           parse_constant=no_constant)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # finds lone surrogates
    except UnicodeDecodeError as exc:
        raise BundleError(f"{where}: not UTF-8 ({exc})") from exc
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        raise BundleError(f"{where}: holds the lone surrogate {bad!r}, which is not valid "
                          "Unicode") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{where}: not valid JSON: {exc}") from exc
    return value


def manifest_digest(manifest: dict[str, Any]) -> str:
    """Hex sha256 of `canonical_manifest(manifest)`."""
    return hashlib.sha256(canonical_manifest(manifest)).hexdigest()


def digest_entry(manifest: dict[str, Any]) -> dict[str, str]:
    return {"algorithm": "sha256", "value": manifest_digest(manifest)}


def check_digest(manifest: dict[str, Any], where: Path) -> str:
    """The manifest's digest after checking it matches its content; BundleError otherwise."""
    entry = manifest.get(DIGEST_KEY)
    if not isinstance(entry, dict) or entry.get("algorithm") != "sha256" \
            or not isinstance(entry.get("value"), str):
        raise BundleError(f"{where}: field 'digest' must be {{'algorithm': 'sha256', 'value': "
                          f"HEX}}, found {entry!r}")
    actual = manifest_digest(manifest)
    if entry["value"] != actual:
        raise BundleError(
            f"{where}: manifest digest mismatch (recorded {entry['value'][:16]}..., content "
            f"hashes to {actual[:16]}...): manifest.json was edited after export"
        )
    return actual


# -- keys --------------------------------------------------------------------------------------
def _crypto() -> Any:
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
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(out_dir: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair into `out_dir`: (private key path, public key path). The
    private key is mode 0600 from its creation on; the public key follows the umask (0644 under
    022) so that it can be handed out. ConfigError if either file exists: a key is never
    overwritten, not even by a concurrent keygen (both are created O_EXCL)."""
    from edgekd.io import create_new_bytes

    serialization, ed25519 = _crypto()
    out = Path(out_dir).expanduser()
    priv_path, pub_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    for p in (priv_path, pub_path):
        if p.exists():
            raise ConfigError(f"{p} exists; refusing to overwrite a key (choose another --out)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    create_new_bytes(priv_path, private_pem, private=True)
    try:
        create_new_bytes(pub_path, public_pem)
    except BaseException:
        priv_path.unlink(missing_ok=True)  # a private key without its public half is useless
        raise
    return priv_path, pub_path


def _read_public_key(path: str | Path) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"public key file not found: {p}")
    return p.read_bytes()


def _read_private_key(path: str | Path) -> bytes:
    """The bytes of a private key file that only its owner can read (as ssh requires); checked
    on the open file, so the file checked is the file read."""
    p = Path(path).expanduser()
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"private key file not found: {p}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"private key {p} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(f"private key {p} has mode {stat.S_IMODE(st.st_mode):04o}: group "
                              f"or others can read it; refusing to sign with it (run: chmod 600 "
                              f"{p}, and replace the key if others may have copied it)")
        return fh.read()


def load_private_key(path: str | Path) -> Any:
    """An Ed25519 private key from a PEM file that only its owner can read; ConfigError names
    the file if it is not one, or if group or others may read it (chmod 600)."""
    serialization, ed25519 = _crypto()
    data = _read_private_key(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 key, found {type(key).__name__}")
    return key


def load_public_key(path: str | Path) -> Any:
    """An Ed25519 public key from a PEM file; ConfigError names the file if it is not one."""
    serialization, ed25519 = _crypto()
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


# -- sign / verify -----------------------------------------------------------------------------
def signature_record(digest: str, private_key_path: str | Path) -> dict[str, str]:
    """The content of signature.json for a manifest digest, signed with the key at the path."""
    key = load_private_key(private_key_path)
    sig = key.sign(SIGNED_PREFIX + digest.encode("ascii"))
    return {"algorithm": "ed25519", "key_id": key_id(key.public_key()),
            "manifest_sha256": digest, "signature": base64.b64encode(sig).decode("ascii")}


def sign_bundle(root: str | Path, private_key_path: str | Path) -> dict[str, str]:
    """Sign the bundle folder `root` in place (replacing any signature): writes signature.json
    atomically after checking the manifest digest. Returns the record written."""
    from edgekd.io import atomic_write_json
    from edgekd.runtime.bundle import read_bundle

    bundle = read_bundle(root, verify=True, trusted_keys=[])
    record = signature_record(bundle.digest, private_key_path)
    atomic_write_json(bundle.root / SIGNATURE, record)
    return record


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


# -- rollback ----------------------------------------------------------------------------------
def check_rollback(cache: Path, signer: str, version: int | None, where: Path) -> None:
    """Refuse a bundle signed by `signer` whose version is older than the newest this device has
    read from that signer; remember `version` when it is newer. BundleError says both numbers.

    The record is `<cache>/rollback/<key_id>.json` (`{"version": N}`), sealed with the cache's
    CacheSeal and updated under a lock. A record whose seal does not match was not written here
    and is ignored (with a warning) and replaced. Without a usable seal key (one that cannot be
    created, or is not private, not this user's, a symlink, of the wrong size) no record can be
    trusted or kept, so the guard refuses to vouch: BundleError saying what is wrong with the
    key and how to fix it, or to pass `allow_rollback=True` (`--allow-rollback`), which skips
    this check. Whoever can delete the cache folder can reset the record: it stops a replayed
    older bundle, not a compromised device.
    """
    import fcntl  # POSIX, like the bundle reader; imported only for signed bundles

    from edgekd.runtime.cache_seal import CacheSeal

    seal, why = CacheSeal.open_key(cache)
    if seal is None:
        raise BundleError(
            f"{where}: signed by {signer}, but the rollback guard cannot vouch that it is not "
            f"older than a bundle this device already read: the cache {cache}, which keeps the "
            f"sealed rollback record, has no usable seal key: {why}; or turn the guard off on "
            "purpose with --allow-rollback (allow_rollback=True)"
        )
    folder = cache / ROLLBACK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{signer}.json"
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # concurrent loads: the newest version wins
        payload, why = seal.read(path, kind=ROLLBACK_KIND, digest="", signer=signer, context={})
        seen = None
        if payload is not None:
            seen = json.loads(payload)["version"]
        elif why != "missing":
            log.warning("ignoring rollback record %s: %s", path, why)
        if seen is not None and (version is None or version < seen):
            found = "no version (schema_version 2)" if version is None else f"version {version}"
            raise BundleError(
                f"{where}: bundle has {found}, older than version {seen} already read on this "
                f"device from signer {signer}: refusing a rollback (pass allow_rollback=True, "
                "or --allow-rollback, to load an older signed bundle on purpose)"
            )
        if version is not None and (seen is None or version > seen):
            seal.write(path, json.dumps({"version": version}).encode("ascii"),
                       kind=ROLLBACK_KIND, digest="", signer=signer, context={})
