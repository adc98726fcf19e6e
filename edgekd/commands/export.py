"""`edgekd export` (run folder -> bundle) and `edgekd targets` (what export can aim at)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekd.commands import user_errors
from edgekd.commands.options import ExportConfigOpt, ExportSetOpt


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def export(
        run_dir: Annotated[
            Path, typer.Argument(help="Student run folder (from `edgekd distill`).")
        ],
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Bundle folder to write, e.g. out/har.edgekd.")
        ],
        target: Annotated[
            str | None, typer.Option(help="Deployment target (see `edgekd targets`; default cpu).")
        ] = None,
        precision: Annotated[
            str | None, typer.Option(help="fp32 | fp16 | int8 (default: the target's).")
        ] = None,
        ptq: Annotated[
            str | None,
            typer.Option(help="PTQ calibration: minmax (default) | percentile | entropy."),
        ] = None,
        calib: Annotated[
            int | None,
            typer.Option(
                help="Calibration windows drawn from the training split (default 512, or all "
                "when there are fewer)."
            ),
        ] = None,
        qat: Annotated[
            bool | None,
            typer.Option("--qat", help="Quantization-aware fine-tuning instead of PTQ."),
        ] = None,
        qat_epochs: Annotated[int | None, typer.Option(help="QAT epochs (default 3).")] = None,
        max_drop: Annotated[
            float | None,
            typer.Option(help="Most accuracy points int8/fp16 may lose vs torch FP32 (default 1)."),
        ] = None,
        backend_quantizer: Annotated[
            str | None,
            typer.Option(
                help="ort (default: TensorRT-style QDQ everywhere) | nncf (OpenVINO int8 IR by "
                "NNCF, with accuracy control)."
            ),
        ] = None,
        trt_frontend: Annotated[
            str | None,
            typer.Option(help="onnx (default: TensorRT ONNX parser) | torch-tensorrt."),
        ] = None,
        allow_float: Annotated[
            list[str] | None,
            typer.Option(
                "--allow-float",
                help="Conv/Gemm/MatMul node the int8 lint accepts in float (repeat per node).",
            ),
        ] = None,
        data: Annotated[
            str | None,
            typer.Option(
                "--data",
                help="The run's dataset at a new place (har or a manifest), checked against "
                "the run's labels and modalities.",
            ),
        ] = None,
        dla_core: Annotated[
            int | None,
            typer.Option(
                "--dla-core", help="Build the TensorRT engine for this DLA core (jetson-agx-orin)."
            ),
        ] = None,
        force: Annotated[
            bool | None, typer.Option("--force", help="Replace an existing bundle at --out.")
        ] = None,
        config: ExportConfigOpt = None,
        set_: ExportSetOpt = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
        with_eval: Annotated[
            bool, typer.Option("--with-eval", help="Keep the held-out windows inside the bundle "
                               "(default: beside it as NAME.eval.npz).")
        ] = False,
        sign_key: Annotated[
            Path | None, typer.Option("--sign-key", help="Ed25519 private key (PEM) to sign "
                                      "the bundle with (see `edgekd keygen`).")
        ] = None,
    ) -> None:
        """Export a trained student to a bundle: ONNX, int8 QDQ, OpenVINO IR, TensorRT engine or
        its build options, golden/eval windows, and an accuracy report per backend. The export
        options come from the flags, --set KEY=VALUE and --config FILE (in that precedence)."""
        from dataclasses import fields

        from edgekd.config import build_options
        from edgekd.export.exporter import ExportOptions, export_run

        given = {
            "target": target, "precision": precision, "ptq": ptq, "calib": calib, "qat": qat,
            "qat_epochs": qat_epochs, "max_drop": max_drop, "force": force,
            "backend_quantizer": backend_quantizer, "trt_frontend": trt_frontend,
            "allow_float": None if allow_float is None else tuple(allow_float), "data": data,
            "dla_core": dla_core,
        }  # fmt: skip
        opts = build_options(ExportOptions, config, sets=set_ or (), flags=given)
        result = export_run(
            run_dir, out, **{f.name: getattr(opts, f.name) for f in fields(opts)},
            progress=not quiet, with_eval=with_eval, sign_key=sign_key,
        )  # fmt: skip
        total = sum(result.sizes.values())
        typer.echo(
            f"{result.out}: {len(result.manifest['artifacts'])} artifacts, "
            f"{total / 1024:.1f} KiB, {result.timings.get('total', 0.0):.1f} s"
        )
        if quiet:  # the table and notices were not shown by the progress display
            from edgekd.export.accuracy import format_table

            typer.echo(format_table(result.accuracy))
            for notice in result.notices:
                typer.echo(f"note: {notice}")

    @app.command()
    def targets() -> None:
        """List the deployment targets `edgekd export --target` accepts."""
        from edgekd.targets import list_targets

        all_targets = list_targets()
        width = max(len(t.name) for t in all_targets)
        for t in all_targets:
            typer.echo(f"{t.name.ljust(width)}  {t.backend:<11} {t.precision:<5} {t.description}")
