"""Publishing a bundle over an existing one: readers always find a complete bundle, a failed swap
loses neither bundle, force replaces nothing but a bundle, and readers never change anything."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from runtime_synth import leftovers, write_minimal
from test_runtime_storage import as_ordinary_user

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


PUBLISHERS, READERS, PUBLISHES = 3, 2, 15
TIMEOUT_S = 60.0


def _payloads() -> dict[str, bytes]:
    """sha256 -> model.fp32.onnx bytes of every bundle any publisher writes."""
    payloads = [b"v0"] + [f"p{w}-{i}".encode() for w in range(PUBLISHERS)
                          for i in range(PUBLISHES)]  # fmt: skip
    return {hashlib.sha256(p).hexdigest(): p for p in payloads}


def _publish_many(out: str, worker: int, start: Any, results: Any) -> None:
    """A publisher process: PUBLISHES forced publishes of `out`; reports its errors."""
    errors: list[str] = []
    try:
        start.wait(TIMEOUT_S)
        for i in range(PUBLISHES):
            write_minimal(Path(out), payload=f"p{worker}-{i}".encode(), force=True)
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the test
        errors.append(f"{type(exc).__name__}: {exc}")
    results.put(("publisher", worker, 0, errors))


def _read_until_stopped(out: str, verify: bool, start: Any, stop: Any, results: Any) -> None:
    """A reader process: read the bundle until `stop`; each read must be one whole published
    bundle (its manifest lists the model of one of the publishes)."""
    reads, failures = 0, []
    known = _payloads()
    try:
        start.wait(TIMEOUT_S)
        deadline = time.monotonic() + TIMEOUT_S
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                bundle = read_bundle(out, verify=verify, trusted_keys=[])
                sha = {a.path: a.sha256 for a in bundle.artifacts}["model.fp32.onnx"]
                if sha not in known:
                    failures.append(f"a model no publisher wrote: sha256 {sha}")
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                failures.append(f"{type(exc).__name__}: {exc}")
            else:
                reads += 1
    except BaseException as exc:  # noqa: BLE001 - the reader itself broke
        failures.append(f"reader died: {type(exc).__name__}: {exc}")
    results.put(("reader", verify, reads, failures[:10]))


def test_readers_always_find_the_bundle_while_processes_replace_it(tmp_path: Path) -> None:
    """Several processes publish the same bundle at once while others read it: every read
    finds a whole bundle (verified or not), every publish succeeds, nothing is left behind."""
    import multiprocessing

    out = tmp_path / "m.edgekd"
    write_minimal(out, payload=b"v0")
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no state shared with us
    start, stop, results = ctx.Barrier(PUBLISHERS + READERS), ctx.Event(), ctx.Queue()
    publishers = [ctx.Process(target=_publish_many, args=(str(out), w, start, results))
                  for w in range(PUBLISHERS)]  # fmt: skip
    readers = [ctx.Process(target=_read_until_stopped,
                           args=(str(out), verify, start, stop, results))
               for verify in (False, True)]  # fmt: skip
    assert len(readers) == READERS
    procs = publishers + readers
    for p in procs:
        p.start()
    reports = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        for p in publishers:
            p.join(max(0.0, deadline - time.monotonic()))
        assert not any(p.is_alive() for p in publishers), f"publishers hung past {TIMEOUT_S} s"
        stop.set()
        for p in readers:
            p.join(max(0.0, deadline + 30 - time.monotonic()))
        assert not any(p.is_alive() for p in readers), "readers did not stop"
        reports = [results.get(timeout=10) for _ in procs]
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    published = {r[1]: r[3] for r in reports if r[0] == "publisher"}
    assert published == {w: [] for w in range(PUBLISHERS)}  # every publish succeeded
    reads = {r[1]: (r[2], r[3]) for r in reports if r[0] == "reader"}
    # whole bundles only, verified or not: the reader starts again when a publish replaced the
    # folder it opened mid-read
    assert {v: failures for v, (_, failures) in reads.items()} == {False: [], True: []}
    assert all(n > 0 for n, _ in reads.values()), reads
    final = read_bundle(out, verify=True, trusted_keys=[]).read("model.fp32.onnx")
    assert final in {f"p{w}-{PUBLISHES - 1}".encode() for w in range(PUBLISHERS)}  # a last one
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


def _reading_leaves_a_read_only_folder_alone(root: Path, dead: int) -> None:
    parent = root / "ro"
    parent.mkdir()
    out = parent / "m.edgekd"
    write_minimal(out, payload=b"old")
    # What a writer killed between the two renames leaves: the old bundle moved aside.
    backup = parent / f".m.edgekd.{dead}-0123abcd.old"
    os.rename(out, backup)
    before = listing(parent)
    parent.chmod(0o555)  # binds an ordinary user; root ignores it, hence the listing check
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


@pytest.mark.parametrize("user", ["this user", "an ordinary user"])
def test_reading_never_changes_the_folder(tmp_path: Path, user: str) -> None:
    dead = dead_pid()  # here: an ordinary user forked from root cannot start this interpreter
    if user == "this user":
        _reading_leaves_a_read_only_folder_alone(tmp_path, dead)
    else:  # where the read-only mode binds: a reader that writes, even briefly, fails
        _reading_leaves_a_read_only_folder_alone(tmp_path, dead)  # imports what the child needs
        as_ordinary_user(lambda folder: _reading_leaves_a_read_only_folder_alone(folder, dead))


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
