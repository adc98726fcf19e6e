"""`edgekd teacher inspect | cache | export`: work with a teacher before distilling from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekd.commands import require_extra, user_errors

DataOpt = Annotated[
    str | None, typer.Option(help="Paired data: 'har' or PATH/manifest.jsonl.")
]


def register_teacher_tools(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def cache(
        card: Annotated[Path, typer.Argument(help="The teacher's card (or its model file).")],
        data: DataOpt = None,
        out: Annotated[Path, typer.Option(help="Cache folder to create.")] = Path(
            "runs/teacher-cache"
        ),
    ) -> None:
        """Run an outside teacher once over every window of the data and store its outputs with
        a fingerprint; `distill --teacher OUT` uses them (and refuses them once the data
        change)."""
        require_extra("train", "`edgekd teacher cache`")
        from edgekd.data import load_dataset
        from edgekd.errors import ConfigError
        from edgekd.teachers import read_card
        from edgekd.teachers.cache import write_cache

        if not data:
            raise ConfigError("edgekd teacher cache needs --data har or --data PATH/manifest.jsonl")
        tcard = read_card(card)
        ds = load_dataset(data)
        fingerprint = write_cache(tcard, ds, out)
        typer.echo(
            f"{out}: outputs of {fingerprint['teacher']['name'] or tcard.source} for "
            f"{fingerprint['data']['windows']:,} windows of {fingerprint['data']['source']}"
        )

    @app.command()
    @user_errors
    def inspect(
        card: Annotated[
            Path,
            typer.Argument(metavar="CARD_OR_MODEL", help="The teacher's card (or its model file)."),
        ],
        data: DataOpt = None,
        json_file: Annotated[
            Path | None, typer.Option("--json", help="Also write the report as JSON to FILE.")
        ] = None,
    ) -> None:
        """Show what a teacher card says and, with --data, check the teacher on the data before
        distilling: signature, batch invariance, determinism, label order, normalisation and
        embedding collapse. Exits 2 when a check fails (the card must be fixed first)."""
        require_extra("train", "`edgekd teacher inspect`")
        from edgekd.io import atomic_write_json
        from edgekd.teachers.checks import inspect_teacher

        report = inspect_teacher(card, data)
        typer.echo(report.render())
        if json_file is not None:
            atomic_write_json(json_file, report.to_dict())
        if report.refused:
            raise typer.Exit(code=2)

    @app.command("export")
    @user_errors
    def export(
        run: Annotated[Path, typer.Argument(help="The teacher run folder (`edgekd teacher`).")],
        out: Annotated[Path, typer.Option(help="Folder to create: teacher.onnx + teacher.yaml.")],
        licence: Annotated[
            str, typer.Option(help="Licence text for the card (e.g. the data's licence).")
        ] = "unspecified",
    ) -> None:
        """Export an edgekd teacher run as an outside teacher (ONNX + teacher card) that
        `distill --teacher OUT --data ...` takes; checked against the torch teacher first."""
        require_extra("export", "`edgekd teacher export`")
        from edgekd.teachers import read_card
        from edgekd.teachers.export import export_teacher

        card_path = export_teacher(run, out, licence=licence)
        tcard = read_card(card_path)
        typer.echo(str(card_path))
        typer.echo(
            f"{tcard.name}: ONNX teacher of {len(tcard.labels)} classes reading "
            f"{', '.join(tcard.modalities)} (sha256 {tcard.sha256[:12]}, licence {tcard.licence})"
        )
