"""Run under `torchrun --nproc-per-node N`: what DDP training relies on, read from the batches that
training itself used (real HAR data, the `edgekd` command, not a copy of its sharding).

Each rank runs an `edgekd` command in-process with a test-only hook on `Loader.epoch`, the one
place training takes its batches from: every batch the rank trains on is recorded (epoch, step,
window positions), and after each epoch's last optimizer step the weights of the model being
trained are snapshotted.

    ddp_check.py                             `edgekd teacher` on HAR (--limit 301, 2 epochs) in a
                                             temporary folder; rank 0 prints one JSON line:
                                             {"disjoint", "covered", "windows", "same_weights",
                                              "epochs", "equal_steps"} (covered: the fewest
                                             windows any epoch covered) and exits non-zero
                                             unless every epoch's shards were disjoint, equal
                                             in steps and covered all but < world windows, and
                                             the ranks' weights were equal after every epoch
    ddp_check.py --record DIR -- ARGS...     `edgekd ARGS...`; rank r writes DIR/rank<r>.json:
                                             {"rank", "world", "windows", "batches": [[epoch,
                                             step, [positions...]], ...]}
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import edgekd.distill.trainer as trainer
from edgekd.data.pipeline import Loader

BATCHES: list[tuple[int, int, list[int]]] = []  # (epoch, step, window positions) trained on
WINDOWS: list[int] = []  # the Loader's window count
SNAPSHOTS: dict[int, torch.Tensor] = {}  # epoch -> flat weights after its last step
MODELS: list[torch.nn.Module] = []  # the objective `fit` trains


def _hook() -> None:
    epoch_batches = Loader.epoch
    fit = trainer.fit

    def recorded(self: Loader, epoch: int):  # noqa: ANN202 - a generator, as Loader.epoch
        WINDOWS[:] = [len(self)]
        for batch in epoch_batches(self, epoch):
            BATCHES.append((epoch, batch.step, [int(i) for i in batch.idx]))
            yield batch
        # Resumed after the epoch's last step: the weights that step left.
        if MODELS:
            SNAPSHOTS[epoch] = torch.cat([p.detach().flatten().clone()
                                          for p in MODELS[0].parameters()])  # fmt: skip

    def captured(objective: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        MODELS[:] = [objective]
        return fit(objective, *args, **kwargs)

    Loader.epoch = recorded  # type: ignore[method-assign]
    trainer.fit = captured  # type: ignore[assignment]


def _run_edgekd(args: list[str]) -> None:
    from edgekd.cli import app

    code = app(args, standalone_mode=False)
    if code not in (None, 0):
        raise SystemExit(f"edgekd {' '.join(args)} exited with {code}")


def _check(out: Path) -> None:
    import torch.distributed as dist

    _run_edgekd(["teacher", "--data", "har", "--limit", "301", "--epochs", "2",
                 "--batch-size", "32", "--seed", "0", "--out", str(out), "--quiet"])  # fmt: skip
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {"batches": BATCHES, "windows": WINDOWS[0],
            "weights": {e: w.tolist() for e, w in SNAPSHOTS.items()}}  # fmt: skip
    every: list[Any] = [None] * world
    dist.all_gather_object(every, mine)
    dist.barrier()
    if rank == 0:
        epochs = sorted({e for r in every for e, _, _ in r["batches"]})
        disjoint, covered, steps = True, [], set()
        for epoch in epochs:
            seen = [i for r in every for e, _, idx in r["batches"] if e == epoch for i in idx]
            disjoint &= len(seen) == len(set(seen))
            covered.append(len(set(seen)))
            steps |= {tuple(sum(e == epoch for e, _, _ in r["batches"]) for r in every)}
        weights = [r["weights"] for r in every]
        facts = {
            "disjoint": disjoint,
            "covered": min(covered) if covered else 0,
            "windows": every[0]["windows"],
            "same_weights": bool(weights[0]) and all(w == weights[0] for w in weights),
            "epochs": len(epochs),
            "equal_steps": all(len(set(s)) == 1 for s in steps),
        }
        print(json.dumps(facts), flush=True)
        shutil.rmtree(out.parent, ignore_errors=True)
        # Each epoch: disjoint shards, equal steps, all but fewer than `world` windows covered.
        if not (
            facts["disjoint"]
            and facts["same_weights"]
            and facts["equal_steps"]
            and facts["epochs"] == 2
            and facts["windows"] - facts["covered"] < world
        ):
            raise SystemExit(f"DDP training broke a sharding or sync contract: {facts}")
    dist.destroy_process_group()


def main() -> None:
    _hook()
    argv = sys.argv[1:]
    if argv[:1] == ["--record"]:
        record, rest = Path(argv[1]), argv[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        _run_edgekd(rest)
        rank = int(os.environ.get("RANK", "0"))
        record.mkdir(parents=True, exist_ok=True)
        (record / f"rank{rank}.json").write_text(json.dumps({
            "rank": rank, "world": int(os.environ.get("WORLD_SIZE", "1")),
            "windows": WINDOWS[0] if WINDOWS else None, "batches": BATCHES,
        }))  # fmt: skip
        return
    # Every worker of one torchrun shares its run id (and its agent's pid): one folder for all.
    tag = os.environ.get("TORCHELASTIC_RUN_ID") or str(os.getppid())
    _check(Path(tempfile.gettempdir()) / f"edgekd-ddp-check-{tag}" / "teacher")


if __name__ == "__main__":
    main()
