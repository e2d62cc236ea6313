"""Plots people would rather look at than read: curves of a metric against the step, one line per run.

Every figure foresight writes (run comparison, star-graph results and report) goes through ``figure``: a grid of
panels, written atomically as a PNG when the block ends."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import matplotlib

from foresight.io import atomic_write

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


@contextlib.contextmanager
def figure(path: Path, rows: int, cols: int, panel: tuple[float, float]) -> Iterator[tuple[object, object]]:
    """``with figure(path, rows, cols, (width, height)) as (fig, axes):`` draw on ``axes`` (rows, cols), lay out;
    on leaving the block the PNG is written to ``path`` (temporary name, fsync, rename) and the figure freed."""
    fig, axes = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows), dpi=120, squeeze=False)
    try:
        yield fig, axes
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def _draw(ax, curves: dict[str, list[tuple[int, float]]], styles: dict[str, dict] | None,
          hline: tuple[float, str] | None) -> None:
    for name, points in curves.items():
        if points:
            steps, values = zip(*points)
            style = {"marker": "o", "markersize": 3, "linewidth": 1.6, **((styles or {}).get(name) or {})}
            ax.plot(steps, values, label=name, **style)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, *, title: str, ylabel: str,
                ylim: tuple[float, float] | None = None, hline: tuple[float, str] | None = None,
                styles: dict[str, dict] | None = None) -> Path:
    """``curves``: run name -> [(step, value), ...]; ``styles``: run name -> matplotlib line keywords.
    Writes a PNG and returns its path."""
    return plot_panels([{"title": title, "curves": curves, "styles": styles, "hline": hline}], path,
                       ylabel=ylabel, ylim=ylim)


def plot_panels(panels: list[dict], path: Path, *, ylabel: str, ylim: tuple[float, float] | None = None) -> Path:
    """Several ``plot_curves`` panels stacked in one PNG; each panel is a dict with ``title``, ``curves`` and
    optionally ``styles`` and ``hline``. Writes the PNG and returns its path."""
    with figure(path, len(panels), 1, (7, 4.2)) as (fig, axes):
        for ax, panel in zip(axes[:, 0], panels):
            _draw(ax, panel["curves"], panel.get("styles"), panel.get("hline"))
            ax.set_ylabel(ylabel)
            ax.set_title(panel["title"])
            if ylim:
                ax.set_ylim(*ylim)
            ax.legend(fontsize="small", ncol=2 if len(panel["curves"]) > 6 else 1)
        fig.tight_layout()
    return path


def mean_band(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Several runs' curves -> (steps, mean, low, high) at every step any run evaluated, over the runs that did
    (runs stopped early or partial simply end sooner)."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(int(step), []).append(float(value))
    steps = sorted(by_step)
    return (steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps])


def plot_bands(panels: list[dict], path: Path, *, xlabel: str = "step") -> Path:
    """Panels side by side; each is a dict with ``title``, ``ylabel``, ``series`` (name -> list of curves, one
    per seed) and optionally ``hline`` (value, label) and ``ylim``. Each series is drawn as its mean over seeds
    with a band from the lowest to the highest seed. Writes the PNG and returns its path."""
    with figure(path, 1, len(panels), (6.2, 4.4)) as (fig, axes):
        for ax, panel in zip(axes[0], panels):
            for i, (name, curves) in enumerate(panel["series"].items()):
                steps, mean, low, high = mean_band(curves)
                if not steps:
                    continue
                color = f"C{i}"
                label = name if len(curves) == 1 else f"{name} (mean of {len(curves)} seeds, band: min–max)"
                ax.plot(steps, mean, color=color, marker="o", markersize=3, linewidth=1.6, label=label)
                if len(curves) > 1:
                    ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
            if panel.get("hline") is not None:
                ax.axhline(panel["hline"][0], color="grey", linestyle="--", linewidth=1, label=panel["hline"][1])
            ax.set_title(panel["title"])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(panel["ylabel"])
            if panel.get("ylim"):
                ax.set_ylim(*panel["ylim"])
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.tight_layout()
    return path
