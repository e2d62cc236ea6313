"""The star-graph experiment (TOP paper §5.3, docs/stargraph.md): train each objective set of a
recipe on G(d, l) from the same initialisation and data, evaluate greedy exact match on the test set, and
write a results table, JSON and an accuracy-vs-step plot into one run folder.

Seeds (``seeds``, the CLI's ``--seeds``) set ``train.seed``: the model initialisation and the order of the
training batches. The data set itself (``stargraph.seed``: the 300k train / 10k test graphs of the paper's
recipe) stays fixed, as in the paper, whose Table 5 is one run per cell on fixed data files. So the spread
across seeds measures optimisation luck on one data set, not data-set variation.

With ``results_dir`` every finished (run, seed) cell is also written as one JSON file there (``cell_name``),
holding what a results table needs: recipe and settings, seed, objective, steps, wall-clock, tokens/s, final and
best test exact match, v1 accuracy, valid-arm rate, the evaluation curve, the device, versions, date and the
command that reproduces the cell. ``foresight stargraph report`` turns a folder of them into a table and a plot
(``foresight.tasks.stargraph_report``).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import median
from typing import Callable

import torch

from foresight.config import from_dict
from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate, read_examples, split_seeds
from foresight.environment import describe
from foresight.errors import ForesightError
from foresight.eval.stargraph import evaluate
from foresight.io import write_text
from foresight.plot import plot_curves
from foresight.tasks.recipe import Recipe, build_model_config
from foresight.train import distributed
from foresight.train.config import TrainConfig
from foresight.train.flops import flops_per_token
from foresight.train.lm import TrainableLM
from foresight.train.metrics import read_metrics
from foresight.train.trainer import Trainer

RESULT_FORMAT = "foresight.stargraph.result/1"  # the "format" field of every per-cell JSON


@dataclass
class StarGraphTaskConfig:
    """The ``stargraph:`` section of a recipe."""

    deg: int = 2  # d: arms of the star
    path: int = 4  # l: nodes per arm, the source included
    nodes: int = 20  # N: node labels 0..N-1 (needs N >= 1 + d(l - 1))
    train_size: int = 20000  # training examples generated
    test_size: int = 1000  # test examples generated
    seed: int = 0  # data seed (train and test are independent draws derived from it); fixed across train.seed
    train_file: str | None = None  # read training examples from a file in the original format instead
    test_file: str | None = None  # read test examples from a file in the original format instead
    eval_batch_size: int = 1000  # examples per greedy-decoding batch

    def __post_init__(self) -> None:  # checked before any data is generated or model built
        if self.eval_batch_size < 1:
            raise ForesightError(f"stargraph.eval_batch_size must be >= 1, got {self.eval_batch_size}")


def load_split(cfg: StarGraphTaskConfig, spec: StarGraphSpec, which: str) -> StarGraphData:
    file, size = (cfg.train_file, cfg.train_size) if which == "train" else (cfg.test_file, cfg.test_size)
    if file:
        examples = read_examples(file)
    else:
        if size < 1:
            raise ForesightError(f"stargraph.{which}_size must be >= 1")
        examples = generate(spec, size, split_seeds(cfg.seed)[0 if which == "train" else 1])
    return StarGraphData(examples, spec)


# ------------------------------------------------------------------------------------------ one cell's record


def objective_label(specs: list[dict]) -> str:
    """The TOP paper's name for an objective list: NTP, TOP, MTP-n, DS-MTP-n (n = depth + 1), joined by ' + '."""
    parts = []
    for spec in specs:
        name = spec.get("name")
        if name == "top":
            parts.append("TOP")
        elif name == "mtp":
            parts.append(f"MTP-{spec.get('n', 4)}")
        elif name == "dsmtp":
            depth = spec.get("depth")
            parts.append(f"DS-MTP-{depth + 1}" if depth is not None else f"DS-MTP ({spec.get('preset', 'top_paper')})")
        elif name != "ntp":
            parts.append(str(name).upper())
    if not parts:
        return "NTP"
    label = " + ".join(parts)
    return label if any(s.get("name") == "ntp" for s in specs) else f"{label} (no NTP)"


def cell_name(recipe: str, spec: StarGraphSpec, run: str, train_cfg: TrainConfig) -> str:
    """File name of one cell's JSON: recipe, graph, run, scheduled steps, ``-full`` without early stop, seed."""
    full = "" if train_cfg.early_stop_metric else "-full"
    return f"{recipe}-g{spec.deg}x{spec.path}-{run}-{train_cfg.steps}steps{full}-seed{train_cfg.seed}.json"


def _train_rates(run_dir: Path) -> dict:
    """Median tokens/s and MFU of the logged training intervals (evaluation excluded), peak memory."""
    path = run_dir / "metrics.jsonl"
    train = [r for r in read_metrics(path) if r.get("kind") == "train"] if path.is_file() else []
    out: dict = {}
    for key in ("tokens_per_s", "mfu", "tflops"):
        values = [r[key] for r in train if isinstance(r.get(key), (int, float))]
        out[key] = median(values) if values else None
    mem = [r["peak_mem_gib"] for r in train if isinstance(r.get("peak_mem_gib"), (int, float))]
    out["peak_mem_gib"] = max(mem) if mem else None
    return out


def cell_record(*, recipe: Recipe, raw: dict, run: str, specs: list[dict], spec: StarGraphSpec,
                task: StarGraphTaskConfig, train_cfg: TrainConfig, lm: TrainableLM, trainer: Trainer,
                evals: list[dict], wall: float, tokens: int, command: str | None) -> dict:
    """Everything one results-table cell needs (see the module docstring); JSON-able."""
    final = dict(evals[-1]) if evals else {}
    best = dict(max(evals, key=lambda e: e["exact_match"])) if evals else {}
    rates = _train_rates(trainer.run_dir)
    early = ({"metric": train_cfg.early_stop_metric, "threshold": train_cfg.early_stop_threshold,
              "patience": train_cfg.early_stop_patience} if train_cfg.early_stop_metric else None)
    device = trainer.device
    return {
        "format": RESULT_FORMAT,
        "run": run,
        "objective": objective_label(specs),
        "objectives": specs,
        "graph": {"deg": spec.deg, "path": spec.path, "nodes": spec.nodes},
        "recipe": recipe.path.stem,
        "seed": train_cfg.seed,
        "data_seed": task.seed,
        "train_size": task.train_size if not task.train_file else None,
        "test_size": task.test_size if not task.test_file else None,
        "params": lm.model.num_parameters(),
        "total_params": sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values()),
        "batch_size": train_cfg.batch_size,
        "schedule_steps": train_cfg.steps,
        "steps": trainer.step,
        "stopped_early": trainer.stopped_early,
        "skipped_steps": trainer.skipped_steps,  # non-finite steps the optimiser skipped
        "early_stop": early,
        "compiled": getattr(trainer, "compiled", None),  # whether the blocks ran under torch.compile
        "wall_clock_s": round(wall, 2),
        "tokens": tokens,
        "tokens_per_s": rates["tokens_per_s"],  # median over logged intervals: training only
        "tokens_per_s_wall": round(tokens / max(wall, 1e-9), 1),  # compile, evaluation and checkpoints included
        "mfu": rates["mfu"],
        "peak_mem_gib": rates["peak_mem_gib"],
        "final": final,
        "final_exact_match": final.get("exact_match"),
        "best_exact_match": best.get("exact_match"),
        "best_step": best.get("step"),
        "v1_acc": final.get("v1_acc"),
        "valid_arm": final.get("valid_arm"),
        "curve": [[e["step"], e["exact_match"]] for e in evals],
        "evals": evals,
        "device": str(device),
        **{("device_name" if k == "device" else k): v for k, v in describe(device).items()},
        "command": command,
        "train": asdict(train_cfg),
        "config": raw,
    }


def write_json(path: Path, data) -> None:
    """Write JSON atomically (a cell file is never left half-written by a kill)."""
    from foresight.io import write_json as write

    write(path, data)


# ------------------------------------------------------------------------------------------ tables and runs


def results_table(spec: StarGraphSpec, results: list[dict]) -> str:
    chance = 1.0 / spec.deg
    lines = [
        f"Star graph G({spec.deg},{spec.path}), N = {spec.nodes}: test exact match of greedy decoding "
        f"(chance ≈ {chance:.1%})",
        "",
        "| run | seed | params | steps | exact match | best | v1 acc | valid arm | wall-clock s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f = r["final"]
        lines.append(
            f"| {r['run']} | {r['seed']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {f['exact_match']:.1%} | "
            f"{r['best_exact_match']:.1%} | {f['v1_acc']:.1%} | {f['valid_arm']:.1%} | {r['wall_clock_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


class _OutOfTime(Exception):
    """Raised from the batch function when the invocation's time limit has passed."""


class _Clock:
    """The wall-clock budget of one invocation (``time_limit_s``; None = unlimited).

    Before a cell starts, its cost is estimated from the seconds per training FLOP of the last cell run in this
    process (its compilation, evaluations and checkpoints included; the first cell pays most of the compiling),
    with a 5 % margin, at the cell's full schedule (early stopping is not counted on); a cell that would not
    finish is not started. A cell still running when the time is up stops at its next step, unrecorded.
    """

    def __init__(self, limit_s: float | None) -> None:
        self.start = time.monotonic()
        self.limit_s = limit_s
        self.s_per_flop: float | None = None

    def left(self) -> float:
        """Seconds left: rank 0's clock under torchrun, so every rank stops at the same step."""
        mine = float("inf") if self.limit_s is None else self.limit_s - (time.monotonic() - self.start)
        return mine if self.limit_s is None else distributed.agree(mine)

    def check(self) -> None:
        if self.left() <= 0:
            raise _OutOfTime

    def estimate(self, flops: float) -> float | None:
        return None if self.s_per_flop is None else 1.05 * self.s_per_flop * flops

    def observe(self, seconds: float, flops: float) -> None:
        if flops > 0:
            self.s_per_flop = seconds / flops


def run_stargraph(
    recipe: Recipe, runs: dict[str, list[dict]], out_dir: Path, resume: bool = False, *,
    seeds: list[int] | None = None, results_dir: Path | None = None,
    cell_command: Callable[[str, int], str] | None = None, skip_existing: bool = False,
    time_limit_s: float | None = None,
) -> list[dict]:
    """Train every run of ``runs`` for every seed (seed-major order) and evaluate it.

    ``seeds``: values of ``train.seed`` (None: the recipe's; run folders are then ``out_dir/<run>``, else
    ``out_dir/<run>-seed<s>``). ``results_dir``: also write each finished cell's JSON there; with
    ``skip_existing`` a cell whose JSON is already there is not run again. ``cell_command(run, seed)``: the
    command line stored in each cell's JSON. ``time_limit_s``: see ``_Clock``.
    """
    distributed.init(recipe.train)  # under torchrun: join the job (the CLI has already)
    main = distributed.is_main()  # only rank 0 prints and writes files
    print_ = print if main else (lambda *args, **kwargs: None)
    clock = _Clock(time_limit_s)
    cfg = from_dict(StarGraphTaskConfig, recipe.section, "stargraph")
    spec = StarGraphSpec(cfg.deg, cfg.path, cfg.nodes).validate()
    model_cfgs = {name: build_model_config(recipe.model_fields(name), vocab_size=spec.vocab_size,
                                           max_seq_len=spec.seq_len + 1) for name in runs}
    seed_list = list(seeds) if seeds else [recipe.train.seed]
    cells = [(seed, name) for seed in seed_list for name in runs]
    cfgs = {seed: replace(recipe.train, seed=seed) for seed in seed_list}
    if results_dir is not None and skip_existing:
        done = [(s, n) for s, n in cells if (results_dir / cell_name(recipe.path.stem, spec, n, cfgs[s])).is_file()]
        for s, n in done:
            print_(f"skip {n} seed {s}: {results_dir / cell_name(recipe.path.stem, spec, n, cfgs[s])} exists")
        cells = [c for c in cells if c not in done]
    if not cells:
        print_("nothing to run")
        return []
    train_cfg = recipe.train
    train, test = load_split(cfg, spec, "train"), load_split(cfg, spec, "test")
    if train_cfg.batch_size > len(train):
        raise ForesightError(f"train.batch_size ({train_cfg.batch_size}) exceeds the {len(train)} training examples")
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "recipe.json", recipe.raw)
    print_(f"star graph G({spec.deg},{spec.path}) N={spec.nodes}: {len(train)} train / {len(test)} test examples, "
          f"sequence length {spec.seq_len}; runs: {', '.join(runs)}"
          + (f"; seeds: {', '.join(map(str, seed_list))}" if seeds else "") + f" -> {out_dir}")

    results, not_done = [], []
    for i, (seed, name) in enumerate(cells):
        specs, run_cfg = runs[name], cfgs[seed]
        raw = copy.deepcopy(recipe.raw)
        raw.setdefault("train", {})["seed"] = seed
        torch.manual_seed(seed)  # same trunk initialisation for every run of one seed
        model_cfg = model_cfgs[name]
        with distributed.build_on_rank0():  # torchrun: ranks > 0 get rank 0's weights from the Trainer
            lm = TrainableLM(model_cfg, specs)
        tokens_per_step = run_cfg.batch_size * spec.seq_len
        step_flops = flops_per_token(lm, spec.seq_len) * tokens_per_step
        need = distributed.agree(clock.estimate(step_flops * run_cfg.steps))
        if need is not None and need > clock.left():
            not_done = cells[i:]
            print_(f"time limit: {name} seed {seed} needs about {need:.0f} s, {clock.left():.0f} s left; stopping")
            break
        run_dir = out_dir / (name if not seeds else f"{name}-seed{seed}")

        def batch_fn(step: int, _cfg=run_cfg):
            clock.check()
            return train.batch(step, _cfg.batch_size, _cfg.seed)

        trainer = Trainer(
            lm, run_cfg, run_dir,
            batch_fn=batch_fn,
            eval_fn=lambda model: evaluate(model, test, spec, batch_size=cfg.eval_batch_size),
            run_config={"recipe": raw, "run": name, "objectives": specs, "model": asdict(model_cfg)},
            desc=name if not seeds else f"{name} s{seed}",
        )
        start_step = trainer.step
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)  # peak memory per cell, not per process
        t0 = time.perf_counter()
        try:
            evals = trainer.fit(resume=resume)
        except _OutOfTime:
            not_done = cells[i:]
            print_(f"time limit reached in {name} seed {seed} at step {trainer.step}: no result for it", flush=True)
            break
        wall = time.perf_counter() - t0
        tokens = (trainer.step - start_step) * tokens_per_step
        clock.observe(wall, step_flops * (trainer.step - start_step))
        command = cell_command(name, seed) if cell_command else None
        result = cell_record(recipe=recipe, raw=raw, run=name, specs=specs, spec=spec, task=cfg, train_cfg=run_cfg,
                             lm=lm, trainer=trainer, evals=evals, wall=wall, tokens=tokens, command=command)
        if main:
            write_json(run_dir / "result.json", result)
        if results_dir is not None and main:
            path = results_dir / cell_name(recipe.path.stem, spec, name, run_cfg)
            write_json(path, result)
            print(f"wrote {path}")
        results.append(result)

    if not_done:
        print_("not run (time limit): " + ", ".join(f"{n} seed {s}" for s, n in not_done))
    if not results or not main:
        return results
    table = results_table(spec, results)
    write_text(out_dir / "results.md", table)
    write_json(out_dir / "results.json", results)
    label = (lambda r: r["run"]) if not seeds else (lambda r: f"{r['run']} s{r['seed']}")
    plot_curves({label(r): r["curve"] for r in results}, out_dir / "accuracy.png",
                title=f"Star graph G({spec.deg},{spec.path}), N={spec.nodes}", ylabel="test exact match",
                ylim=(-0.02, 1.02), hline=(1.0 / spec.deg, "chance (1/d)"))
    print()
    print(table)
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'}, {out_dir / 'accuracy.png'}")
    sys.stdout.flush()
    return results
