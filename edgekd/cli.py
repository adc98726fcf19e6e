"""The `edgekd` command line: a thin typer layer over the library.

Each command group lives in `edgekd.commands.<name>` and registers itself on the app; heavy
imports (torch, onnx, openvino) happen inside the command functions, so `edgekd --help` is fast.
"""

from __future__ import annotations

import typer

from edgekd.commands import register_all, search

app = typer.Typer(
    name="edgekd",
    help="Cross-modal distillation to a quantized single-modality student, exported and measured.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register_all(app)
search.register(app)  # `search`, `latency-table`


def main() -> None:
    app()


if __name__ == "__main__":
    main()
