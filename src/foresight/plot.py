"""Plots people would rather look at than read: curves of a metric against the step, one line per run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, *, title: str, ylabel: str,
                ylim: tuple[float, float] | None = None, hline: tuple[float, str] | None = None) -> Path:
    """``curves``: run name -> [(step, value), ...]. Writes a PNG and returns its path."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, points in curves.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, linewidth=1.6, label=name)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
