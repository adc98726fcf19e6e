"""Probe the CUDA driver, the GPUs and TensorRT in a child process.

TensorRT's lean runtime does not raise without a driver: its next call segfaults. So nothing
CUDA-related is touched in this process until a subprocess has shown that a driver and a GPU
answer. The probe uses only ctypes against libcuda (no cuda-python needed) and reads the
TensorRT version without creating any TensorRT object. The result is cached per process.
Where no CUDA driver library exists at all (most CPU-only devices), `cuda_status` and
`backend="auto"` skip the subprocess: it costs an interpreter start, tens of milliseconds.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
from typing import Any

DRIVER_LIBRARY = "libcuda.so.1"
# Where distributions, NVIDIA's installers, WSL and JetPack put the driver library.
_DRIVER_DIRS = ("/usr/lib64", "/usr/lib", "/lib64", "/lib", "/usr/lib/*-linux-gnu",
                "/lib/*-linux-gnu", "/usr/lib/wsl/lib", "/usr/lib/*-linux-gnu/tegra",
                "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib")

PROBE_TIMEOUT_S = 30.0

# Runs in the child. Prints one JSON object on its last line.
_PROBE_SCRIPT = r"""
import ctypes, importlib.util, json
out = {"cuda": False, "cuda_version": None, "gpus": [], "tensorrt": None, "cuda_python": False,
       "error": None}
for mod in ("cuda.bindings", "cuda.cudart"):
    try:
        out["cuda_python"] = out["cuda_python"] or importlib.util.find_spec(mod) is not None
    except ImportError:
        pass
try:
    import importlib.metadata as md
    if importlib.util.find_spec("tensorrt") is not None:  # the module edgekd imports
        out["tensorrt"] = "unknown"  # e.g. JetPack's apt package has no pip metadata
        for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"):
            try:
                out["tensorrt"] = md.version(dist)
                break
            except md.PackageNotFoundError:
                pass
    cuda = ctypes.CDLL("libcuda.so.1")
    rc = cuda.cuInit(0)
    if rc != 0:
        raise RuntimeError(f"cuInit failed with CUDA error {rc}")
    v = ctypes.c_int()
    cuda.cuDriverGetVersion(ctypes.byref(v))
    out["cuda_version"] = f"{v.value // 1000}.{(v.value % 1000) // 10}"
    n = ctypes.c_int()
    cuda.cuDeviceGetCount(ctypes.byref(n))
    for i in range(n.value):
        dev = ctypes.c_int()
        cuda.cuDeviceGet(ctypes.byref(dev), i)
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGetName(name, 256, dev)
        major, minor = ctypes.c_int(), ctypes.c_int()
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # COMPUTE_CAPABILITY_MINOR
        out["gpus"].append({"name": name.value.decode(errors="replace"),
                            "compute_capability": f"{major.value}.{minor.value}"})
    out["cuda"] = bool(out["gpus"])
    if not out["gpus"]:
        out["error"] = "the CUDA driver reports no GPU"
except OSError as exc:
    out["error"] = f"no CUDA driver (libcuda.so.1 not loadable: {exc})"
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
try:
    with open("/etc/nv_tegra_release") as fh:
        out["jetpack_l4t"] = fh.readline().strip()
except OSError:
    pass
print(json.dumps(out))
"""

_cache: dict[str, Any] | None = None
_lock = threading.Lock()


def driver_library_present() -> bool:
    """Whether a CUDA driver library can be found without loading it: $LD_LIBRARY_PATH and
    the usual system folders, then the loader cache (`ctypes.util.find_library`)."""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    for pattern in (*dirs, *_DRIVER_DIRS):
        for folder in glob.glob(pattern):
            if os.path.exists(os.path.join(folder, DRIVER_LIBRARY)):
                return True
    import ctypes.util  # lazily: it costs milliseconds of every runtime import

    return ctypes.util.find_library("cuda") is not None


def _run_probe(timeout_s: float) -> dict[str, Any]:
    base: dict[str, Any] = {"cuda": False, "cuda_version": None, "gpus": [], "tensorrt": None,
                            "cuda_python": False}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"CUDA probe timed out after {timeout_s:g} s"}
    except OSError as exc:
        return {**base, "error": f"CUDA probe could not start: {exc}"}
    if proc.returncode != 0:
        code = proc.returncode
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return {**base, "error": f"CUDA probe crashed ({how}): {proc.stderr.strip()[-300:]}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {**base, "error": f"CUDA probe printed no result: {proc.stdout[-300:]!r}"}


def probe_cuda(timeout_s: float = PROBE_TIMEOUT_S, *, refresh: bool = False) -> dict[str, Any]:
    """`{"cuda": bool, "gpus": [{"name", "compute_capability"}], "cuda_version", "tensorrt":
    version or None, "cuda_python": bool, "error": why not, ...}`, probed once per process."""
    global _cache
    with _lock:
        if _cache is None or refresh:
            _cache = _run_probe(timeout_s)
        return dict(_cache)


def cuda_status() -> dict[str, Any]:
    """`probe_cuda()`, or its negative answer without a subprocess when no driver library
    exists (what `backend="auto"` and `edgekd bench` use)."""
    if not driver_library_present():
        return {"cuda": False, "cuda_version": None, "gpus": [], "tensorrt": None,
                "cuda_python": False, "error": f"no CUDA driver ({DRIVER_LIBRARY} not found)"}
    return probe_cuda()
