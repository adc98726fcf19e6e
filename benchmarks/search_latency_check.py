"""How good is `edgekd search`'s latency prediction? For every trained (complete) trial of a
finished search on a CPU target, three batch-1 p50 figures (ms, 1 thread, int8):

- predicted: what the search priced the UNTRAINED candidate at, when it drew it (search.json;
  other trials may have been training beside it);
- untrained now: the same untrained candidate priced again now (`measure_here`, the search's
  own code), so drift of the machine since the search is told apart from the prediction error;
- trained now: the trial's trained run exported for the search's target and timed with the same
  timing code (`time_bundle`).

Run it on a quiet machine, after the search (about a minute per trial):

    .venv/bin/python benchmarks/search_latency_check.py runs/search_har/search [--timing-s 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("search", type=Path, help="a finished search's --out folder")
    parser.add_argument("--timing-s", type=float, default=2.0)
    args = parser.parse_args()

    from edgekd.checkpoint import read_sidecar
    from edgekd.export.exporter import export_run
    from edgekd.search.latency import measure_here, time_bundle
    from edgekd.targets import get_target

    report = json.loads((args.search / "search.json").read_text())
    target = get_target(report["target"])
    teacher = Path(report["spec"]["teacher"])
    side = read_sidecar(teacher, expect_role="teacher")
    spec = side["specs"][side["default_student"]]
    rows = [r for r in report["trials"] if r["state"] == "complete"]
    print(f"## Predicted vs measured p50 ({time.strftime('%Y-%m-%d')}; {report['target']}, "
          f"{target.backend} {target.precision}, batch 1, 1 thread)\n")  # fmt: skip
    print(f"`python benchmarks/search_latency_check.py {args.search} --timing-s "
          f"{args.timing_s:g}`\n")  # fmt: skip
    print("| trial | arch | args | params | predicted ms | untrained now ms | trained now ms "
          "| trained / predicted | trained / untrained now |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    ratios, same_moment = [], []
    with tempfile.TemporaryDirectory(prefix="edgekd-latency-check-") as tmp:
        for row in sorted(rows, key=lambda r: r["trial"]):
            now = measure_here(row["arch"], row["args"], spec, len(side["labels"]),
                               report["target"], duration_s=args.timing_s)["p50_ms"]  # fmt: skip
            bundle = Path(tmp) / f"{row['trial']}.edgekd"
            # timing only: the int8 accuracy check of a real export does not matter here
            export_run(Path(row["folder"]), bundle, target=report["target"], max_drop=100.0,
                       progress=False)  # fmt: skip
            trained = time_bundle(bundle, target.backend, target.precision, args.timing_s)
            ratios.append(trained / row["p50_ms"])
            same_moment.append(trained / now)
            arch_args = ", ".join(f"{k}={v}" for k, v in sorted(row["args"].items()))
            print(f"| {row['trial']} | {row['arch']} | {arch_args} | {row['params']:,} | "
                  f"{row['p50_ms']:.4f} | {now:.4f} | {trained:.4f} | {ratios[-1]:.2f} | "
                  f"{same_moment[-1]:.2f} |", flush=True)  # fmt: skip
    if ratios:
        worst = max(ratios, key=lambda r: abs(r - 1))
        print(f"\ntrained / predicted: median {statistics.median(ratios):.2f}, worst {worst:.2f}; "
              f"trained / untrained now: median {statistics.median(same_moment):.2f} "
              f"({len(ratios)} trials)")  # fmt: skip


if __name__ == "__main__":
    main()
