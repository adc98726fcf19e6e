"""Publishing a bundle over an existing one: readers always find a complete bundle, a failed swap
loses neither bundle, force replaces nothing but a bundle, and readers never change anything."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from runtime_synth import leftovers, write_minimal

import edgekd.export.bundle as writer_module
from edgekd.errors import BundleError, ExportError
from edgekd.export.bundle import check_replaceable
from edgekd.runtime import read_bundle


def model_bytes(out: Path) -> bytes:
    return (read_bundle(out).root / "model.fp32.onnx").read_bytes()


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_ino) for p in folder.iterdir())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def no_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer as on an OS without RENAME_EXCHANGE: the two-rename swap."""
    monkeypatch.setattr(writer_module, "exchange_paths", lambda a, b: False)


def test_readers_always_find_the_bundle_while_it_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "m.edgekd"
    write_minimal(out, payload=b"v0")
    stop = threading.Event()
    failures: dict[bool, list[str]] = {False: [], True: []}
    reads = {False: 0, True: 0}

    def reader(verify: bool) -> None:
        while not stop.is_set():
            try:
                read_bundle(out, verify=verify, trusted_keys=[])
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                failures[verify].append(f"{type(exc).__name__}: {exc}")
            else:
                reads[verify] += 1

    threads = [threading.Thread(target=reader, args=(v,)) for v in (False, True)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 101):
            manifest = write_minimal(out, payload=f"v{i}".encode(), force=True)
            assert (out / "model.fp32.onnx").read_bytes() == f"v{i}".encode()
            assert read_bundle(out, verify=False).digest == manifest["digest"]["value"]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert reads[False] > 0 and reads[True] > 0
    # the reader reads every file through the folder it opened and starts again when a publish
    # replaced that folder mid-read: whole bundles only, verified or not
    assert failures == {False: [], True: []}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["other format", "not json", "no manifest", "empty folder",
                                  "symlink to a bundle", "file", "format given twice",
                                  "manifest symlink"])
def test_force_replaces_nothing_but_a_bundle(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "target"
    if kind == "symlink to a bundle":
        write_minimal(tmp_path / "real.edgekd")
        out.symlink_to(tmp_path / "real.edgekd")
    elif kind == "file":
        out.write_text("years of work")
    elif kind == "manifest symlink":  # a bundle's manifest.json elsewhere is no bundle here
        write_minimal(tmp_path / "real.edgekd")
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
        (out / "manifest.json").symlink_to(tmp_path / "real.edgekd" / "manifest.json")
    else:
        out.mkdir()
        manifest = {"other format": json.dumps({"format": "someone-elses-app"}),
                    "not json": "years of work", "no manifest": None,
                    "empty folder": None,
                    # parsers disagree on which one wins: the reader refuses it, so must force
                    "format given twice": '{"format": "someone-elses-app", '
                                          '"format": "edgekd-bundle"}'}[kind]
        if manifest is not None:
            (out / "manifest.json").write_text(manifest)
        if kind == "no manifest":
            (out / "thesis.tex").write_text("years of work")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ExportError, match=rf"refusing to replace {out}: .*Nothing was deleted"):
        write_minimal(out, force=True)
    with pytest.raises(ExportError, match="refusing to replace"):
        check_replaceable(out)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert leftovers(tmp_path) == []


def test_failed_exchange_keeps_the_old_bundle(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.edgekd"
    write_minimal(out, payload=b"old")

    def failing(a: Path, b: Path) -> bool:
        raise OSError(5, f"cannot exchange {a} and {b}: Input/output error")

    monkeypatch.setattr(writer_module, "exchange_paths", failing)
    with pytest.raises(ExportError, match="Input/output error; the old bundle was kept"):
        write_minimal(out, payload=b"new", force=True)
    assert model_bytes(out) == b"old"
    assert leftovers(tmp_path) == []


def test_two_rename_swap_replaces_and_restores(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.edgekd"
    write_minimal(out, payload=b"old")
    no_exchange(monkeypatch)
    write_minimal(out, payload=b"new", force=True)
    assert model_bytes(out) == b"new" and leftovers(tmp_path) == []

    real_rename = os.rename
    calls = []

    def flaky_rename(src: str | Path, dst: str | Path) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # old -> backup succeeded; staging -> out fails
            raise OSError("disk full")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky_rename)
    with pytest.raises(ExportError, match="disk full; the old bundle was kept"):
        write_minimal(out, payload=b"newer", force=True)
    assert model_bytes(out) == b"new"
    assert leftovers(tmp_path) == []


def test_failed_rollback_keeps_the_new_bundle_and_says_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.edgekd"
    write_minimal(out, payload=b"old")
    no_exchange(monkeypatch)
    real_rename = os.rename
    calls = []

    def flaky_rename(src: str | Path, dst: str | Path) -> None:
        calls.append(1)
        if len(calls) in (2, 3):  # staging -> out fails, then backup -> out fails
            raise OSError("I/O error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky_rename)
    with pytest.raises(ExportError, match="putting the old bundle back failed too") as info:
        write_minimal(out, payload=b"new", force=True)
    message = str(info.value)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("m.edgekd.new-")]
    backups = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert len(kept) == 1 and len(backups) == 1
    assert str(kept[0]) in message and str(backups[0]) in message
    assert model_bytes(kept[0]) == b"new"
    assert model_bytes(backups[0]) == b"old"
    assert not out.exists()
    # The next writer puts the old bundle back (its writer is gone) and keeps the new one.
    monkeypatch.setattr(os, "rename", real_rename)
    monkeypatch.setattr(writer_module, "process_alive", lambda pid: False)
    write_minimal(out, payload=b"newest", force=True)
    assert model_bytes(out) == b"newest"
    assert model_bytes(kept[0]) == b"new"


def test_reading_never_changes_the_folder(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent / "m.edgekd"
    write_minimal(out, payload=b"old")
    # What a writer killed between the two renames leaves: the old bundle moved aside.
    backup = parent / f".m.edgekd.{dead_pid()}-0123abcd.old"
    os.rename(out, backup)
    before = listing(parent)
    parent.chmod(0o555)  # root ignores it, hence the listing check
    try:
        with pytest.raises(BundleError, match="bundle folder not found"):
            read_bundle(out)
        assert listing(parent) == before
        parent.chmod(0o755)
        write_minimal(parent / "other.edgekd")
        os.rename(parent / "other.edgekd", out)
        before = listing(parent)
        parent.chmod(0o555)
        assert read_bundle(out, verify=True).artifacts  # loads from a read-only folder
        assert listing(parent) == before
    finally:
        parent.chmod(0o755)
    assert stat.S_IMODE(parent.stat().st_mode) == 0o755


def test_next_writer_repairs_dead_writers_only(tmp_path: Path) -> None:
    out = tmp_path / "m.edgekd"
    write_minimal(out, payload=b"old")
    dead = dead_pid()
    os.rename(out, tmp_path / f".m.edgekd.{dead}-0123abcd.old")  # killed between the renames
    (tmp_path / f".m.edgekd.{dead}-0123abcd.staging").mkdir()
    (tmp_path / f".m.edgekd.{dead}-0123abcd.eval").write_bytes(b"npz")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_staging = tmp_path / f".m.edgekd.{live.pid}-4567cdef.staging"
        live_staging.mkdir()
        foreign = tmp_path / f".m.edgekd.{dead}-not-ours.staging"  # not a name we make
        foreign.mkdir()
        with pytest.raises(ExportError, match="exists; pass force"):
            write_minimal(out, payload=b"new")  # the old bundle was put back first
        assert model_bytes(out) == b"old"
        assert leftovers(tmp_path) == sorted([live_staging.name, foreign.name])
        write_minimal(out, payload=b"new", force=True)
        assert model_bytes(out) == b"new"
        assert live_staging.is_dir() and foreign.is_dir()
    finally:
        live.kill()
        live.wait()
