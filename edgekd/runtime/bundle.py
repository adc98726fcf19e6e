"""Read and verify an edgekd bundle (see docs/bundle.md); stdlib only, shared with the writer.

The schema constants, the path rules and the hashing live here so that `edgekd.export.bundle`
(the writer) and the runtime (the reader) cannot drift apart: export imports runtime, never the
reverse. Nothing in a bundle is ever unpickled or executed; a manifest is untrusted input.

Reading checks the manifest digest first (and the signature, when trusted keys are given), then
the schema. File hashes are checked either all at once (`verify=True`) or each file the first
time its path is asked for (`Bundle.path`, `Bundle.data_path`): a load hashes only what it opens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgekd.constants import RUNTIME_PRECISIONS
from edgekd.errors import BundleError
from edgekd.runtime.integrity import (
    DIGEST_KEY,
    check_digest,
    check_signature,
    resolve_trusted_keys,
)

FORMAT = "edgekd-bundle"
SCHEMA_VERSION = 2  # 2: manifest digest, held-out windows beside the bundle
SUPPORTED_SCHEMA_VERSIONS = (2,)
MANIFEST = "manifest.json"
SUFFIX = ".edgekd"
ARTIFACT_FORMATS = ("onnx", "openvino_xml", "openvino_bin", "tensorrt_engine")
PRECISIONS = RUNTIME_PRECISIONS
DATA_FILES = ("golden", "eval")  # optional npz entries: {"path", "sha256", "size"}
EVAL_BESIDE = "eval_beside"  # {"sha256", "size"} of `<stem>.eval.npz` next to the bundle
REQUIRED_SECTIONS = ("labels", "modality", "io", "artifacts")
RESERVED_KEYS = ("schema_version", "format", "artifacts", *DATA_FILES, EVAL_BESIDE, DIGEST_KEY)
_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (engines can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_relpath(rel: str) -> str:
    """Return `rel` if it is a plain relative POSIX path inside the bundle, else BundleError.

    A manifest could otherwise make the runtime hash or load `/etc/...` or `../../secret`.
    """
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"artifact path must be a non-empty string, got {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise BundleError(f"artifact path {rel!r} must be relative to the bundle, without '..'")
    if rel == MANIFEST:
        raise BundleError(f"{MANIFEST} cannot be an artifact")
    return rel


def artifact_problem(rel: str, fmt: Any, precision: Any) -> str | None:
    """Why an artifact entry's format / precision is invalid, or None (reader and writer)."""
    if fmt not in ARTIFACT_FORMATS:
        return f"{rel}: unknown format {fmt!r} (known: {', '.join(ARTIFACT_FORMATS)})"
    if precision not in PRECISIONS:
        return f"{rel}: unknown precision {precision!r} (known: {', '.join(PRECISIONS)})"
    return None


def beside_eval_path(root: Path) -> Path:
    """Where held-out windows kept out of a bundle live: out/har.edgekd -> out/har.eval.npz."""
    root = Path(root)
    stem = root.name[: -len(SUFFIX)] if root.name.endswith(SUFFIX) else root.name
    return root.parent / f"{stem}.eval.npz"


def file_record(root: Path, rel: str) -> dict[str, Any]:
    """`{"path", "sha256", "size"}` of the file `root/rel` as the manifest stores it."""
    path = Path(root) / check_relpath(rel)
    return {"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size}


@dataclass(frozen=True)
class Artifact:
    """One model file of a bundle. `extra` keeps the other manifest keys (stamp, quantizer...)."""

    path: str
    format: str
    precision: str
    sha256: str
    size: int
    backend: str | None = None  # set when the artifact is meant for one backend only
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """A bundle whose manifest passed the digest and schema checks (and, if `verified`, every
    sha256 at read time; otherwise each file is checked when its path is first asked for).

    digest: the manifest digest; signer: key_id of the trusted key that signed it, or None.
    """

    root: Path
    manifest: dict[str, Any]
    artifacts: tuple[Artifact, ...]
    verified: bool
    digest: str = ""
    signer: str | None = None
    _checked: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def modality(self) -> dict[str, Any]:
        return dict(self.manifest["modality"])

    @property
    def target(self) -> dict[str, Any]:
        return dict(self.manifest.get("target") or {})

    def path(self, artifact: Artifact | str) -> Path:
        """Absolute path of an artifact (or of a relative path checked like one). A listed file
        is checked against its size and sha256 the first time (BundleError if it differs)."""
        rel = artifact.path if isinstance(artifact, Artifact) else check_relpath(artifact)
        listed = next((a for a in self.artifacts if a.path == rel), None)
        if listed is not None:
            self._check(rel, listed.sha256, listed.size)
        return self.root / rel

    def data_path(self, kind: str) -> Path | None:
        """Path of `golden.npz` / `eval.npz` if the manifest lists it (checked like `path`),
        else None."""
        entry = self.manifest.get(kind)
        if not entry:
            return None
        self._check(entry["path"], str(entry["sha256"]), int(entry["size"]))
        return self.root / entry["path"]

    def beside_eval(self) -> tuple[Path | None, str | None]:
        """(`<stem>.eval.npz` next to the bundle if the manifest records one and the file
        matches it, else None; why not, or None when the manifest records none)."""
        entry = self.manifest.get(EVAL_BESIDE)
        if not entry:
            return None, None
        path = beside_eval_path(self.root)
        if not path.is_file():
            return None, f"{path} not found"
        try:
            _verify_file(path, str(entry["sha256"]), int(entry["size"]))
        except BundleError as exc:
            return None, str(exc)
        return path, None

    def _check(self, rel: str, sha256: str, size: int) -> None:
        if not self.verified and rel not in self._checked:
            _verify_file(self.root / rel, sha256, size)
            self._checked.add(rel)

    def find(self, fmt: str, precision: str, backend: str | None = None) -> Artifact | None:
        """The artifact of this format and precision meant for `backend` (or for any backend).

        An artifact tagged for one backend is preferred by that backend and skipped by others.
        """
        matches = [
            a for a in self.artifacts
            if a.format == fmt and a.precision == precision and a.backend in (None, backend)
        ]
        matches.sort(key=lambda a: a.backend is None)  # tagged for this backend first
        return matches[0] if matches else None


def _require(cond: bool, where: Path, what: str) -> None:
    if not cond:
        raise BundleError(f"{where}: {what}")


def parse_manifest(manifest: Any, where: Path) -> tuple[Artifact, ...]:
    """Check the manifest's schema (not the files); return its artifacts. BundleError if wrong."""
    _require(isinstance(manifest, dict), where, "manifest must be a JSON object")
    fmt = manifest.get("format")
    _require(fmt == FORMAT, where, f"format is {fmt!r}, expected {FORMAT!r}: not an edgekd bundle")
    version = manifest.get("schema_version")
    _require(
        version in SUPPORTED_SCHEMA_VERSIONS,
        where,
        f"unknown schema_version {version!r}; this edgekd reads "
        f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))} "
        "(upgrade edgekd or re-export the bundle)",
    )
    missing = [k for k in REQUIRED_SECTIONS if k not in manifest]
    _require(not missing, where, f"missing section(s): {', '.join(missing)}")
    labels = manifest["labels"]
    _require(
        isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels),
        where, "labels must be a non-empty list of strings",
    )
    _require(isinstance(manifest["modality"], dict), where, "modality must be an object")
    io = manifest["io"]
    for side in ("input", "output"):
        entry = io.get(side) if isinstance(io, dict) else None
        _require(
            isinstance(entry, dict) and isinstance(entry.get("name"), str)
            and isinstance(entry.get("shape"), list),
            where, f"io.{side} must be an object with a name and a shape",
        )
    raw = manifest["artifacts"]
    _require(isinstance(raw, list) and raw, where, "artifacts must be a non-empty list")
    artifacts = []
    for i, entry in enumerate(raw):
        _require(isinstance(entry, dict), where, f"artifacts[{i}] must be an object")
        missing = [k for k in ("path", "format", "precision", "sha256", "size") if k not in entry]
        _require(not missing, where, f"artifacts[{i}] lacks {', '.join(missing)}")
        rel = check_relpath(entry["path"])
        problem = artifact_problem(rel, entry["format"], entry["precision"])
        _require(problem is None, where, str(problem))
        rest = {k: v for k, v in entry.items()
                if k not in ("path", "format", "precision", "sha256", "size", "backend")}
        artifacts.append(Artifact(rel, entry["format"], entry["precision"], str(entry["sha256"]),
                                  int(entry["size"]), entry.get("backend"), rest))
    paths = [a.path for a in artifacts]
    dup = sorted({p for p in paths if paths.count(p) > 1})
    _require(not dup, where, f"artifact(s) listed twice: {', '.join(dup)}")
    for kind in DATA_FILES:
        entry = manifest.get(kind)
        if entry is not None:
            _require(isinstance(entry, dict) and {"path", "sha256", "size"} <= set(entry), where,
                     f"{kind} must be an object with path, sha256 and size")
            check_relpath(entry["path"])
    entry = manifest.get(EVAL_BESIDE)
    if entry is not None:
        _require(isinstance(entry, dict) and {"sha256", "size"} <= set(entry), where,
                 f"{EVAL_BESIDE} must be an object with sha256 and size")
    return tuple(artifacts)


def _verify_file(path: Path, sha256: str, size: int) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: listed in the manifest but missing (re-export the bundle)")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise BundleError(
            f"{path}: size {actual_size} bytes, manifest says {size}: the file changed"
        )
    if sha256_file(path) != sha256:
        raise BundleError(
            f"{path}: sha256 does not match the manifest: the file changed or is corrupt"
        )


def read_bundle(
    path: str | Path,
    *,
    verify: bool = True,
    trusted_keys: Sequence[str | Path] | None = None,
) -> Bundle:
    """Read `path/manifest.json` and check, in this order: its digest; its signature when trusted
    keys are given (None: $EDGEKD_TRUSTED_KEYS; an unsigned or otherwise-signed bundle is then
    refused); its schema; and, if `verify`, every listed file's size and sha256 (else each file
    when first used). BundleError says which file or field is wrong."""
    root = Path(path).expanduser().absolute()
    root = root.resolve()
    if not root.is_dir():
        raise BundleError(f"bundle folder not found: {root}")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} holds no {MANIFEST}: not an edgekd bundle")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON: {exc}") from exc
    _require(isinstance(manifest, dict), mpath, "manifest must be a JSON object")
    if DIGEST_KEY not in manifest:
        parse_manifest(manifest, mpath)  # an old or foreign manifest: say why in its terms
        raise BundleError(f"{mpath}: field 'digest' missing: the manifest is not protected")
    # Digest first: nothing else in the manifest is believed before it matches.
    digest = check_digest(manifest, mpath)
    keys = resolve_trusted_keys(trusted_keys)
    signer = check_signature(root, digest, keys) if keys else None
    artifacts = parse_manifest(manifest, mpath)
    if verify:
        for a in artifacts:
            _verify_file(root / a.path, a.sha256, a.size)
        for kind in DATA_FILES:
            entry = manifest.get(kind)
            if entry:
                _verify_file(root / entry["path"], str(entry["sha256"]), int(entry["size"]))
    return Bundle(root, manifest, artifacts, verify, digest, signer)


def verify_bundle(path: str | Path, trusted_keys: Sequence[str | Path] | None = None) -> Bundle:
    """`read_bundle(path, verify=True)`: raises BundleError unless every file matches."""
    return read_bundle(path, verify=True, trusted_keys=trusted_keys)
