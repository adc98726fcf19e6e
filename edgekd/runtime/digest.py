"""The manifest digest, and the strict JSON parser for untrusted manifests and signature records.

The contract is docs/bundle.md, "Integrity". Digest: sha256 of the canonical manifest, i.e. the
manifest without its `digest` key, serialised as JSON with sorted keys, no whitespace (separators
`,` and `:`), non-ASCII kept as UTF-8, NaN and infinity refused. It is stored in the manifest as
`"digest": {"algorithm": "sha256", "value": HEX}`. Every file entry of the manifest holds that
file's sha256, so the digest pins every byte the runtime may load. Without trusted keys the
digest only detects accidents (a truncated copy, a flipped bit, a careless edit): whoever can
change the manifest can recompute it; `edgekd.runtime.signature` is what stops that. Manifests
and signature records are parsed strictly (`strict_json`): a duplicate key, NaN, or a lone
surrogate is refused, so one file cannot mean two things to two parsers.

Standard library only; the bottom of the bundle checks (`bundle` reads, `export.bundle` writes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgekd.errors import BundleError

DIGEST_KEY = "digest"


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
