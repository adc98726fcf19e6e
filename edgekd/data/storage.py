"""Window storage on disk: manifests stream their windows into memory-mapped arrays.

A manifest's windows may exceed RAM. `WindowSpill` appends each recording's windows to one raw
file per modality as it is read, and `stack` copies chosen runs of them into one contiguous
`np.memmap` per split, chunk by chunk; nothing ever holds all windows in memory. Files live in
a fresh folder under `cache_dir()/windows` and are unlinked as soon as they are mapped (POSIX
keeps a mapped file alive until the process exits).

A process killed while it writes (SIGKILL, out of memory) leaves its folder behind. Folder names
carry the owner's host and pid (`spill-<host>-<pid>-<random>`), and every new `WindowSpill`
first removes the folders of this host whose process no longer exists. Folders of live
processes, and of other hosts sharing the cache (whose pids mean nothing here), are kept.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekd.io import process_alive

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20  # copy granularity of `stack`: bounds the RAM it touches at once
_KINDS = ("spill", "split")  # WindowSpill's folders, and stack's (gone once its file is mapped)
# mkdtemp's random suffix has no "-", so the pid is the last number between dashes.
_OWNED = re.compile(rf"^(?:{'|'.join(_KINDS)})-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")


def cache_dir() -> Path:
    """`$EDGEKD_CACHE`, else `$XDG_CACHE_HOME/edgekd`, else `~/.cache/edgekd`: the data cache
    (the converted HAR recordings, and the window files under `windows/`)."""
    if os.environ.get("EDGEKD_CACHE"):
        return Path(os.environ["EDGEKD_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "edgekd"
    return Path.home() / ".cache" / "edgekd"


def spill_root() -> Path:
    root = cache_dir() / "windows"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _owned_folder(kind: str) -> Path:
    """A new folder under `spill_root()` named after this host and process."""
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{_host()}-{os.getpid()}-", dir=spill_root()))


def remove_dead_spills() -> list[Path]:
    """Remove this host's spill folders whose owning process has exited; the removed folders.

    A pid reused by a new process keeps the old folder until that process exits too: a live
    process's folder is never touched.
    """
    removed = []
    host = _host()
    for folder in spill_root().iterdir():
        match = _OWNED.match(folder.name)
        if match is None or match["host"] != host or process_alive(int(match["pid"])):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info("removed %d spill folder(s) left by killed processes", len(removed))
    return removed


class WindowSpill:
    """Append-only float32 window files, one per modality, in a private temporary folder
    (made after removing the folders that dead processes left)."""

    def __init__(self) -> None:
        remove_dead_spills()
        self.dir = _owned_folder("spill")
        self._files: dict[str, tuple[object, int, tuple[int, ...]]] = {}

    def append(self, name: str, windows: np.ndarray) -> int:
        """Write `windows` (n, *shape) of modality `name`; returns the index of the first."""
        if name not in self._files:
            self._files[name] = ((self.dir / f"{name}.f32").open("wb"), 0, windows.shape[1:])
        handle, count, shape = self._files[name]
        if windows.shape[1:] != shape:
            raise ValueError(f"{name}: window shape {windows.shape[1:]} != {shape}")
        np.ascontiguousarray(windows, dtype=np.float32).tofile(handle)
        self._files[name] = (handle, count + len(windows), shape)
        return count

    def finish(self) -> dict[str, np.ndarray]:
        """Every modality's windows as a read-only memmap; the files are unlinked."""
        out: dict[str, np.ndarray] = {}
        for name, (handle, count, shape) in self._files.items():
            handle.close()  # type: ignore[attr-defined]
            path = self.dir / f"{name}.f32"
            out[name] = (
                np.memmap(path, dtype=np.float32, mode="r", shape=(count, *shape))
                if count
                else np.zeros((0, *shape), dtype=np.float32)
            )
        shutil.rmtree(self.dir, ignore_errors=True)
        return out


def stack(parts: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Concatenate `parts` (each (n_i, *shape)) into a new float32 memmap, copying in chunks."""
    total = sum(len(p) for p in parts)
    if total == 0:
        return np.zeros((0, *shape), dtype=np.float32)
    folder = _owned_folder("split")
    try:
        out = np.lib.format.open_memmap(
            folder / "x.npy", mode="w+", dtype=np.float32, shape=(total, *shape)
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    per_chunk = max(1, CHUNK_BYTES // max(1, out[0].nbytes))
    at = 0
    for part in parts:
        for start in range(0, len(part), per_chunk):
            block = part[start : start + per_chunk]
            out[at : at + len(block)] = block
            at += len(block)
    out.flush()
    return out
