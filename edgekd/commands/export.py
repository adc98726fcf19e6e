"""`edgekd export` (run folder -> bundle) and `edgekd targets` (what export can aim at)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekd.commands import user_errors


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
            str, typer.Option(help="Deployment target (see `edgekd targets`).")
        ] = "cpu",
        precision: Annotated[
            str | None, typer.Option(help="fp32 | fp16 | int8 (default: the target's).")
        ] = None,
        ptq: Annotated[
            str, typer.Option(help="PTQ calibration: minmax | percentile | entropy.")
        ] = "minmax",
        calib: Annotated[
            int | None,
            typer.Option(
                help="Calibration windows drawn from the training split (default 512, or all "
                "when there are fewer)."
            ),
        ] = None,
        qat: Annotated[
            bool, typer.Option("--qat", help="Quantization-aware fine-tuning instead of PTQ.")
        ] = False,
        qat_epochs: Annotated[int, typer.Option(help="QAT epochs.")] = 3,
        max_drop: Annotated[
            float, typer.Option(help="Most accuracy points int8/fp16 may lose vs torch FP32.")
        ] = 1.0,
        backend_quantizer: Annotated[
            str,
            typer.Option(
                help="ort (TensorRT-style QDQ everywhere) | nncf (OpenVINO int8 IR by NNCF, "
                "with accuracy control)."
            ),
        ] = "ort",
        trt_frontend: Annotated[
            str, typer.Option(help="onnx (TensorRT ONNX parser) | torch-tensorrt.")
        ] = "onnx",
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
            bool, typer.Option("--force", help="Replace an existing bundle at --out.")
        ] = False,
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
        its build options, golden/eval windows, and an accuracy report per backend."""
        from edgekd.export.exporter import export_run

        result = export_run(
            run_dir,
            out,
            target=target,
            precision=precision,
            ptq=ptq,
            calib=calib,
            qat=qat,
            qat_epochs=qat_epochs,
            max_drop=max_drop,
            force=force,
            backend_quantizer=backend_quantizer,
            trt_frontend=trt_frontend,
            progress=not quiet,
            with_eval=with_eval,
            sign_key=sign_key,
            allow_float=tuple(allow_float or ()),
            data=data,
            dla_core=dla_core,
        )
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
