"""edgekd's storage layer: the files edgekd publishes (bundles, keys, run files, sealed cache
entries, reports) are written, renamed and deleted through here, so one set of rules holds for
all of them. Scratch space (spilled windows, a run folder being replaced) is not published and
is created and removed directly.

Durability: a file is written to a temp file in its own folder (same filesystem), fsynced, put in
place with one rename, and then the folder is fsynced, so a crash leaves the old content or the
new, never a torn file, and a write that returned survives a power cut. Folders created on the way
are fsynced into their parents too. Renames and deletions here fsync the folders they change.

Modes: a file is created with mode 0o666 and the process umask applied, exactly as `open(path,
"w")` would create it (so a default ACL of the folder applies too): 0644 under umask 022, 0600
under 077. Files meant for other users (a public key, signature.json, a bundle, a run folder) are
therefore readable by them wherever the umask allows it. `private=True` creates the file 0600
(less if the umask removes owner bits) from its first byte on, whatever the umask: for secrets.
Replacing a file does not keep the old file's mode; the new one follows these rules.

Temp files are named `.NAME.<pid>-<random>.tmp` beside the target; a crash can leave one behind
(never at the target's name).

`exchange_paths` swaps two paths in one step where the OS can (Linux renameat2 RENAME_EXCHANGE),
which is how a bundle is replaced while readers keep seeing a complete one.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import io as _io
import json
import os
import platform
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_COPY_CHUNK = 1 << 20
# renameat2 constants (linux/fcntl.h, linux/fs.h, the syscall tables); glibc < 2.28 lacks the
# wrapper, so the raw syscall is the fallback on the architectures edgekd runs on.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}
# What renameat2 answers when the kernel or the filesystem cannot exchange.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def fsync_path(path: str | Path) -> None:
    """fsync a file or a folder by path (a folder's fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: str | Path) -> Path:
    """Create `folder` and its missing parents (modes per umask, like mkdir), fsyncing each new
    one into its parent. An existing folder is fine; an existing non-folder raises."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        fsync_path(new.parent)
    return folder


def _create(path: Path, private: bool) -> int:
    """A new file's fd (O_EXCL): mode 0666 or, private, 0600, minus the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o600 if private else 0o666)


def hidden_sibling(path: Path, kind: str) -> Path:
    """A fresh name `.NAME.<pid>-<8 hex>.<kind>` beside `path` (same filesystem, so a rename to
    `path` is atomic), not checked for existence. The pid lets a later writer tell a dead
    writer's leftovers from a live one's (`sibling_owner`, `process_alive`)."""
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}"


def sibling_owner(path: Path, name: str, kinds: tuple[str, ...]) -> tuple[int, str] | None:
    """(pid, kind) if the file name `name` is a `hidden_sibling` of `path` of one of `kinds`,
    else None."""
    kinds_re = "|".join(map(re.escape, kinds))
    match = re.fullmatch(rf"\.{re.escape(path.name)}\.(\d+)-[0-9a-f]{{8}}\.({kinds_re})", name)
    return None if match is None else (int(match[1]), match[2])


def _temp_beside(path: Path, private: bool) -> tuple[Path, int]:
    while True:
        tmp = hidden_sibling(path, "tmp")
        try:
            return tmp, _create(tmp, private)
        except FileExistsError:
            continue


def _write_via_temp(path: Path, fill: Callable[[Any], None], private: bool) -> None:
    make_dirs(path.parent)
    tmp, fd = _temp_beside(path, private)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write `data` to `path` atomically and durably (see the module docstring for modes)."""
    _write_via_temp(Path(path), lambda fh: fh.write(data), private)


def atomic_write_text(path: Path, text: str, *, private: bool = False) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_json(path: Path, obj: Any, *, private: bool = False) -> None:
    """`obj` as JSON (indent 2, ASCII-escaped) plus a newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n", private=private)


def atomic_copy_file(source: str | Path, path: Path) -> None:
    """Copy the file `source` to `path` atomically, streamed (engines can be large)."""
    with open(source, "rb") as src:
        _write_via_temp(Path(path), lambda fh: shutil.copyfileobj(src, fh, _COPY_CHUNK), False)


def atomic_write_png(path: Path, figure: Any, *, dpi: int = 110) -> None:
    """Render a matplotlib figure to PNG in memory, then write it atomically."""
    buf = _io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def create_new_bytes(path: Path, data: bytes, *, private: bool = False) -> None:
    """Create `path` holding `data`, failing with FileExistsError if it exists: nothing is ever
    overwritten, not even by a concurrent writer (O_EXCL). With `private` the file is 0600
    before its first byte (signing keys). fsynced with its folder; a crash mid-write can leave
    it short, so use it for names nothing else reads until the writer says so."""
    path = Path(path)
    make_dirs(path.parent)
    fd = _create(path, private)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def rename_path(source: str | Path, dest: str | Path) -> None:
    """os.rename, then fsync the folder(s) involved so the rename survives a power cut."""
    os.rename(source, dest)
    _fsync_parents(source, dest)


def replace_path(source: str | Path, dest: str | Path) -> None:
    """os.replace (a file over a file), then fsync the folder(s) involved."""
    os.replace(source, dest)
    _fsync_parents(source, dest)


def process_alive(pid: int) -> bool:
    """Whether process `pid` on this host still runs (this process counts as alive). Writers
    tag temp, staging and spill folders with their pid so that the next writer removes only
    those of dead processes."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_tree(path: str | Path) -> None:
    """Delete a folder and all it holds, or a file or symlink (never following it); missing is
    fine. Best effort: a file that cannot be removed stays, the rest goes."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_parents(*paths: str | Path) -> None:
    for folder in dict.fromkeys(Path(p).absolute().parent for p in paths):
        fsync_path(folder)


@functools.lru_cache(maxsize=1)
def _renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn
    number = _SYS_RENAMEAT2.get(platform.machine())
    if number is None:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def raw(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> int:
        return int(syscall(ctypes.c_long(number), ctypes.c_int(olddir), ctypes.c_char_p(old),
                           ctypes.c_int(newdir), ctypes.c_char_p(new), ctypes.c_uint(flags)))

    return raw


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap what the paths `a` and `b` name (files or folders, same filesystem) in one atomic
    step: at every moment each path names one of the two, never nothing. Both must exist.

    True when swapped; like a rename it is durable once the parent folder(s) are fsynced
    (`fsync_path`), left to the caller so that an OSError here always means nothing changed.
    False when this OS, kernel or filesystem cannot exchange (not Linux, no renameat2, EINVAL /
    ENOSYS / EOPNOTSUPP): nothing changed and the caller must fall back. Any other failure
    (a path missing, different filesystems, permissions) raises OSError naming the paths.
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        if err in _NO_EXCHANGE:
            return False
        raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")
    return True
