"""Run under `torchrun --nproc-per-node N`: checks what DDP training relies on, on real HAR data.

Each rank builds the pipeline as `edgekd distill` does (augmented, sharded), trains two steps of
tcn_tiny with DDP, and all-gathers (a) its epoch shard and (b) its weights. Rank 0 prints one
JSON line: {"disjoint": bool, "covered": int, "windows": int, "same_weights": bool}.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from edgekd.config import AugmentConfig
from edgekd.data import load_dataset
from edgekd.data.augment import build_policy
from edgekd.data.pipeline import Loader, Windows, labelled, shard_batches
from edgekd.distill.loop import init_dist, train_step
from edgekd.models import create_student


class _CE(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(self.model(x), y)
        return {"total": loss}


def main() -> None:
    d = init_dist()
    ds = load_dataset("har", limit=301, seed=0)
    spec = ds.specs["accel"]
    train = ds.splits["train"]
    windows = Windows.of((train, labelled(train)))
    policy = build_policy(AugmentConfig(), {"accel": spec}, len(ds.labels))
    loader = Loader(windows, {"s": {"accel": spec}}, aug_specs={"accel": spec}, policy=policy,
                    batch_size=32, seed=0, rank=d.rank, world=d.world)  # fmt: skip
    torch.manual_seed(0)
    objective = _CE(create_student("tcn_tiny", spec, len(ds.labels)))
    ddp = torch.nn.parallel.DistributedDataParallel(objective)
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-2)
    for batch, _ in zip(loader.epoch(0), range(2), strict=False):
        train_step(ddp, opt, batch.inputs["s"]["accel"], batch.y)
    shard = np.concatenate(shard_batches(len(windows), 32, 0, 0, d.rank, d.world))
    shards: list = [None] * d.world
    dist.all_gather_object(shards, shard.tolist())
    flat = torch.cat([p.detach().flatten() for p in objective.parameters()])
    weights = [torch.zeros_like(flat) for _ in range(d.world)]
    dist.all_gather(weights, flat)
    if d.is_main:
        seen = [i for s in shards for i in s]
        print(json.dumps({
            "disjoint": len(seen) == len(set(seen)),
            "covered": len(set(seen)),
            "windows": len(windows),
            "same_weights": all(torch.equal(w, weights[0]) for w in weights),
        }))  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
