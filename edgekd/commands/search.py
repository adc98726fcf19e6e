"""`edgekd search` (the best student for a device budget) and `edgekd latency-table`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekd.commands import require_extra, user_errors
from edgekd.commands.options import (
    AddressOpt,
    BatchOpt,
    ConfigOpt,
    DataOpt,
    ExecutorOpt,
    LimitOpt,
    SetOpt,
    TeacherOpt,
    UnlabelledOpt,
    refuse_given,
    run_config,
)

# What --config / --set may give a search: the base config of its trials, less what it explores
# per trial (the student, its lr, the recipe); the trials take these fields of it.
SEARCH_EXPLORES = {
    "model": "the search draws the student and its arguments (pick students with --archs)",
    "train.lr": "the search draws each trial's learning rate",
    "distill": "the search draws each trial's recipe, tau and alpha",
}
SEARCH_TAKES = ("data.source", "data.limit", "data.unlabelled", "train.epochs",
                "train.batch_size", "train.seed")  # fmt: skip


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def search(
        teacher: TeacherOpt,
        out: Annotated[
            Path, typer.Option(help="Search folder (study.db inside; rerun with it to resume).")
        ],
        target: Annotated[str, typer.Option(help="Deployment target (see `edgekd targets`).")] = (
            "cpu"
        ),
        budget_ms: Annotated[
            float | None, typer.Option(help="Most batch-1 p50 latency on the target (ms).")
        ] = None,
        budget_kb: Annotated[
            float | None, typer.Option(help="Most int8 model size (QDQ ONNX, KB = 1000 B).")
        ] = None,
        budget_rss_mb: Annotated[
            float | None,
            typer.Option(help="Most peak RSS of a process running the bundle (MB = 10^6 B)."),
        ] = None,
        trials: Annotated[
            int, typer.Option(help="Trials to train, the default first (rejections not counted).")
        ] = 24,
        epochs: Annotated[
            int | None, typer.Option(help="Epochs per trial (train.epochs; default 30).")
        ] = None,
        archs: Annotated[
            str | None,
            typer.Option(help="Comma-separated students to search (default: all for the kind)."),
        ] = None,
        executor: ExecutorOpt = "local",
        address: AddressOpt = None,
        jobs: Annotated[int, typer.Option(help="Trials at once.")] = 1,
        threads: Annotated[
            int | None, typer.Option(help="CPU threads for all local jobs together.")
        ] = None,
        seed: Annotated[
            int | None, typer.Option(help="Sampler and training seed (train.seed; default 0).")
        ] = None,
        limit: LimitOpt = None,
        unlabelled: UnlabelledOpt = None,
        batch_size: BatchOpt = None,
        pruner: Annotated[str, typer.Option(help="median | halving | none.")] = "median",
        latency_table: Annotated[
            Path | None,
            typer.Option(help="p50 per architecture recorded on the device (`latency-table`)."),
        ] = None,
        max_drop: Annotated[
            float, typer.Option(help="Export of the chosen student: most int8 drop (points).")
        ] = 1.0,
        quiet_wait_s: Annotated[
            float,
            typer.Option(help="Most seconds a timing waits for a quiet machine (else noisy)."),
        ] = 30.0,
        timing_s: Annotated[
            float, typer.Option(help="Seconds of batch-1 timing per measured candidate.")
        ] = 1.0,
        finalists: Annotated[
            int,
            typer.Option(help="Best trials within budget retrained in full (plus the default)."),
        ] = 3,
        final_seeds: Annotated[
            int, typer.Option(help="Seeds of each finalist's full run, each paired with CE.")
        ] = 3,
        final_epochs: Annotated[
            int | None,
            typer.Option(help="Epochs of a finalist's full run (default: distill's schedule)."),
        ] = None,
        data: DataOpt = None,
        no_export: Annotated[
            bool, typer.Option("--no-export", help="Do not export the chosen student.")
        ] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Find the most accurate student within a latency / size budget on a target: short
        trials rank candidates, then the best --finalists and the default are retrained in full
        over --final-seeds seeds (each paired with CE) and the best on validation ships.
        --config / --set give the trials' base config: its data.source, data.limit,
        data.unlabelled, train.epochs, train.batch_size and train.seed (the student, lr and
        recipe are what the search draws)."""
        require_extra("export", "`edgekd search`")
        refuse_given(config, set_, "search", SEARCH_EXPLORES, only=SEARCH_TAKES)
        base = run_config(config, set_, {
            "data.source": data, "data.limit": limit, "data.unlabelled": unlabelled,
            "train.epochs": epochs, "train.batch_size": batch_size, "train.seed": seed,
        })  # fmt: skip
        from edgekd.search import SearchSpec, run_search

        spec = SearchSpec(
            teacher=teacher, out=out, target=target, budget_ms=budget_ms, budget_kb=budget_kb,
            budget_rss_mb=budget_rss_mb,
            trials=trials, archs=_names(archs), executor=executor, address=address, jobs=jobs,
            threads=threads, latency_table=latency_table, pruner=pruner,
            export=not no_export, max_drop=max_drop, timing_s=timing_s,
            quiet_wait_s=quiet_wait_s,
            finalists=finalists, final_seeds=final_seeds, final_epochs=final_epochs,
            **({} if base.train.epochs is None else {"epochs": base.train.epochs}),
            seed=base.train.seed, batch_size=base.train.batch_size, limit=base.data.limit,
            unlabelled=base.data.unlabelled, data=base.data.source,
        )  # fmt: skip
        run_search(spec, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"wrote {out / 'search.json'}, {out / 'pareto.md'}")

    @app.command("latency-table")
    @user_errors
    def latency_table(
        teacher: Annotated[
            Path,
            typer.Option(
                help="Teacher run folder, or an outside teacher's card (with --data): the "
                "student's input shape and classes."
            ),
        ],
        target: Annotated[str, typer.Option(help="The target this device is.")],
        out: Annotated[Path, typer.Option(help="Table JSON to write or extend.")],
        archs: Annotated[
            str | None,
            typer.Option(help="Comma-separated students whose whole space is recorded."),
        ] = None,
        from_search: Annotated[
            Path | None,
            typer.Option(help="A search folder: record the candidates it had no latency for."),
        ] = None,
        seconds: Annotated[float, typer.Option(help="Timing per architecture (s).")] = 1.0,
        data: Annotated[
            str | None,
            typer.Option(
                help="Paired data: 'har' or PATH/manifest.jsonl (needed with an outside teacher; "
                "with an edgekd teacher, its data at a new place, checked against it)."
            ),
        ] = None,
    ) -> None:
        """Run ON THE TARGET DEVICE: time every architecture of the students' spaces at batch 1
        and write the latency table `edgekd search --latency-table` reads."""
        require_extra("export", "`edgekd latency-table`")
        from edgekd.errors import ConfigError
        from edgekd.search.latency import record_latency_table, untimed_candidates
        from edgekd.search.run import student_input
        from edgekd.search.space import arch_space, enumerate_space

        if (archs is None) == (from_search is None):
            raise ConfigError("give one of --archs (whole spaces) or --from-search DIR")
        spec, labels = student_input(teacher, data)
        if from_search is not None:
            grid = untimed_candidates(from_search)
        else:
            names = _names(archs) or ()
            grid = [(a, args) for a in names for args in enumerate_space(arch_space(a))]
        typer.echo(f"recording {len(grid)} architectures for {target} into {out}", err=True)
        table = record_latency_table(
            grid, spec, len(labels), target, out, duration_s=seconds,
            log=lambda line: typer.echo(line, err=True),
        )  # fmt: skip
        typer.echo(f"wrote {out} ({len(table['p50_ms'])} architectures)")


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(n.strip() for n in text.split(",") if n.strip())
