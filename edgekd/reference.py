"""The PyTorch eager FP32 reference a user would otherwise deploy, for benchmark tables.

Kept out of `edgekd.runtime` (which never imports torch): callers that have torch build the
reference here and hand the runtime's benchmark a plain numpy callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count (a thread
    count left changed would change the float rounding of every later training in the process)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def eager_reference(
    run_dir: Path, labels: Sequence[str] | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """features (B, *feature_shape) float32 -> logits with the run's model in eager FP32.

    `labels`, when given, must equal the run's (the bundle was exported from this run).
    """
    import torch

    from edgekd.checkpoint import load_run

    run = load_run(run_dir)
    if labels is not None and list(run.sidecar.get("labels", [])) != list(labels):
        raise ConfigError(
            f"{run_dir} is not the run this bundle was exported from (its labels differ); "
            "pass the right --run folder"
        )
    net = run.model.eval()

    def reference(features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(features)).numpy()

    return reference
