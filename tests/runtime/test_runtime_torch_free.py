"""The runtime works in a process where torch cannot be imported at all."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from edgekd.runtime import load

CHILD = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this process ({name})")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
        raise SystemExit("the torch blocker does not work")
    except ImportError:
        pass

    import numpy as np
    import edgekd.runtime as rt
    import edgekd.runtime.backends.tensorrt  # noqa: F401  (the on-device engine build path)
    import edgekd.runtime.trt_build  # noqa: F401
    from edgekd.runtime.bench import run_benchmark

    bundle, cache = sys.argv[1], sys.argv[2]
    x = np.load(bundle + "/golden.npz")["x"]
    out = {}
    for backend in ("openvino", "onnxruntime"):
        model = rt.load(bundle, backend=backend, precision="int8", cache_dir=cache)
        events = model.stream().push(x.reshape(-1, x.shape[-1]))
        out[backend] = {"probs": model.predict(x).probs.tolist(), "events": len(events)}
    report = run_benchmark(bundle, backends=["onnxruntime"], precisions=["fp32"],
                           batch_sizes=[1, 4], iterations=3, warmup=1, cache_dir=cache)
    out["bench_rows"] = len(report["rows"])
    out["torch_loaded"] = any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print(json.dumps(out))
""")


def test_runtime_predicts_without_torch(bundle_path: Path, cache_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(bundle_path), str(cache_root)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch_loaded"] is False and out["bench_rows"] == 1
    x = np.load(bundle_path / "golden.npz")["x"]
    for backend in ("openvino", "onnxruntime"):
        expected = load(bundle_path, backend=backend, precision="int8",
                        cache_dir=cache_root).predict(x).probs
        np.testing.assert_allclose(out[backend]["probs"], expected, atol=1e-6)
        assert out[backend]["events"] == (len(x) * 128 - 128) // 64 + 1
