"""`edgekd search`: the most accurate student that meets a device budget (see docs/search.md).

    from edgekd.search import SearchSpec, run_search
    report = run_search(SearchSpec(teacher=Path("runs/teacher"), out=Path("runs/search"),
                                   target="cpu", budget_ms=0.25, trials=24))

Importing this package imports neither torch nor optuna.
"""

from edgekd.search.run import SearchSpec, run_search

__all__ = ["SearchSpec", "run_search"]
