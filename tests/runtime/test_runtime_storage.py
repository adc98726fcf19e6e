"""The storage layer (edgekd/io.py): file modes follow the umask, secrets are private, keys are
never overwritten, folders are exchanged atomically, and a signed bundle loads as another user."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from runtime_synth import write_minimal

from edgekd.errors import ConfigError
from edgekd.io import (
    atomic_copy_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    create_new_bytes,
    exchange_paths,
)
from edgekd.runtime import read_bundle
from edgekd.runtime.integrity import SIGNATURE, keygen, sign_bundle

NOBODY = 65534


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask_like_open(tmp_path: Path, mask: int) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"src")
    with umask(mask):
        writes = {
            "bytes": lambda p: atomic_write_bytes(p, b"x"),
            "text": lambda p: atomic_write_text(p, "x"),
            "json": lambda p: atomic_write_json(p, {"x": 1}),
            "copy": lambda p: atomic_copy_file(source, p),
            "new": lambda p: create_new_bytes(p, b"x"),
        }
        for name, write in writes.items():
            write(tmp_path / "sub" / name)
        (tmp_path / "private").mkdir()
        atomic_write_bytes(tmp_path / "private" / "secret", b"k", private=True)
        create_new_bytes(tmp_path / "private" / "key", b"k", private=True)
    for name in writes:
        assert mode(tmp_path / "sub" / name) == 0o666 & ~mask, name
    assert mode(tmp_path / "sub") == 0o777 & ~mask  # created on the way, like mkdir
    assert mode(tmp_path / "private" / "secret") == 0o600
    assert mode(tmp_path / "private" / "key") == 0o600
    assert (tmp_path / "sub" / "copy").read_bytes() == b"src"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(writes)  # no temps


def test_replacing_a_private_file_does_not_keep_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "signature.json"
    with umask(0o022):
        atomic_write_bytes(path, b"old", private=True)
        assert mode(path) == 0o600
        atomic_write_bytes(path, b"new")
    assert mode(path) == 0o644 and path.read_bytes() == b"new"


def test_create_new_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "key"
    create_new_bytes(path, b"first", private=True)
    with pytest.raises(FileExistsError):
        create_new_bytes(path, b"second", private=True)
    assert path.read_bytes() == b"first"


def test_keys_signature_and_bundle_files_are_readable_by_others(tmp_path: Path) -> None:
    with umask(0o022):
        private, public = keygen(tmp_path / "keys")
        out = tmp_path / "m.edgekd"
        write_minimal(out)
        sign_bundle(out, private)
        signed_by_writer = tmp_path / "w.edgekd"
        write_minimal(signed_by_writer, sign_key=private)
    assert mode(private) == 0o600
    assert mode(public) == 0o644
    assert mode(out / SIGNATURE) == 0o644
    assert mode(signed_by_writer / SIGNATURE) == 0o644
    for path in [*out.rglob("*"), *signed_by_writer.rglob("*")]:
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path
    assert mode(out) == 0o755
    with pytest.raises(ConfigError, match="refusing to overwrite a key"):
        keygen(tmp_path / "keys")
    assert mode(private) == 0o600


def test_exchange_paths_swaps_two_folders_atomically(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, tag in ((a, "A"), (b, "B")):
        folder.mkdir()
        (folder / "tag").write_text(tag)
    if not exchange_paths(a, b):
        pytest.skip("this kernel or filesystem has no renameat2(RENAME_EXCHANGE)")
    assert ((a / "tag").read_text(), (b / "tag").read_text()) == ("B", "A")

    # Each path names a complete folder at every moment: a reader never finds `a/tag` missing.
    missing: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                (a / "tag").read_text()
            except FileNotFoundError:
                missing.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(2000):
            assert exchange_paths(a, b)
    finally:
        stop.set()
        reader.join()
    assert missing == []
    assert ((a / "tag").read_text(), (b / "tag").read_text()) == ("B", "A")  # an even count

    with pytest.raises(OSError, match="cannot exchange"):
        exchange_paths(a, tmp_path / "absent")
    assert (a / "tag").read_text() == "B"


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="needs root: signs as root, then loads as uid 65534 (nobody)")
def test_a_bundle_signed_by_root_loads_as_nobody() -> None:
    # pytest's tmp_path is private to its user: the other user needs a world-readable folder.
    base = Path(tempfile.mkdtemp(prefix="edgekd-cross-user-", dir="/tmp"))
    try:
        base.chmod(0o755)
        with umask(0o022):
            private, public = keygen(base / "keys")
            out = base / "m.edgekd"
            write_minimal(out)
            sign_bundle(out, private)
        # Loads every module the check needs here: the child cannot read this interpreter's
        # install (under /root), so it is a fork of this process rather than a new one.
        assert read_bundle(out, trusted_keys=[public]).signer is not None
        answer, code = _as_nobody(lambda: read_bundle(out, verify=True, trusted_keys=[public]))
        assert code == 0, answer
        assert answer.startswith("signer ")
        answer, code = _as_nobody(lambda: private.read_bytes())  # the key stays private
        assert code == 1 and answer.startswith("PermissionError"), answer
    finally:
        shutil.rmtree(base)


def _as_nobody(action: Callable[[], object]) -> tuple[str, int]:
    """Run `action` in a forked child as uid/gid 65534; (its result or error, exit code)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result = action()
                text, code = f"signer {getattr(result, 'signer', result)}", 0
            except BaseException as exc:
                text = f"{type(exc).__name__}: {exc}"
            os.write(write_end, text.encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        text = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    return text, os.waitstatus_to_exitcode(status)
