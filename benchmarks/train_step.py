"""Framework cost of a distillation step: edgekd against a bare PyTorch loop doing the same work.

Two pairs of rows, each timed in one process, interleaved in rounds; the table reports the
median per-step time of each and their ratio (goal: at most 1.15x):
- `train_step`: same student, batch, losses (CE + Hinton logit KD with precomputed teacher
  logits) and optimizer.
- `pipeline step`: the whole distillation step of `edgekd distill` (online teacher): gather raw
  accelerometer + gyroscope windows, augment them (the default rotation, scaling, jitter: the
  same op functions), normalise, run the frozen fusion teacher, train the student. The bare loop
  does the same with plain numpy indexing and no Loader, policy or step-source objects.

    .venv/bin/python benchmarks/train_step.py [--steps 200] [--rounds 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.config import RECIPES, AugmentConfig
from edgekd.data.augment import build_policy, jitter, rotate, scale
from edgekd.data.dataset import Split
from edgekd.data.har import ACCEL, GYRO
from edgekd.data.pipeline import Loader, Windows, batch_rng
from edgekd.distill.feeds import OnlineFeed
from edgekd.distill.loop import StudentObjective, train_step
from edgekd.distill.losses import DistillCriterion
from edgekd.distill.teacher_outputs import TeacherView
from edgekd.distill.trainer import StudentSteps
from edgekd.modalities import ModalitySpec
from edgekd.models import create_student, create_teacher


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

    pipe_loop, bare_pipe_loop = _pipeline_pair(args.arch, args.batch, args.steps, tau)
    pairs = [
        ("edgekd train_step", edgekd_loop, "bare train_step", bare_loop),
        ("edgekd pipeline step", pipe_loop, "bare pipeline step", bare_pipe_loop),
    ]
    times: dict[str, list[float]] = {name: [] for pair in pairs for name in pair[::2]}
    for pair in pairs:  # warm-up
        pair[1](), pair[3]()
    for _ in range(args.rounds):
        for a, fa, b, fb in pairs:
            for name, fn in ((a, fa), (b, fb)):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"student {args.arch}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'loop':<22} {'median ms/step':>15} {'min':>8} {'max':>8}")
    for name, values in times.items():
        print(f"{name:<22} {med[name]:>15.3f} {min(values):>8.3f} {max(values):>8.3f}")
    for a, _, b, _ in pairs:
        best = min(times[a]) / min(times[b])  # the least disturbed round: robust on a busy host
        print(f"ratio {a} / {b}: median {med[a] / med[b]:.3f}x, min {best:.3f}x (goal <= 1.15x)")


def _pipeline_pair(arch: str, batch: int, steps: int, tau: float):  # noqa: ANN202
    """(edgekd, bare) closures that each run `steps` online-teacher distillation steps."""
    classes, n = 12, 8 * batch
    rng = np.random.default_rng(0)
    specs = {m: replace(s, mean=(0.1, 0.0, -0.2), std=(0.5, 0.4, 0.3))
             for m, s in (("accel", ACCEL), ("gyro", GYRO))}  # fmt: skip
    raw = {m: rng.standard_normal((n, 128, 3)).astype(np.float32) for m in specs}
    split = Split(x=raw, y=rng.integers(0, classes, n), subject=np.zeros(n, dtype=str))
    windows = Windows.of((split, np.arange(n)))
    policy = build_policy(AugmentConfig(), specs, classes)
    torch.manual_seed(0)
    teacher = create_teacher("fusion", specs, classes).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(1)
        student = create_student(arch, specs["accel"], classes)
        crit = DistillCriterion(RECIPES["kd"], student.embed_dim, teacher.embed_dim)
        objective = StudentObjective(student, crit)
        return objective, torch.optim.AdamW(objective.parameters(), lr=1e-3)

    objective, opt_a = make()
    loader = Loader(windows, {"student": {"accel": specs["accel"]}, "teacher": specs},
                    aug_specs=specs, policy=policy, batch_size=batch, seed=0)  # fmt: skip
    source = StudentSteps(loader, "accel", OnlineFeed(teacher, TeacherView(), 0, 0))

    def edgekd_loop() -> None:
        done, epoch = 0, 0
        while done < steps:
            for step_args in source.epoch(epoch):
                train_step(objective, opt_a, *step_args)
                done += 1
                if done == steps:
                    return
            epoch += 1

    bare, _ = make()
    opt_b = torch.optim.AdamW(bare.model.parameters(), lr=1e-3)
    norm = {m: (np.asarray(s.mean, np.float32)[:, None], 1 / np.asarray(s.std, np.float32)[:, None])
            for m, s in specs.items()}  # fmt: skip

    def bare_loop() -> None:
        done, epoch = 0, 0
        while done < steps:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).numpy()
            for step in range(n // batch):
                idx = np.sort(perm[step * batch : (step + 1) * batch])
                r = batch_rng(0, epoch, step)
                x = {m: raw[m][idx] for m in specs}
                rotate(x, specs, r, 15.0)
                scale(x, specs, r, 0.1)
                jitter(x, specs, r, 0.05)
                t = {}
                for m in specs:
                    feats = np.ascontiguousarray(x[m].transpose(0, 2, 1))
                    t[m] = torch.from_numpy((feats - norm[m][0]) * norm[m][1])
                y = torch.from_numpy(split.y[idx])
                with torch.no_grad():
                    t_logits = teacher(t)
                logits = bare.model(t["accel"])
                kd = F.kl_div(F.log_softmax(logits / tau, 1), F.softmax(t_logits / tau, 1),
                              reduction="batchmean")  # fmt: skip
                loss = F.cross_entropy(logits, y) + tau**2 * kd
                opt_b.zero_grad(set_to_none=True)
                loss.backward()
                opt_b.step()
                float(loss.detach())
                done += 1
                if done == steps:
                    return
            epoch += 1

    return edgekd_loop, bare_loop


if __name__ == "__main__":
    main()
