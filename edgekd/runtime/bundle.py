"""Read and verify an edgekd bundle (see docs/bundle.md); stdlib only, shared with the writer.

The schema constants, the path rules and the hashing live here so that `edgekd.export.bundle`
(the writer) and the runtime (the reader) cannot drift apart: export imports runtime, never the
reverse. Nothing in a bundle is ever unpickled or executed; a manifest is untrusted input.

Reading opens the bundle folder once, walks its whole tree without following links (a symlink
anywhere inside, to a file or a folder, listed in the manifest or not, makes the whole bundle a
BundleError naming the link, for `info`, `run`, `bench` and `rt.load` alike), and reads every file
relative to that descriptor, each path component opened without following symlinks. The manifest
digest is checked first (and the signature, when trusted keys are given), then the schema, the
version floor and, for signed bundles, the device's rollback record. Model and data files are
read once, hashed, and the same bytes are handed to whoever loads them (`Bundle.read`,
`Bundle.read_data`): nothing is reopened by path between the check and the use. With
`verify=True` every listed file is also checked at read time.

A publish that replaces the bundle folder while it is being read (the writer exchanges the
folders, then deletes the old one) makes a read fail; when the path then names another folder
than the one opened, the read raises `BundleReplaced` and `read_bundle` / `rt.load` start again
from the new folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from edgekd.constants import RUNTIME_PRECISIONS
from edgekd.errors import BundleError
from edgekd.runtime.digest import DIGEST_KEY, check_digest, strict_json
from edgekd.runtime.rollback import check_rollback
from edgekd.runtime.signature import SIGNATURE, check_signature, resolve_trusted_keys

FORMAT = "edgekd-bundle"
SCHEMA_VERSION = 3  # 2: manifest digest, held-out windows beside the bundle; 3: version
SUPPORTED_SCHEMA_VERSIONS = (2, 3)
MANIFEST = "manifest.json"
SUFFIX = ".edgekd"
ARTIFACT_FORMATS = ("onnx", "openvino_xml", "openvino_bin", "tensorrt_engine")
PRECISIONS = RUNTIME_PRECISIONS
DATA_FILES = ("golden", "eval")  # optional npz entries: {"path", "sha256", "size"}
EVAL_BESIDE = "eval_beside"  # {"sha256", "size"} of `<stem>.eval.npz` next to the bundle
VERSION_KEY = "version"  # schema 3: integer, higher = newer (the writer: creation time in ns)
REQUIRED_SECTIONS = ("labels", "modality", "io", "artifacts")
RESERVED_KEYS = ("schema_version", "format", "artifacts", *DATA_FILES, EVAL_BESIDE, DIGEST_KEY,
                 VERSION_KEY)
REPLACED_RETRIES = 5  # whole reads retried after concurrent publishes, before giving up
_JSON_MAX_BYTES = 16 << 20  # manifest.json / signature.json: far above any real one
_HASH_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in a bundle must not hang the reader (refused after fstat)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
T = TypeVar("T")


class BundleReplaced(BundleError):
    """The bundle folder was replaced while it was being read (a concurrent publish): the read
    failed on the old folder and the path now names another one. Read it again."""


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


def load_npz(data: bytes) -> dict[str, Any]:
    """The arrays of npz bytes (numeric only: `allow_pickle=False`), read from the bytes that
    were checked, never from the file again. BundleError for an array that would need
    unpickling (an object array) or bytes that are no npz."""
    import numpy as np  # lazily: the writer and the manifest checks need no numpy

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(
            f"a data file of the bundle holds an array that is not plain numbers (object "
            f"arrays would need unpickling, which a bundle never does), or is no npz: {exc}"
        ) from exc


def _read_fd(fd: int, where: Path, limit: int) -> tuple[bytes, int]:
    """(up to `limit` + 1 bytes of the open file `fd`, its size); BundleError unless it is a
    regular file. Reading one byte past `limit` shows a file longer than expected without
    reading all of it."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{where}: not a regular file")
    chunks, left = [], limit + 1
    while left > 0:
        block = os.read(fd, min(left, _HASH_CHUNK))
        if not block:
            break
        chunks.append(block)
        left -= len(block)
    return b"".join(chunks), st.st_size


def _mismatch(data: bytes, actual: int, sha256: str, size: int, where: Path) -> str | None:
    """Why `data` (read from `where`, a file of `actual` bytes) is not the file the manifest
    records as `sha256` / `size`, or None when it is."""
    if actual != size or len(data) != size:
        return f"{where}: size {actual} bytes, manifest says {size}: the file changed"
    if hashlib.sha256(data).hexdigest() != sha256:
        return f"{where}: sha256 does not match the manifest: the file changed or is corrupt"
    return None


class BundleDir:
    """A bundle folder opened once (its descriptor is closed with this object). Files are read
    relative to it, each path component opened with O_NOFOLLOW, so nothing outside the bundle is
    reached; `check_no_symlinks` refuses a symlink anywhere in the tree, read or not."""

    def __init__(self, path: Path) -> None:
        self.path = path  # as given (not resolved): `replaced` compares what it names now
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise BundleError(f"bundle folder not found: {path}") from None
        weakref.finalize(self, os.close, self.fd)

    def replaced(self) -> bool:
        """Whether the path now names another folder than the one opened (or none)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return True
        opened = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)

    def read(self, rel: str, limit: int) -> tuple[bytes, int] | None:
        """(up to `limit` + 1 bytes of the file `rel`, its size), or None if it does not exist.
        BundleError if `rel` or a folder on the way is a symlink or not what it should be."""
        if rel != MANIFEST:  # the one file that is no artifact
            check_relpath(rel)
        parts = rel.split("/")
        opened: list[int] = []
        try:
            parent = self.fd
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    fd = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=parent)
                except FileNotFoundError:
                    return None
                except OSError as exc:
                    raise self._refusal("/".join(parts[: i + 1]), parent, part, exc) from None
                opened.append(fd)
                parent = fd
            return _read_fd(parent, self.path / rel, limit)
        finally:
            for fd in opened:
                os.close(fd)

    def check_no_symlinks(self) -> None:
        """BundleError naming the first symlink found anywhere in the bundle folder (a file or a
        folder, listed in the manifest or not). The tree is walked once, relative to the opened
        descriptor and without following any link, so a link planted anywhere makes the whole
        bundle invalid, not only a read of the linked file."""
        self._walk(self.fd, "")

    def _walk(self, dir_fd: int, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(dir_fd), key=lambda e: e.name)
        except OSError as exc:
            raise BundleError(f"{self.path / prefix}: cannot be listed ({exc.strerror})") from None
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            try:
                is_link, is_dir = entry.is_symlink(), entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile (a publish deleting the old folder)
                raise BundleError(f"{self.path / rel}: vanished while the bundle was read"
                                  ) from None
            if is_link:
                raise BundleError(f"{self.path / rel}: is a symlink; symlinks inside a bundle "
                                  "are refused, and the whole bundle with them (replace the "
                                  "link with a copy of what it points to, or re-export)")
            if not is_dir:
                continue
            try:  # O_NOFOLLOW: a folder swapped for a link after the listing is refused too
                fd = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                raise BundleError(f"{self.path / rel}: vanished while the bundle was read"
                                  ) from None
            except OSError as exc:
                raise self._refusal(rel, dir_fd, entry.name, exc) from None
            try:
                self._walk(fd, f"{rel}/")
            finally:
                os.close(fd)

    def _refusal(self, rel: str, parent: int, name: str, exc: OSError) -> BundleError:
        where = self.path / rel
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                is_link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
            except OSError:
                is_link = False
            if is_link:
                return BundleError(f"{where}: is a symlink; symlinks inside a bundle are refused "
                                   "(copy the file into the bundle)")
            if exc.errno == errno.ENOTDIR:
                return BundleError(f"{where}: is not a folder")
        return BundleError(f"{where}: cannot be read ({exc.strerror})")

    def read_json(self, name: str) -> Any | None:
        """The strictly parsed JSON file `name`, or None if it does not exist."""
        found = self.read(name, _JSON_MAX_BYTES)
        if found is None:
            return None
        data, size = found
        if size > _JSON_MAX_BYTES:
            raise BundleError(f"{self.path / name}: {size} bytes, more than the "
                              f"{_JSON_MAX_BYTES} a bundle's JSON may have")
        return strict_json(data, self.path / name)

    def checked(self, rel: str, sha256: str, size: int) -> bytes:
        """The bytes of `rel` after checking their size and sha256 against the manifest's.
        BundleReplaced if the read failed because the folder was replaced meanwhile."""
        with self.replacement_check():
            found = self.read(rel, size)
            where = self.path / rel
            if found is None:
                raise BundleError(f"{where}: listed in the manifest but missing "
                                  "(re-export the bundle)")
            data, actual = found
            problem = _mismatch(data, actual, sha256, size, where)
            if problem is not None:
                raise BundleError(problem)
            return data

    @contextlib.contextmanager
    def replacement_check(self) -> Iterator[None]:
        """A context in which a BundleError becomes BundleReplaced when the folder was replaced
        (a publish deleting the old folder under the reader is no error of the bundle)."""
        try:
            yield
        except BundleReplaced:
            raise
        except BundleError as exc:
            if self.replaced():
                raise BundleReplaced(f"{self.path} was replaced while it was read ({exc})") \
                    from exc
            raise


def retry_if_replaced(read: Callable[[int], T]) -> T:
    """`read(attempt)` for attempt 0, 1, ..., again each time it raises BundleReplaced (a
    concurrent publish), at most REPLACED_RETRIES times; then the last BundleReplaced."""
    for attempt in range(REPLACED_RETRIES - 1):
        try:
            return read(attempt)
        except BundleReplaced:
            continue
    return read(REPLACED_RETRIES - 1)


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
    """A bundle whose manifest passed the digest, signature (when keys apply), schema and version
    checks; if `verified`, every listed file matched at read time too.

    Content is read through `folder`, the bundle folder opened once: `read` / `read_data` return
    the checked bytes, which are what a backend must load (never the file again by path).
    digest: the manifest digest; signer: key_id of the trusted key that signed it, or None.
    """

    root: Path
    manifest: dict[str, Any]
    artifacts: tuple[Artifact, ...]
    verified: bool
    folder: BundleDir = field(repr=False, compare=False)
    digest: str = ""
    signer: str | None = None
    _data: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def modality(self) -> dict[str, Any]:
        return dict(self.manifest["modality"])

    @property
    def target(self) -> dict[str, Any]:
        return dict(self.manifest.get("target") or {})

    @property
    def version(self) -> int | None:
        """The manifest's `version` (higher = newer), None for a schema 2 bundle."""
        return self.manifest.get(VERSION_KEY)

    def _listed(self, artifact: Artifact | str) -> Artifact:
        rel = artifact.path if isinstance(artifact, Artifact) else check_relpath(artifact)
        listed = next((a for a in self.artifacts if a.path == rel), None)
        if listed is None:
            raise BundleError(f"{self.root}: {rel} is not an artifact listed in the manifest")
        return listed

    def read(self, artifact: Artifact | str) -> bytes:
        """The bytes of a listed artifact (or of its bundle-relative path), read once and checked
        against the manifest's size and sha256: load these bytes, do not reopen the file.
        BundleError if it is missing, changed, a symlink or not listed; BundleReplaced if the
        folder was replaced meanwhile (read the bundle again)."""
        a = self._listed(artifact)
        return self.folder.checked(a.path, a.sha256, a.size)

    def read_data(self, kind: str) -> bytes | None:
        """The checked bytes of `golden.npz` / `eval.npz` if the manifest lists it, else None;
        kept after the first read (small, and used by load, self_check and bench alike)."""
        entry = self.manifest.get(kind)
        if not entry:
            return None
        if kind not in self._data:
            self._data[kind] = self.folder.checked(entry["path"], str(entry["sha256"]),
                                                   int(entry["size"]))
        return self._data[kind]

    def beside_eval(self) -> tuple[bytes | None, str | None]:
        """(the checked bytes of `<stem>.eval.npz` next to the bundle if the manifest records one
        and the file matches it, else None; why not, or None when the manifest records none).
        The file is opened without following a symlink and read once."""
        entry = self.manifest.get(EVAL_BESIDE)
        if not entry:
            return None, None
        path = beside_eval_path(self.root)
        size = int(entry["size"])
        try:
            fd = os.open(path, _FILE_FLAGS)
        except FileNotFoundError:
            return None, f"{path} not found"
        except OSError as exc:
            return None, f"{path}: cannot be read safely ({exc.strerror})"
        try:
            data, actual = _read_fd(fd, path, size)
        except BundleError as exc:
            return None, str(exc)
        finally:
            os.close(fd)
        problem = _mismatch(data, actual, str(entry["sha256"]), size, path)
        return (data, None) if problem is None else (None, problem)

    def held_out(self) -> tuple[bytes | None, str | None]:
        """The checked bytes of the held-out windows: `eval.npz` inside the bundle, else the
        matching `<stem>.eval.npz` beside it (`beside_eval`); with None, why there are none
        (None when the manifest records none at all)."""
        inside = self.read_data("eval")
        return (inside, None) if inside is not None else self.beside_eval()

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
    order = manifest.get(VERSION_KEY)
    if version != 2 or order is not None:
        _require(type(order) is int and order >= 0, where,  # bool is no version
                 f"field 'version' must be a non-negative integer, found {order!r}")
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


def check_min_version(version: int | None, min_version: int | None, where: Path) -> None:
    """BundleError if `min_version` is set and the bundle's version is lower (or absent)."""
    if min_version is None:
        return
    if version is None:
        raise BundleError(f"{where}: the bundle has no version (schema_version 2) and version "
                          f">= {min_version} is required; re-export it")
    if version < min_version:
        raise BundleError(f"{where}: bundle version {version} is older than the minimum "
                          f"{min_version} required")


def _read_once(path: Path, verify: bool, keys: Sequence[Path]) -> Bundle:
    folder = BundleDir(path)
    root = path.resolve()
    mpath = root / MANIFEST
    with folder.replacement_check():
        folder.check_no_symlinks()  # once per read: a link anywhere refuses the whole bundle
        manifest = folder.read_json(MANIFEST)
        if manifest is None:
            raise BundleError(f"{root} holds no {MANIFEST}: not an edgekd bundle")
        _require(isinstance(manifest, dict), mpath, "manifest must be a JSON object")
        if DIGEST_KEY not in manifest:
            parse_manifest(manifest, mpath)  # an old or foreign manifest: say why in its terms
            raise BundleError(f"{mpath}: field 'digest' missing: the manifest has no digest, so "
                              "not even accidental corruption would be detected (re-export it)")
        # Digest first: nothing else in the manifest is believed before it matches.
        digest = check_digest(manifest, mpath)
        signer = None
        if keys:
            signer = check_signature(root / SIGNATURE, folder.read_json(SIGNATURE), digest, keys)
        artifacts = parse_manifest(manifest, mpath)
    bundle = Bundle(root, manifest, artifacts, verify, folder, digest, signer)
    if verify:
        for a in artifacts:
            bundle.read(a)
        for kind in DATA_FILES:
            bundle.read_data(kind)
    return bundle


def read_bundle(
    path: str | Path,
    *,
    verify: bool = True,
    trusted_keys: Sequence[str | Path] | None = None,
    min_version: int | None = None,
    allow_rollback: bool = False,
    cache_dir: str | Path | None = None,
) -> Bundle:
    """Read `path/manifest.json` and check, in this order: that no symlink is anywhere in the
    bundle folder (BundleError naming it); its digest; its signature when trusted
    keys are given (None: $EDGEKD_TRUSTED_KEYS; an unsigned or otherwise-signed bundle is then
    refused); its schema; if `verify`, every listed file's size and sha256 (else each file when
    it is read); its version against `min_version`; and, for a signed bundle, against the
    newest version of the same signer this device has read (the rollback record in
    `cache_dir`, default `edgekd.runtime.cache_dir()`; see `rollback.check_rollback`), unless
    `allow_rollback`. BundleError says which file or field is wrong. Nothing in the bundle
    folder is changed; a publish replacing the folder meanwhile makes it read the new one."""
    keys = resolve_trusted_keys(trusted_keys)
    return retry_if_replaced(lambda _: read_bundle_once(
        path, verify=verify, trusted_keys=keys, min_version=min_version,
        allow_rollback=allow_rollback, cache_dir=cache_dir))


def read_bundle_once(
    path: str | Path,
    *,
    verify: bool,
    trusted_keys: Sequence[Path],
    min_version: int | None,
    allow_rollback: bool,
    cache_dir: str | Path | None,
) -> Bundle:
    """One attempt of `read_bundle` (`trusted_keys` already resolved: [] = none required): it
    raises BundleReplaced where `read_bundle` starts again, for callers whose own retry covers
    more than the read (`rt.load` compiles inside it) and must not nest a second one."""
    where = Path(path).expanduser().absolute()
    bundle = _read_once(where, verify, trusted_keys)
    check_min_version(bundle.version, min_version, bundle.root / MANIFEST)
    if bundle.signer is not None and not allow_rollback:
        if cache_dir is None:
            from edgekd.runtime.backends import cache_dir as default_cache_dir

            cache_dir = default_cache_dir()
        check_rollback(Path(cache_dir), bundle.signer, bundle.version, bundle.root / MANIFEST)
    return bundle


def verify_bundle(path: str | Path, trusted_keys: Sequence[str | Path] | None = None) -> Bundle:
    """`read_bundle(path, verify=True)`: raises BundleError unless every file matches."""
    return read_bundle(path, verify=True, trusted_keys=trusted_keys)
