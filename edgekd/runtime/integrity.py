"""Bundle integrity (the contract is docs/bundle.md, "Integrity"): keys, signing, and the one
place to import the whole contract from.

The checks a reader makes live below the bundle reader, which runs them: `edgekd.runtime.digest`
(the manifest digest, strict JSON), `edgekd.runtime.signature` (signature records checked against
trusted Ed25519 public keys, $EDGEKD_TRUSTED_KEYS) and `edgekd.runtime.rollback` (no older
signed bundle than one already read here). Their names are re-exported here. This module sits
above `edgekd.runtime.bundle`: it makes key pairs and signs a bundle it has read and verified.

Keys are PEM files: PKCS#8 private key (written mode 0600, and refused for signing when group or
others may read it), SubjectPublicKeyInfo public key (mode per umask, like signature.json: both
are meant to be read by other users). The `cryptography` package is imported only when a key is
used.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError
from edgekd.runtime.bundle import read_bundle
from edgekd.runtime.digest import (
    DIGEST_KEY,
    canonical_manifest,
    check_digest,
    digest_entry,
    manifest_digest,
    strict_json,
)
from edgekd.runtime.rollback import ROLLBACK_DIR, ROLLBACK_KIND, check_rollback
from edgekd.runtime.signature import (
    SIGNATURE,
    SIGNED_PREFIX,
    TRUSTED_KEYS_ENV,
    check_signature,
    crypto,
    key_id,
    load_public_key,
    resolve_trusted_keys,
    trusted_keys_from_env,
)

__all__ = [
    "DIGEST_KEY",
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "ROLLBACK_DIR",
    "ROLLBACK_KIND",
    "SIGNATURE",
    "SIGNED_PREFIX",
    "TRUSTED_KEYS_ENV",
    "canonical_manifest",
    "check_digest",
    "check_rollback",
    "check_signature",
    "digest_entry",
    "key_id",
    "keygen",
    "load_private_key",
    "load_public_key",
    "manifest_digest",
    "resolve_trusted_keys",
    "sign_bundle",
    "signature_record",
    "strict_json",
    "trusted_keys_from_env",
]

PRIVATE_KEY_NAME = "edgekd-signing.key"
PUBLIC_KEY_NAME = "edgekd-signing.pub"


# -- keys --------------------------------------------------------------------------------------
def keygen(out_dir: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair into `out_dir`: (private key path, public key path). The
    private key is mode 0600 from its creation on; the public key follows the umask (0644 under
    022) so that it can be handed out. ConfigError if either file exists: a key is never
    overwritten, not even by a concurrent keygen (both are created O_EXCL)."""
    from edgekd.io import create_new_bytes

    serialization, ed25519 = crypto()
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
    serialization, ed25519 = crypto()
    data = _read_private_key(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 key, found {type(key).__name__}")
    return key


# -- sign --------------------------------------------------------------------------------------
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

    bundle = read_bundle(root, verify=True, trusted_keys=[])
    record = signature_record(bundle.digest, private_key_path)
    atomic_write_json(bundle.root / SIGNATURE, record)
    return record
