"""Sealed cache entries: nothing outside a bundle runs unless this device made it for that bundle.

The runtime caches what is slow to make on a device (TensorRT engines, OpenVINO compiled blobs,
the `precision="auto"` choice) outside the bundle, so the bundle's digest and signature do not
cover them. Each entry is therefore sealed: an HMAC-SHA256, under a secret key of this cache
folder, over the entry's kind, the bundle's manifest digest, the bundle's signer (the trusted
key's id, or "unsigned"), the entry's context (e.g. the device stamp) and the sha256 of the
entry's bytes. An entry is used only when its seal matches the bundle being loaded; anything
else (another bundle's entry, another signer's, a file edited or swapped on disk, a sidecar
written by hand) is ignored and rebuilt, never run.

The key is 32 random bytes in `<cache>/seal.key`, created once with mode 0600. A key file that
is a symlink, not owned by this user, readable by group or others, or of the wrong size is not
used: the cache is then bypassed (entries are neither read nor written) with a warning, as ssh
refuses a private key with open permissions. The rollback record of signed bundles cannot be
bypassed that way: without a usable key the rollback guard refuses (`rollback.check_rollback`,
via `CacheSeal.open_key`, which says what is wrong with the key and how to fix it).

What a seal does not protect against: anyone who can read the key (this user, root) can forge
seals; they could as well change the application itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_FILE = "seal.key"
KEY_BYTES = 32
SIDECAR_SUFFIX = ".seal.json"
UNSIGNED = "unsigned"
_CREATES_KEY = "`edgekd.runtime.cache_seal.CacheSeal.for_cache(cache)`"  # for error messages
log = logging.getLogger("edgekd.runtime")


def _usable_key(path: Path) -> tuple[bytes | None, str | None]:
    """(key bytes, None) if `path` is a private key file of this user, else (None, why)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:  # ELOOP: a symlink
        return None, f"cannot be opened safely ({exc.strerror})"
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file"
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            return None, f"is owned by uid {st.st_uid}, not by this user"
        if st.st_mode & 0o077:
            return None, f"has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600"
        key = fh.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        return None, f"holds {len(key)} bytes, not {KEY_BYTES}"
    return key, None


def _create_key(path: Path) -> None:
    from edgekd.io import create_new_bytes

    try:
        create_new_bytes(path, os.urandom(KEY_BYTES), private=True)
    except FileExistsError:
        pass  # another process made it first: use theirs


@dataclass(frozen=True)
class CacheSeal:
    """Seals and checks cache entries of one cache folder (`for_cache` makes one)."""

    key: bytes

    @classmethod
    def for_cache(cls, cache: Path) -> CacheSeal | None:
        """The seal of `cache` (its key is created on first use), or None when the key file is
        unusable: the caller then bypasses the cache; the warning says why and how to fix it."""
        seal, why = cls.open_key(cache)
        if seal is None:
            log.warning("cache %s is not used: %s", cache, why)
        return seal

    @classmethod
    def open_key(cls, cache: Path) -> tuple[CacheSeal | None, str | None]:
        """(the seal of `cache`, None), its key created on first use; or (None, why there is no
        usable key: the key file, what is wrong with it and how to fix it). Logs nothing: for
        callers that must refuse rather than bypass (the rollback guard)."""
        cache = Path(cache)
        path = cache / KEY_FILE
        elsewhere = ("choose another cache folder ($EDGEKD_CACHE, cache_dir=): the next load "
                     f"creates the key there, as {_CREATES_KEY} does")
        if cache.exists() and not cache.is_dir():
            return None, f"cannot create its key {path}: {cache} is not a folder; {elsewhere}"
        key, why = _usable_key(path)
        if why == "missing":
            try:
                _create_key(path)
            except OSError as exc:
                return None, f"cannot create its key {path} ({exc}); make {cache} writable or " \
                             f"{elsewhere}"
            key, why = _usable_key(path)
        if key is None:
            return None, (f"its key {path} {why} (delete it to make a new one: the next load "
                          f"creates it, as {_CREATES_KEY} does)")
        return cls(key), None

    def seal(self, kind: str, digest: str, signer: str | None, payload: bytes,
             context: dict[str, Any]) -> str:
        """Hex HMAC-SHA256 over the entry's kind, bundle digest, signer, context and bytes."""
        message = json.dumps(
            {"kind": kind, "bundle_digest": digest, "signer": signer or UNSIGNED,
             "context": context, "payload_sha256": hashlib.sha256(payload).hexdigest()},
            sort_keys=True, separators=(",", ":"),
        ).encode("utf-8")
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def write(self, path: Path, payload: bytes, *, kind: str, digest: str, signer: str | None,
              context: dict[str, Any]) -> None:
        """Write `payload` to `path` and its seal to `path` + SIDECAR_SUFFIX (both atomic)."""
        from edgekd.io import atomic_write_bytes, atomic_write_json

        atomic_write_bytes(path, payload)
        atomic_write_json(sidecar(path), {
            "kind": kind, "bundle_digest": digest, "signer": signer or UNSIGNED,
            "context": context,
            "seal": self.seal(kind, digest, signer, payload, context),
        })

    def read(self, path: Path, *, kind: str, digest: str, signer: str | None,
             context: dict[str, Any]) -> tuple[bytes | None, str | None]:
        """(the entry's bytes, None) if `path` holds an entry sealed for exactly this kind,
        bundle, signer and context; else (None, why) — "missing" when there is no entry. The
        bytes returned are the bytes checked: use them, never reopen the file."""
        try:
            payload = Path(path).read_bytes()
            record = json.loads(sidecar(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, "missing"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"unreadable ({exc})"
        found = record.get("seal") if isinstance(record, dict) else None
        expected = self.seal(kind, digest, signer, payload, context)
        if not isinstance(found, str) or not hmac.compare_digest(found, expected):
            return None, ("its seal does not match this bundle, signer and device, or the file "
                          "changed after it was written")
        return payload, None


def context_hash(context: dict[str, Any]) -> str:
    """Hex sha256 of `context` as sorted-key JSON: the part of a cache entry's file name that
    keeps the entries of different devices, stamps or configs apart (the seal, not the name, is
    what is trusted)."""
    return hashlib.sha256(json.dumps(context, sort_keys=True).encode("utf-8")).hexdigest()


def sidecar(path: Path) -> Path:
    """Where the seal of the cache entry `path` is kept."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)
