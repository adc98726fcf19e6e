"""Load time of an OpenVINO model compiled vs imported from the sealed cache.

    python benchmarks/openvino_cache.py out/har.edgekd --precision int8 --runs 5

Each load runs in a fresh interpreter (OpenVINO keeps nothing between them), three ways:
"no cache" compiles only; "cold" compiles, exports and seals the blob into an empty cache;
"sealed" imports that blob after checking its seal. Prints the median and range of `load_s`
(everything `rt.load` does) and of the compile-or-import step alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_ONE_LOAD = """
import json, sys, time
from pathlib import Path
bundle, precision, cache = sys.argv[1:4]
t0 = time.perf_counter()
if cache:
    import edgekd.runtime as rt
    info = rt.load(bundle, backend="openvino", precision=precision, cache_dir=cache).info
else:
    from edgekd.runtime import read_bundle
    from edgekd.runtime.backends import openvino
    info = openvino.open(read_bundle(bundle, verify=False), precision, threads=1,
                         cache_dir=None).details
print(json.dumps({"load_s": time.perf_counter() - t0, "compile_s": info["compile_s"],
                  "cache": info["cache"]}))
"""


def one_load(bundle: Path, precision: str, cache: Path | None) -> dict:
    out = subprocess.run([sys.executable, "-c", _ONE_LOAD, str(bundle), precision,
                          str(cache or "")], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cell(values: list[float]) -> str:
    ms = [v * 1e3 for v in values]
    return f"{statistics.median(ms):7.1f} ({min(ms):.1f}-{max(ms):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {"no cache": [], "cold": [], "sealed": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            rows["no cache"].append(one_load(args.bundle, args.precision, None))
            rows["cold"].append(one_load(args.bundle, args.precision, Path(tmp) / f"cold{i}"))
            rows["sealed"].append(one_load(args.bundle, args.precision, Path(tmp) / "cold0"))
    print(f"OpenVINO {args.precision}, {args.bundle.name}, {args.runs} fresh processes each; "
          "ms: median (min-max)")
    print(f"{'mode':<9} {'rt.load':>22} {'compile/import':>22}  cache")
    for mode, runs in rows.items():
        print(f"{mode:<9} {_cell([r['load_s'] for r in runs]):>22} "
              f"{_cell([r['compile_s'] for r in runs]):>22}  {runs[0]['cache']}")


if __name__ == "__main__":
    main()
