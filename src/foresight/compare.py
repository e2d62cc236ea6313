"""Compare runs: one Markdown table and one figure of the training and validation curves per objective.

Reads only each run folder's ``metrics.jsonl`` (any task). A panel per objective shows, for every run, its
training loss (thin: as logged; thick: exponential moving average) and its validation loss on the held-out
windows (dashed, with markers); further evaluation metrics (e.g. star-graph exact match) get their own panels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from foresight.errors import ForesightError
from foresight.io import write_text
from foresight.objectives import REGISTRY
from foresight.train.metrics import read_metrics, training_tokens_per_s

TABLE, FIGURE = "compare.md", "compare.png"


# What the logs mean comes from the registered objectives, read when a table is built (so one registered later
# counts too): columns in registration order (ntp, top, mtp, dsmtp, ...), which objective's validation loss is
# ``val_loss`` (Objective.next_token), and each objective's per-head metrics (Objective.head_metric).
def _next_token() -> str:
    return next(name for name, (_, cls) in REGISTRY.items() if cls.next_token)


def _per_head() -> dict[str, str]:
    return {name: cls.head_metric for name, (_, cls) in REGISTRY.items() if cls.head_metric}


@dataclass
class RunLog:
    name: str
    path: Path
    meta: dict
    train: list[dict]
    evals: list[dict]

    @property
    def objectives(self) -> list[str]:
        keys = {k[: -len("_loss")] for r in self.train for k in r if k.endswith("_loss") and k != "loss"}
        return sorted(keys, key=_objective_rank)

    def val_key(self, objective: str) -> str | None:
        """The eval metric that is ``objective``'s validation loss."""
        for key in (f"val_{objective}_loss", "val_loss" if objective == _next_token() else None):
            if key and any(key in e for e in self.evals):
                return key
        return None


def _objective_rank(name: str) -> tuple:
    base = name.split("_")[0]
    order = list(REGISTRY)
    return (order.index(base) if base in order else len(order), name)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (with metrics.jsonl) among ``paths``: each path is a run folder or holds run folders."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "metrics.jsonl").is_file():
            found.append(path)
        elif path.is_dir():
            subs = sorted(p.parent for p in path.glob("*/metrics.jsonl"))
            if not subs:
                raise ForesightError(f"{path} is not a run folder and holds none (no metrics.jsonl)")
            found += subs
        else:
            raise ForesightError(f"no such run folder: {path}")
    return list(dict.fromkeys(p.resolve() for p in found))


def load_runs(paths: list[Path]) -> list[RunLog]:
    folders = find_runs(paths)
    names = [p.name for p in folders]
    runs = []
    for folder in folders:
        name = folder.name if names.count(folder.name) == 1 else f"{folder.parent.name}/{folder.name}"
        records = read_metrics(folder / "metrics.jsonl")
        meta = next((r for r in records if r.get("kind") == "meta"), {})
        runs.append(RunLog(name, folder, meta, [r for r in records if r.get("kind") == "train"],
                           [r for r in records if r.get("kind") == "eval"]))
    return runs


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"


def _tail_mean(records: list[dict], key: str) -> float | None:
    """Mean of ``key`` over the last 10 % of the logged steps (at least one): a less noisy final value."""
    values = [r[key] for r in records if key in r]
    if not values:
        return None
    tail = values[-max(1, len(values) // 10):]
    return sum(tail) / len(tail)


def _count(n) -> str:
    return "—" if n is None else f"{n / 1e6:.2f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


def table(runs: list[RunLog]) -> str:
    """Markdown: one row per run, one train-loss column per objective, validation loss and perplexity."""
    objectives = sorted({o for r in runs for o in r.objectives}, key=_objective_rank)
    extra = sorted({k for r in runs for e in r.evals for k in e
                    if k not in ("kind", "step") and not k.startswith("val_")})
    has_val = any(r.val_key(_next_token()) for r in runs)
    head = ["run", "params", "steps", "tokens"] + [f"train {o}" for o in objectives]
    if has_val:
        head += ["val loss", "val ppl", "best val loss (step)"]
    head += [f"final {k}" for k in extra] + ["tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        last_train = r.train[-1] if r.train else {}
        last_eval = r.evals[-1] if r.evals else {}
        params = r.meta.get("params")
        heads = (r.meta.get("total_params") or 0) - (params or 0)
        row = [r.name, _count(params) + (f" +{_count(heads)}" if heads else ""), _fmt(last_train.get("step")),
               _count(last_train.get("tokens"))]
        row += [_fmt(_tail_mean(r.train, f"{o}_loss")) for o in objectives]
        if has_val:
            key = r.val_key(_next_token())
            vals = [e for e in r.evals if key and key in e]
            best = min(vals, key=lambda e: e[key]) if vals else None
            row += [_fmt(last_eval.get(key)) if key else "—", _fmt(last_eval.get("val_ppl")),
                    f"{_fmt(best[key])} ({best['step']})" if best else "—"]
        row += [_fmt(last_eval.get(k)) for k in extra]
        rate = training_tokens_per_s(r.train)
        row.append(f"{rate:,.0f}" if rate is not None else "—")
        lines.append("| " + " | ".join(row) + " |")
    note = ("train columns: mean loss over the last 10 % of logged steps (mtp, dsmtp: summed over their heads; the "
            "figure shows the mean per head); val: next-token loss (nats/token) on the fixed held-out windows at the "
            "last evaluation; params: inference model + objective heads; tokens/s: median over logged training "
            "intervals, evaluation excluded")
    return "\n".join(lines) + "\n\n" + note + "\n"


def _ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased (as TensorBoard's smoothing) so early points do not lag."""
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight**i))
    return out


def auto_smoothing(points: int) -> float:
    """EMA weight averaging over about 1/25 of the curve: none for a few points, 0.9 for 250, at most 0.95."""
    return min(0.95, max(0.0, 1.0 - 25.0 / max(points, 1)))


def _train_value(record: dict, objective: str) -> float | None:
    """The curve of ``objective`` in a train record: for MTP / DS-MTP the mean over heads of their per-head
    losses (each nats/token; ``{objective}_loss`` is their sum), for the others ``{objective}_loss``."""
    prefix = _per_head().get(objective)
    heads = [v for k, v in record.items() if prefix and k.startswith(prefix) and k[len(prefix):].isdigit()]
    if heads:
        return sum(heads) / len(heads)
    return record.get(f"{objective}_loss")


def _panels(runs: list[RunLog]) -> list[tuple[str, str | None]]:
    """(title, objective or None) per panel; None: an eval metric plotted on its own."""
    objectives = sorted({o for r in runs for o in r.objectives}, key=_objective_rank)
    per_head = {o for o, prefix in _per_head().items()
                for r in runs for t in r.train[:1] if any(k.startswith(prefix) for k in t)}
    panels = [(f"{o} loss, mean per head" if o in per_head else f"{o} loss", o) for o in objectives]
    paired = {"val_loss", "val_ppl"} | {f"val_{o}_loss" for o in objectives}
    extra = sorted({k for r in runs for e in r.evals for k in e if k not in ("kind", "step") and k not in paired})
    return panels + [(k, None) for k in extra]


def plot(runs: list[RunLog], path: Path, *, x: str = "step", smooth: float | None = None) -> Path:
    """Write the comparison figure (PNG) to ``path``. ``smooth``: EMA weight of the training curves (0 = raw;
    None = ``auto_smoothing`` of each curve's length)."""
    # The backend is chosen before pyplot is imported: keep this order.
    from foresight.plot import figure

    # isort: split
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = _panels(runs)
    if not panels:
        raise ForesightError("the runs have no logged losses or evaluations to plot yet")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def xs(run: RunLog, records: list[dict]) -> list[float]:
        """Steps, or tokens seen (step × the run's tokens per step) for comparing runs of different batch sizes."""
        per_step = next((t["tokens"] / t["step"] for t in reversed(run.train) if t.get("tokens")), None)
        if x == "tokens" and per_step:
            return [rec["step"] * per_step for rec in records]
        return [rec["step"] for rec in records]

    with figure(path, rows, cols, (5.4, 3.8)) as (fig, axes):
        for ax, (title, objective) in zip(axes.flat, panels):
            _draw_panel(ax, runs, title, objective, colors, xs, smooth, x)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        handles = [Line2D([], [], color=colors[i % len(colors)], linewidth=2, label=r.name)
                   for i, r in enumerate(runs)]
        ema = "EMA" if smooth is None else f"EMA {smooth:g}" if smooth else ""
        handles += [Line2D([], [], color="grey", linewidth=1.6, label=f"train ({ema}; thin: raw)" if ema else "train"),
                    Line2D([], [], color="grey", linestyle="--", marker="o", markersize=3.5, label="validation")]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
        fig.tight_layout(rect=(0, 0.07 if rows == 1 else 0.04, 1, 1))
    return path


def _draw_panel(ax, runs: list[RunLog], title: str, objective: str | None, colors: list, xs, smooth: float | None,
                x: str) -> None:
    """One panel: every run's training curve of ``objective`` (raw and EMA) and its validation points, or, with
    ``objective`` None, the eval metric ``title``."""
    shown = []
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        if objective is not None:
            recs = [t for t in run.train if _train_value(t, objective) is not None
                    and math.isfinite(_train_value(t, objective))]
            if recs:
                ys = [_train_value(t, objective) for t in recs]
                weight = auto_smoothing(len(ys)) if smooth is None else smooth
                ax.plot(xs(run, recs), ys, color=color, alpha=0.25 if weight > 0 else 1.0, linewidth=0.8)
                if weight > 0:
                    ax.plot(xs(run, recs), _ema(ys, weight), color=color, linewidth=1.6)
                shown += ys[len(ys) // 10:]
            val_key = run.val_key(objective)
        else:
            val_key = title
        vals = [e for e in run.evals if val_key and val_key in e and math.isfinite(e[val_key])]
        if vals:
            ax.plot(xs(run, vals), [e[val_key] for e in vals], color=color, linestyle="--", marker="o",
                    markersize=3.5, linewidth=1.2)
            shown += [e[val_key] for e in vals]
    ax.set_title(title)
    ax.set_xlabel("tokens" if x == "tokens" else "step")
    ax.set_ylabel("loss (nats/token)" if objective is not None else title)
    if shown and objective is not None:  # zoom past the first steps' drop from ln V
        lo, hi = min(shown), max(shown)
        pad = 0.05 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)


def write_comparison(paths: list[Path], out_dir: Path | None = None, *, x: str = "step",
                     smooth: float | None = None) -> tuple[str, Path, Path]:
    """Table and figure of the runs under ``paths`` into ``out_dir`` (default: their common parent)."""
    if x not in ("step", "tokens"):
        raise ForesightError(f"--x must be step or tokens, got {x!r}")
    if smooth is not None and not 0 <= smooth < 1:
        raise ForesightError(f"--smooth must be in [0, 1), got {smooth}")
    runs = load_runs(paths)
    if out_dir is None:
        parents = {r.path.parent for r in runs}
        out_dir = parents.pop() if len(parents) == 1 else Path.cwd()
    text = table(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / TABLE
    write_text(table_path, text)
    png = plot(runs, out_dir / FIGURE, x=x, smooth=smooth)
    return text, table_path, png
