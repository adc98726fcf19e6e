"""Export one student run with each PTQ calibration method and with QAT; print FP32 vs int8
accuracy per backend (held-out test windows), artifact sizes, export time and the OpenVINO int8
evidence, as a Markdown table.

    python benchmarks/export_table.py runs/student [--calib N] [--qat-epochs 3] [--json out.json]

Every export goes through `edgekd.export.exporter.export_run` (the `edgekd export` code path)
into a temporary folder, with the accuracy guard opened (--max-drop 100) so that a bad
configuration shows up in the table instead of stopping the run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from edgekd.export.exporter import ExportResult, export_run


def _row(name: str, result: ExportResult) -> dict[str, Any]:
    acc = result.accuracy
    pct = {k: round(100 * v["accuracy"], 2) for k, v in acc.items()}
    f1 = {k: round(100 * v["macro_f1"], 2) for k, v in acc.items()}
    sizes = result.sizes
    evidence = result.int8_evidence or {}
    return {
        "config": name,
        "accuracy_pct": pct,
        "macro_f1_pct": f1,
        "int8_layers": f"{evidence.get('int8_layers', 0)}/{evidence.get('weighted_layers', 0)}",
        "kernels": evidence.get("kernels", []),
        "fp32_onnx_bytes": sizes["model.fp32.onnx"],
        "int8_onnx_bytes": sizes["model.int8.qdq.onnx"],
        "int8_ir_bytes": sizes["openvino/model.int8.bin"] + sizes["openvino/model.int8.xml"],
        "bundle_bytes": sum(sizes.values()),
        "export_s": round(result.timings["total"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--calib", type=int, help="calibration windows (default: export's)")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--no-qat", action="store_true", help="PTQ rows only (QAT takes minutes)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()

    configs: list[tuple[str, dict[str, Any]]] = [
        (f"ptq-{m}", {"ptq": m}) for m in ("minmax", "percentile", "entropy")
    ]
    if not args.no_qat:
        configs.append((f"qat-{args.qat_epochs}ep", {"qat": True, "qat_epochs": args.qat_epochs}))
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekd-export-table-") as tmp:
        for name, kwargs in configs:
            result = export_run(
                args.run_dir, Path(tmp) / f"{name}.edgekd", target="cpu", calib=args.calib,
                max_drop=100.0, progress=False, **kwargs,
            )  # fmt: skip
            rows.append(_row(name, result))

    print(
        "| config | torch FP32 | ONNX FP32 (ORT) | OV FP32 | int8 ORT | int8 OV | QAT fake-quant "
        "| int8 layers (OV) | FP32 ONNX | int8 ONNX | bundle | export |"
    )
    print("|---" * 12 + "|")
    for r in rows:
        a = r["accuracy_pct"]
        print(
            f"| {r['config']} | {a['torch_fp32']:.2f} | {a['fp32']:.2f} | {a['fp32_openvino']:.2f} "
            f"| {a['int8_onnxruntime']:.2f} | {a['int8_openvino']:.2f} "
            f"| {a.get('qat_fake_quant', float('nan')):.2f} | {r['int8_layers']} "
            f"| {r['fp32_onnx_bytes'] / 1024:.1f} KiB | {r['int8_onnx_bytes'] / 1024:.1f} KiB "
            f"| {r['bundle_bytes'] / 1024:.0f} KiB | {r['export_s']:.1f} s |"
        )
    print(
        "\naccuracy in %, on the bundle's held-out test windows; OpenVINO int8 kernels:",
        ", ".join(sorted({k for r in rows for k in r["kernels"]})),
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
