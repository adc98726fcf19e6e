"""The storage layer (edgekd/io.py): file modes follow the umask, secrets are private, keys are
never overwritten, folders are exchanged atomically, and a signed bundle loads as another user."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import stat
import tempfile
import threading
import time
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

    # Each path names a complete folder at every moment: a reader always finds `a/tag` whole.
    # Anything else the reader meets (missing, not a file, other content, any error) is kept
    # and fails the test: a reader that died would otherwise pass it silently.
    seen: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                try:
                    tag = (a / "tag").read_text()
                except Exception as exc:  # noqa: BLE001 - every failure is shown
                    failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    seen[tag] = seen.get(tag, 0) + 1
        except BaseException as exc:  # noqa: BLE001 - the reader itself broke
            failures.append(f"reader died: {type(exc).__name__}: {exc}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for i in range(2000):
            assert exchange_paths(a, b)
            if i % 500 == 0:
                assert reader.is_alive(), failures
    finally:
        stop.set()
        reader.join(30)
    assert not reader.is_alive(), "the reader did not stop"
    assert failures == [], failures[:5]
    assert set(seen) <= {"A", "B"} and sum(seen.values()) > 0, seen
    assert ((a / "tag").read_text(), (b / "tag").read_text()) == ("B", "A")  # an even count

    with pytest.raises(OSError, match="cannot exchange"):
        exchange_paths(a, tmp_path / "absent")
    assert (a / "tag").read_text() == "B"


ORDINARY = 65533  # a second unprivileged uid, with no account: setuid needs none


def _own_folder(owner: int) -> Path:
    """A world-readable folder in /tmp owned by uid `owner` (pytest's tmp_path is private to its
    user, and the other user needs to write here or to read from here)."""
    base = Path(tempfile.mkdtemp(prefix="edgekd-cross-user-", dir="/tmp"))
    base.chmod(0o755)
    os.chown(base, owner, owner)
    return base


def _sign_here(base: Path) -> tuple[Path, Path, Path]:
    """keygen, write and sign a minimal bundle in `base` under umask 022: (private, public, out)."""
    with umask(0o022):
        private, public = keygen(base / "keys")
        out = base / "m.edgekd"
        write_minimal(out)
        sign_bundle(out, private)
    return private, public, out


@pytest.mark.parametrize("signer", ["root", "ordinary user"])
def test_a_signed_bundle_loads_as_another_user(signer: str) -> None:
    """Signed by root, or by an ordinary user (root's DAC override hides a mode that only its
    owner could read), the bundle loads as nobody, while the private key stays unreadable."""
    if os.geteuid() != 0:
        pytest.skip("switching to a second user needs root (this runs as an ordinary user; "
                    "the modes others rely on: test_keys_signature_and_bundle_files_are_...)")
    # Loads every module the check needs here: the children cannot read this interpreter's
    # install (under /root), so they are forks of this process rather than new ones.
    warm = _own_folder(0)
    try:
        _, public, out = _sign_here(warm)
        assert read_bundle(out, trusted_keys=[public]).signer is not None
    finally:
        shutil.rmtree(warm)
    base = _own_folder(0 if signer == "root" else ORDINARY)
    try:
        private, public, out = base / "keys" / "edgekd-signing.key", None, base / "m.edgekd"
        if signer == "root":
            private, public, out = _sign_here(base)
        else:
            answer, code = _as_user(ORDINARY, lambda: _sign_here(base)[1])
            assert code == 0, answer
            public = Path(answer)
            assert {p.stat().st_uid for p in base.rglob("*")} == {ORDINARY}  # really theirs
        assert read_bundle(out, trusted_keys=[public]).signer is not None
        cache = _own_folder(NOBODY)  # nobody's own cache: a signed read keeps a rollback record
        try:
            answer, code = _as_user(NOBODY, lambda: "signer " + str(read_bundle(
                out, verify=True, trusted_keys=[public], cache_dir=cache).signer))  # fmt: skip
        finally:
            shutil.rmtree(cache)
        assert code == 0, answer
        assert answer.startswith("signer ") and answer != "signer None"
        answer, code = _as_user(NOBODY, lambda: private.read_bytes())  # the key stays private
        assert code == 1 and answer.startswith("PermissionError"), answer
    finally:
        shutil.rmtree(base)


def _as_user(uid: int, action: Callable[[], object], timeout: float = 60.0) -> tuple[str, int]:
    """Run `action` in a forked child as uid and gid `uid` (root only); (str of its result, 0)
    or (its error, 1). A child that runs past `timeout` seconds is killed: an error, no hang."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                text, code = str(action()), 0
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
                text = f"{type(exc).__name__}: {exc}"
            os.write(write_end, text.encode())
        finally:
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"the child as uid {uid} ran past {timeout:g} s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks).decode(), os.waitstatus_to_exitcode(status)


def as_ordinary_user(action: Callable[[Path], None], timeout: float = 60.0) -> None:
    """Run `action(folder)` as an unprivileged user in a folder of its own, where permissions
    are enforced: directly when this process is not root, else in a forked child as nobody
    (with a writable folder it owns). AssertionError with the child's error if it fails."""
    if os.geteuid() != 0:
        with tempfile.TemporaryDirectory() as folder:
            action(Path(folder))
        return
    base = _own_folder(NOBODY)
    try:
        answer, code = _as_user(NOBODY, lambda: action(base), timeout)
        assert code == 0, f"as nobody: {answer}"
    finally:
        shutil.rmtree(base, ignore_errors=True)
