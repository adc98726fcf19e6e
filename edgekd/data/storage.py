"""Window storage on disk: manifests stream their windows into memory-mapped arrays.

A manifest's windows may exceed RAM. `WindowSpill` appends each recording's windows to one raw
file per modality as it is read, and `stack` copies chosen runs of them into one contiguous
`np.memmap` per split, chunk by chunk; nothing ever holds all windows in memory. Files live in
a fresh folder under `cache_dir()/windows` and are unlinked as soon as they are mapped (POSIX
keeps a mapped file alive until the process exits), so even a killed run leaves nothing behind
but a folder being written.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CHUNK_BYTES = 64 << 20  # copy granularity of `stack`: bounds the RAM it touches at once


def spill_root() -> Path:
    from edgekd.data.har import cache_dir

    root = cache_dir() / "windows"
    root.mkdir(parents=True, exist_ok=True)
    return root


class WindowSpill:
    """Append-only float32 window files, one per modality, in a private temporary folder."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="spill-", dir=spill_root()))
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
    folder = Path(tempfile.mkdtemp(prefix="split-", dir=spill_root()))
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
