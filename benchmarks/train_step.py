"""Framework cost of a distillation step: edgekd's `train_step` against a bare PyTorch loop.

Same student, same batch, same losses (CE + Hinton logit KD with precomputed teacher logits),
same optimizer. Both loops are timed in one process, interleaved in rounds, and the table
reports the median per-step time of each and their ratio (goal: at most 1.15x).

    .venv/bin/python benchmarks/train_step.py [--steps 200] [--rounds 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from edgekd.config import RECIPES
from edgekd.distill.loop import StudentObjective, train_step
from edgekd.distill.losses import DistillCriterion
from edgekd.modalities import ModalitySpec
from edgekd.models import create_student


def _spec() -> ModalitySpec:
    return ModalitySpec(name="accel", kind="timeseries", rate_hz=50, channels=3, window=128, hop=64,
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--arch", default="tcn_tiny")
    args = parser.parse_args()

    torch.manual_seed(0)
    spec, classes, tau = _spec(), 12, RECIPES["kd"].tau
    x = torch.randn(args.batch, 3, 128)
    y = torch.randint(0, classes, (args.batch,))
    t_logits = torch.randn(args.batch, classes)

    student = create_student(args.arch, spec, classes)
    objective = StudentObjective(student, DistillCriterion(RECIPES["kd"], student.embed_dim, 64))
    opt_a = torch.optim.AdamW(objective.parameters(), lr=1e-3)

    bare = create_student(args.arch, spec, classes)
    opt_b = torch.optim.AdamW(bare.parameters(), lr=1e-3)

    def edgekd_loop() -> None:
        for _ in range(args.steps):
            train_step(objective, opt_a, x, y, t_logits, None, None)

    def bare_loop() -> None:
        for _ in range(args.steps):
            logits = bare(x)
            kd = F.kl_div(
                F.log_softmax(logits / tau, 1), F.softmax(t_logits / tau, 1), reduction="batchmean"
            )
            loss = F.cross_entropy(logits, y) + tau * tau * kd
            opt_b.zero_grad(set_to_none=True)
            loss.backward()
            opt_b.step()
            float(loss.detach())  # the same one sync per step that train_step makes for logging

    times: dict[str, list[float]] = {"edgekd train_step": [], "bare PyTorch loop": []}
    edgekd_loop(), bare_loop()  # warm-up
    for _ in range(args.rounds):
        for name, fn in (("edgekd train_step", edgekd_loop), ("bare PyTorch loop", bare_loop)):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["edgekd train_step"] / med["bare PyTorch loop"]
    print(f"student {args.arch}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'loop':<20} {'median ms/step':>15} {'min':>8} {'max':>8}")
    for name, values in times.items():
        print(f"{name:<20} {med[name]:>15.3f} {min(values):>8.3f} {max(values):>8.3f}")
    print(f"ratio edgekd / bare: {ratio:.3f}x (goal <= 1.15x)")


if __name__ == "__main__":
    main()
