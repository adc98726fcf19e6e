"""`edgekd demo`: the whole pipeline on the built-in data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekd.commands import user_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def demo(
        out: Annotated[
            Path, typer.Option(help="Folder for runs, bundle, plots and report.md.")
        ] = Path("out/demo"),
        quick: Annotated[
            bool,
            typer.Option("--quick", help="Tiny settings (CI smoke run; numbers mean nothing)."),
        ] = False,
        force: Annotated[
            bool, typer.Option("--force", help="Re-export even if a bundle exists.")
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    ) -> None:
        """Teacher -> students -> int8 bundle -> benchmark -> streaming, with a report."""
        from rich.console import Console
        from rich.table import Table

        from edgekd.demo import run_demo, summary_rows

        summary = run_demo(out, quick=quick, force=force, progress=not quiet)
        table = Table(title=f"edgekd demo ({summary['mode']})")
        table.add_column("what")
        table.add_column("figure", justify="right")
        for what, figure in summary_rows(summary):
            table.add_row(what, figure)
        Console().print(table)
        typer.echo(f"report: {out / 'report.md'}")
