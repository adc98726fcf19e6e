"""PNG plots for the demo report (matplotlib, Agg backend, imported lazily), and the check every
plotting command makes before its long work: matplotlib is optional (the `report` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.io import atomic_write_png


def plots_unavailable() -> str | None:
    """None when matplotlib imports; else the one-line note a command prints instead of its
    plots. Commands ask before they train or measure, so that a missing matplotlib is said at
    the start and never fails a run at its end."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots skipped: matplotlib is not installed (pip install 'edgekd[report]')"
    return None


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (PNG files, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(histories: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> None:
    """Training loss and validation accuracy per epoch, one line per run."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        ax_loss.plot(epochs, [h["train"]["total"] for h in history], marker="o", ms=3, label=name)
        ax_acc.plot(
            epochs, [100 * h["val"]["accuracy"] for h in history], marker="o", ms=3, label=name
        )
    ax_loss.set(xlabel="epoch", ylabel="training loss (total)", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_png(path, fig)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (rows: true class) with counts in the cells."""
    plt = pyplot()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    atomic_write_png(path, fig)
    plt.close(fig)


def plot_stream(
    t_s: np.ndarray,
    predicted: np.ndarray,
    expected: np.ndarray,
    true_t_s: np.ndarray,
    true: np.ndarray,
    labels: Sequence[str],
    path: Path,
    title: str,
) -> None:
    """Streamed predictions (one dot per event: green where it equals `expected`, the window's
    true label, red where not, grey where that label is unknown, -1) over the true activity."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 4))
    labelled = true >= 0
    ax.plot(true_t_s[labelled], true[labelled], ",", color="0.3", label="true activity")
    known = expected >= 0
    ok = known & (predicted == expected)
    bad = known & (predicted != expected)
    ax.scatter(t_s[ok], predicted[ok], s=6, color="tab:green", label="prediction (matches)")
    ax.scatter(t_s[bad], predicted[bad], s=6, color="tab:red", label="prediction (differs)")
    ax.scatter(t_s[~known], predicted[~known], s=6, color="0.6", label="prediction (unlabelled)")
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=7)
    ax.set(xlabel="stream time (s)", title=title)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.2)
    fig.tight_layout()
    atomic_write_png(path, fig)
    plt.close(fig)
