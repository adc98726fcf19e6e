"""Write an edgekd bundle atomically (the contract is docs/bundle.md).

    with BundleWriter(Path("out/har.edgekd"), force=True) as w:
        w.add_file("model.fp32.onnx", onnx_path, format="onnx", precision="fp32")
        w.add_openvino_ir(xml_path, precision="int8")
        w.add_npz("golden", x=windows, probs=probs)
        w.set("labels", labels); w.set("modality", spec.to_dict()); w.set("io", io)

Files are staged in a hidden folder next to `out`; on a clean exit sizes and sha256 are computed
from the staged bytes, `manifest.json` (with its digest) is written last, `signature.json` when a
signing key is given, and the folder is put in place: by one rename, or, replacing a bundle
(`force`), by one atomic exchange where the OS has it, so that readers always find a complete
bundle at `out` (docs/bundle.md, "Replacing a bundle"). An exception inside the block removes the
staging folder and leaves `out` as it was. Held-out windows (`add_npz("eval", ...)`) go beside
the bundle as `<stem>.eval.npz` unless `with_eval`. Every file is written through `edgekd.io`.
Leftovers of a killed writer (staging folders, a half-done swap) are cleaned up or restored by
the next writer of the same `out`; readers never change the filesystem.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from edgekd import __version__
from edgekd.errors import BundleError, ExportError
from edgekd.io import (
    atomic_copy_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    create_new_bytes,
    exchange_paths,
    fsync_path,
    hidden_sibling,
    make_dirs,
    process_alive,
    remove_tree,
    rename_path,
    replace_path,
    sibling_owner,
)
from edgekd.runtime.bundle import (
    DATA_FILES,
    EVAL_BESIDE,
    FORMAT,
    MANIFEST,
    REQUIRED_SECTIONS,
    RESERVED_KEYS,
    SCHEMA_VERSION,
    VERSION_KEY,
    BundleDir,
    artifact_problem,
    beside_eval_path,
    check_relpath,
    file_record,
    read_bundle,
    sha256_file,
)
from edgekd.runtime.integrity import DIGEST_KEY, SIGNATURE, digest_entry, signature_record

# Test hook: a writer pauses (prints `paused at STEP` on stderr, then sleeps) at the named step,
# so a test can SIGKILL a real export there. Steps: staged, moved-aside (two-rename swap only),
# swapped.
PAUSE_ENV = "EDGEKD_WRITER_PAUSE_AT"
# Hidden siblings a writer of `out` creates: `.NAME.<pid>-<8 hex>.<kind>`; the pid tells a later
# writer whether their owner still runs. "old" is the bundle moved aside by a two-rename swap.
_SIBLING_KINDS = ("staging", "eval", "old")


@dataclass(frozen=True)
class WriterOptions:
    """Defaults of BundleWriters created inside `writer_options` (e.g. deep inside an export)."""

    with_eval: bool = False
    sign_key: Path | None = None


_OPTIONS: ContextVar[WriterOptions | None] = ContextVar("edgekd_writer_options", default=None)


@contextlib.contextmanager
def writer_options(*, with_eval: bool = False, sign_key: Path | None = None) -> Iterator[None]:
    """Within the block, BundleWriters keep eval.npz inside when `with_eval` and sign with
    `sign_key` (a PEM Ed25519 private key) unless told otherwise."""
    token = _OPTIONS.set(WriterOptions(with_eval, None if sign_key is None else Path(sign_key)))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def check_replaceable(out: Path) -> None:
    """ExportError unless `out` is an edgekd bundle folder that `force` may replace: a real
    folder (not a symlink) whose manifest.json, read as the runtime reads it (no symlink, strict
    JSON), says `"format": "edgekd-bundle"`.
    Force must never be able to delete an arbitrary folder or file."""
    out = Path(out)
    if out.is_symlink():
        why = "it is a symlink"
    elif not out.is_dir():
        why = "it is not a folder"
    else:
        why = _judged_in_place(out)
    if why is not None:
        raise ExportError(
            f"refusing to replace {out}: {why}; force (--force) only replaces an edgekd bundle "
            f"(a folder whose {MANIFEST} says \"format\": \"{FORMAT}\"). Nothing was deleted; "
            "choose another output path or remove it yourself"
        )


def _judged_in_place(out: Path, tries: int = 5) -> str | None:
    """`_not_a_bundle(out)`, judged again when another publisher swapped `out` while it was being
    read (the folder read is then the old bundle, on its way to deletion)."""
    why = None
    for _ in range(tries):
        try:
            before = os.lstat(out).st_ino
            why = _not_a_bundle(out)
            if why is None or os.lstat(out).st_ino == before:
                return why
        except FileNotFoundError as exc:
            why = f"it vanished while being checked ({exc})"
    return why


def _not_a_bundle(out: Path) -> str | None:
    # the reader's own JSON reader: what force may delete is judged as the runtime reads it
    try:
        data = BundleDir(out).read_json(MANIFEST)
    except (BundleError, OSError) as exc:  # OSError: e.g. a folder this user cannot open
        return f"its {MANIFEST} cannot be read as JSON ({exc})"
    if data is None:
        return f"it holds no {MANIFEST}"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        return f"its {MANIFEST} has format {found!r}, not {FORMAT!r}"
    return None


class BundleWriter:
    """Stage files and manifest sections, then publish the bundle atomically.

    `out` existing raises ExportError unless `force`; with `force` an existing bundle is replaced
    only after the new one is complete, and kept if the swap fails. Anything but an edgekd
    bundle is never replaced (`check_replaceable`).
    """

    def __init__(
        self,
        out: Path,
        force: bool = False,
        *,
        with_eval: bool | None = None,
        sign_key: Path | None = None,
    ) -> None:
        defaults = _OPTIONS.get() or WriterOptions()
        self.out = Path(out).expanduser().absolute()
        self.force = force
        self.with_eval = defaults.with_eval if with_eval is None else with_eval
        self.sign_key = defaults.sign_key if sign_key is None else Path(sign_key)
        self.manifest: dict[str, Any] | None = None  # the published manifest, after a clean exit
        self._staging: Path | None = None
        self._kept: Path | None = None  # where a failed swap left the new bundle
        self._eval_staged: Path | None = None  # eval.npz waiting beside the bundle
        self._sections: dict[str, Any] = {}
        self._artifacts: list[dict[str, Any]] = []
        self._data: dict[str, str] = {}

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> BundleWriter:
        if self.out.parent.is_dir():
            self._clean_dead_writers()
        self._check_target()
        if self.sign_key is not None:  # fail before the work, not after it
            signature_record("0" * 64, self.sign_key)
        make_dirs(self.out.parent)  # new parents fsynced too: the publish's fsync covers out only
        self._staging = self._sibling("staging")
        # plain mkdir: the published folder gets the usual umask modes; publishing fsyncs parent
        self._staging.mkdir()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._staging is not None
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._kept != self._staging:
                remove_tree(self._staging)
            if self._eval_staged is not None:
                self._eval_staged.unlink(missing_ok=True)

    @property
    def staging(self) -> Path:
        """The staging folder (valid inside the `with` block)."""
        if self._staging is None:
            raise ExportError("BundleWriter used outside its `with` block")
        return self._staging

    # -- content -------------------------------------------------------------------------------
    def add_file(
        self, rel_path: str, source: Path | bytes, *, format: str, precision: str, **extra: Any
    ) -> Path:
        """Copy `source` (a file or bytes) to `rel_path` in the bundle and list it as an artifact.

        `extra` goes into the artifact entry verbatim (e.g. `quantizer=`, `backend=`, `stamp=`).
        Returns the staged path.
        """
        problem = artifact_problem(rel_path, format, precision)
        if problem is not None:
            raise ExportError(problem)
        reserved = {"path", "format", "precision", "sha256", "size"} & set(extra)
        if reserved:
            raise ExportError(f"{rel_path}: {', '.join(sorted(reserved))} are set by the writer")
        dest = self._claim(rel_path)
        if isinstance(source, bytes):
            atomic_write_bytes(dest, source)
        else:
            if not Path(source).is_file():
                raise ExportError(f"cannot add {source} to the bundle: file not found")
            atomic_copy_file(source, dest)
        self._artifacts.append(
            {"path": rel_path, "format": format, "precision": precision, **extra}
        )
        return dest

    def add_openvino_ir(self, xml: Path, *, precision: str, **extra: Any) -> tuple[Path, Path]:
        """Add an OpenVINO IR pair as `openvino/model.<precision>.xml/.bin`.

        The .bin must sit next to the .xml with the same stem (how OpenVINO finds it); both are
        renamed together so that pairing survives.
        """
        xml = Path(xml)
        stem = f"openvino/model.{precision}"
        x = self.add_file(f"{stem}.xml", xml, format="openvino_xml", precision=precision, **extra)
        b = self.add_file(
            f"{stem}.bin",
            xml.with_suffix(".bin"),
            format="openvino_bin",
            precision=precision,
            **extra,
        )
        return x, b

    def add_npz(self, kind: str, **arrays: np.ndarray) -> Path:
        """Write `golden.npz` or `eval.npz` (numeric arrays only: it is read without pickle).
        Without `with_eval`, eval goes beside the bundle (`<stem>.eval.npz`), recorded in the
        manifest by sha256 and size only."""
        if kind not in DATA_FILES:
            raise ExportError(f"add_npz kind must be one of {', '.join(DATA_FILES)}, got {kind!r}")
        if kind in self._data:
            raise ExportError(f"{kind}.npz added twice")
        for name, arr in arrays.items():
            if np.asarray(arr).dtype.hasobject:
                raise ExportError(
                    f"{kind}.npz: array {name!r} has dtype object; only numeric arrays"
                )
        buf = _io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        if kind == "eval" and not self.with_eval:
            dest = self._eval_staged = self._sibling("eval")
            create_new_bytes(dest, buf.getvalue())  # its pid-named name is its temp name
        else:
            dest = self._claim(f"{kind}.npz")
            atomic_write_bytes(dest, buf.getvalue())
        self._data[kind] = f"{kind}.npz"
        return dest

    def set(self, key: str, value: Any) -> None:
        """Set a manifest section (labels, modality, io, model, accuracy, target, ...)."""
        if key in RESERVED_KEYS:
            raise ExportError(f"manifest key {key!r} is written by BundleWriter itself")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ExportError(f"manifest section {key!r} is not plain JSON: {exc}") from exc
        self._sections[key] = value

    # -- internals -----------------------------------------------------------------------------
    def _claim(self, rel_path: str) -> Path:
        try:
            check_relpath(rel_path)
        except BundleError as exc:
            raise ExportError(str(exc)) from exc
        dest = self.staging / rel_path
        if dest.exists():
            raise ExportError(f"{rel_path} added to the bundle twice")
        return dest

    def _sibling(self, kind: str) -> Path:
        """An unused `edgekd.io.hidden_sibling` of `out`."""
        while True:
            path = hidden_sibling(self.out, kind)
            if not (path.exists() or path.is_symlink()):
                return path

    def _clean_dead_writers(self) -> None:
        """Remove what writers of `out` that no longer run left beside it (staging folders, eval
        files), and finish their half-done two-rename swaps: their old bundle goes back to `out`
        if `out` is missing (killed between the renames), else it is deleted. Live writers'
        siblings are left alone."""
        for path in sorted(self.out.parent.iterdir()):
            owner = sibling_owner(self.out, path.name, _SIBLING_KINDS)
            if owner is None or process_alive(owner[0]):
                continue
            restore = owner[1] == "old" and not (self.out.exists() or self.out.is_symlink())
            if restore and path.is_dir() and not path.is_symlink():
                rename_path(path, self.out)
            else:
                remove_tree(path)

    def _check_target(self) -> None:
        if not (self.out.exists() or self.out.is_symlink()):
            return
        if not self.force:
            raise ExportError(f"{self.out} exists; pass force (--force) to replace it")
        check_replaceable(self.out)

    def _finish(self) -> None:
        missing = [k for k in REQUIRED_SECTIONS if k != "artifacts" and k not in self._sections]
        if missing:
            raise ExportError(
                f"bundle incomplete: manifest section(s) {', '.join(missing)} never set"
            )
        if not self._artifacts:
            raise ExportError("bundle incomplete: no model artifact was added")
        artifacts = [{**a, **file_record(self.staging, a["path"])} for a in self._artifacts]
        provenance = {
            "edgekd": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **self._sections.get("provenance", {}),
        }
        data = {kind: file_record(self.staging, rel) for kind, rel in self._data.items()
                if self._eval_staged is None or kind != "eval"}
        if self._eval_staged is not None:
            data[EVAL_BESIDE] = {"sha256": sha256_file(self._eval_staged),
                                 "size": self._eval_staged.stat().st_size}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "format": FORMAT,
            VERSION_KEY: time.time_ns(),  # rollback order: later exports of one signer are newer
            **{k: v for k, v in self._sections.items() if k != "provenance"},
            "artifacts": artifacts,
            **data,
            "provenance": provenance,
        }
        manifest[DIGEST_KEY] = digest_entry(manifest)
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        atomic_write_text(self.staging / MANIFEST, text)
        if self.sign_key is not None:
            record = signature_record(manifest[DIGEST_KEY]["value"], self.sign_key)
            atomic_write_json(self.staging / SIGNATURE, record)
        try:
            # the reader is the judge of what we wrote
            read_bundle(self.staging, verify=True, trusted_keys=[])
        except BundleError as exc:
            raise ExportError(f"the bundle written does not read back: {exc}") from exc
        _pause_point("staged")
        self._publish()
        if self._eval_staged is not None:  # after the bundle: a failed publish keeps old + old
            replace_path(self._eval_staged, beside_eval_path(self.out))
            self._eval_staged = None
        self.manifest = manifest

    def _publish(self) -> None:
        """Put the staged bundle at `out`. No bundle there yet: one rename. Else the staged
        folder and the old bundle are exchanged in one atomic step (`exchange_paths`), so `out`
        names a complete bundle at every moment, and the old one, now at the staging name, is
        deleted. Where the OS cannot exchange, `_swap_by_renames`."""
        staging = self.staging
        if not (self.out.exists() or self.out.is_symlink()):
            try:
                rename_path(staging, self.out)
            except OSError as exc:  # created meanwhile by someone else
                raise ExportError(f"cannot publish the bundle at {self.out}: {exc}") from exc
            return
        self._check_target()
        try:
            exchanged = exchange_paths(staging, self.out)
        except OSError as exc:
            raise ExportError(f"cannot replace {self.out}: {exc}; the old bundle was kept") from exc
        if not exchanged:
            self._swap_by_renames()
            return
        fsync_path(self.out.parent)
        _pause_point("swapped")
        remove_tree(staging)

    def _swap_by_renames(self) -> None:
        """Old bundle to `.NAME.<pid>-<hex>.old`, staged one to `out`, then the old one deleted.
        Readers may find no `out` between the renames. If the second rename fails the old bundle
        is renamed back; if that fails too, the new bundle is kept at a visible name (never
        deleted) and the error says where both are. A writer killed in between is repaired by
        the next writer (`_clean_dead_writers`)."""
        staging, backup = self.staging, self._sibling("old")
        try:
            rename_path(self.out, backup)
        except OSError as exc:
            raise ExportError(f"cannot replace {self.out}: moving the old bundle aside failed "
                              f"({exc})") from exc
        _pause_point("moved-aside")
        try:
            rename_path(staging, self.out)
        except OSError as exc:
            try:
                rename_path(backup, self.out)
            except OSError as undo:
                self._kept = self._keep_new()
                raise ExportError(
                    f"cannot replace {self.out}: {exc}; putting the old bundle back failed too "
                    f"({undo}). The old bundle is at {backup}, the new one at {self._kept}: "
                    f"rename the one you want to {self.out}"
                ) from exc
            raise ExportError(f"cannot replace {self.out}: {exc}; the old bundle was kept") from exc
        _pause_point("swapped")
        remove_tree(backup)

    def _keep_new(self) -> Path:
        """Move the staged bundle to a visible name that no writer cleans up; where even that
        rename fails it stays at the staging name, which this writer then does not delete."""
        kept = self.out.with_name(f"{self.out.name}.new-{secrets.token_hex(4)}")
        try:
            rename_path(self.staging, kept)
        except OSError:
            return self.staging
        return kept


def _pause_point(step: str) -> None:
    if os.environ.get(PAUSE_ENV) == step:
        print(f"paused at {step}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)
