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

Here: the task's section, its data, one cell's training and record, and the wiring of a run; the cells run through
the scheduler every task shares (``foresight.tasks.pool``), the table and figure come from
``foresight.tasks.stargraph_tables``.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import median
from typing import Callable, ClassVar

import torch

from foresight.config import from_dict
from foresight.data.stargraph import (
    StarGraphData,
    StarGraphSpec,
    generate,
    read_examples,
    split_seeds,
    trelawney_seq_len,
)
from foresight.data.trelawney import TrelawneyConfig
from foresight.errors import ForesightError
from foresight.eval.stargraph import evaluate
from foresight.objectives import ObjectiveSpec, objective_label
from foresight.tasks.pool import run_all
from foresight.tasks.recipe import Recipe, complete_model
from foresight.tasks.run import FinishedRun, RunHooks, result_record, train_run
from foresight.tasks.stargraph_tables import write_outputs
from foresight.train import distributed
from foresight.train.config import TrainConfig
from foresight.train.flops import flops_per_token
from foresight.train.lm import TrainableLM
from foresight.train.metrics import read_metrics

RESULT_FORMAT = "foresight.stargraph.result/1"  # the "format" field of every per-cell JSON


def parse_trelawney(section: dict | None, where: str) -> TrelawneyConfig | None:
    """A task section's ``trelawney`` mapping -> its config (None when absent); one line naming ``where.key``."""
    if section is None:
        return None
    try:
        return from_dict(TrelawneyConfig, section, where)
    except ForesightError as e:  # the range checks name 'trelawney.KEY': name the full key the user wrote
        raise ForesightError(re.sub(r"(?<![\w.])trelawney\.", f"{where}.", str(e))) from None


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
    jobs: int = 1  # cells trained side by side in processes on the CPU (0 = one per core); a GPU runs them in turn
    trelawney: dict | None = None  # TRELAWNEY lookahead spans in the training rows (data/trelawney.py); None = off

    # fields a resumed run may change (foresight.train.fingerprint): evaluation batching and processes
    RESUME_EXEMPT: ClassVar[tuple] = ("eval_batch_size", "jobs")

    def __post_init__(self) -> None:  # checked before any data is generated or model built
        if self.eval_batch_size < 1:
            raise ForesightError(f"stargraph.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        from foresight.model.limits import MAX_BATCH, MAX_EXAMPLES, MAX_VOCAB, check_int

        # node labels are token ids, and examples are generated in memory: bounded before either is made
        for name, low, high in (("deg", 1, MAX_VOCAB), ("path", 2, MAX_VOCAB), ("nodes", 1, MAX_VOCAB),
                                ("train_size", 0, MAX_EXAMPLES), ("test_size", 0, MAX_EXAMPLES),
                                ("eval_batch_size", 1, MAX_BATCH), ("jobs", 0, 1024)):
            check_int(getattr(self, name), f"stargraph.{name}", low, high)
        self.lookahead = parse_trelawney(self.trelawney, "stargraph.trelawney")  # a TrelawneyConfig or None

    def spec(self) -> StarGraphSpec:
        """The task's shape; with TRELAWNEY the vocabulary also holds <T> and </T>."""
        return StarGraphSpec(self.deg, self.path, self.nodes, lookahead=self.lookahead is not None).validate()


def load_split(cfg: StarGraphTaskConfig, spec: StarGraphSpec, which: str) -> StarGraphData:
    file, size = (cfg.train_file, cfg.train_size) if which == "train" else (cfg.test_file, cfg.test_size)
    if file:
        examples = read_examples(file)
    else:
        if size < 1:
            raise ForesightError(f"stargraph.{which}_size must be >= 1")
        examples = generate(spec, size, split_seeds(cfg.seed)[0 if which == "train" else 1])
    return StarGraphData(examples, spec, cfg.lookahead if which == "train" else None)  # test rows stay plain


# ------------------------------------------------------------------------------------------ one cell's record


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


def cell_record(*, recipe: Recipe, raw: dict, run: FinishedRun, spec: StarGraphSpec, task: StarGraphTaskConfig,
                command: str | None) -> dict:
    """Everything one results-table cell needs (see the module docstring); JSON-able. The fields every task
    records (parameters, steps, wall-clock, tokens, device, provenance) come from ``tasks.run.result_record``."""
    train_cfg, trainer, evals = run.train_cfg, run.trainer, run.evals
    final = dict(evals[-1]) if evals else {}
    best = dict(max(evals, key=lambda e: e["exact_match"])) if evals else {}
    rates = _train_rates(trainer.run_dir)
    early = ({"metric": train_cfg.early_stop_metric, "threshold": train_cfg.early_stop_threshold,
              "patience": train_cfg.early_stop_patience} if train_cfg.early_stop_metric else None)
    return {
        "format": RESULT_FORMAT,
        **result_record(run),
        # TRELAWNEY is data, not an objective, but its cells must not pool with the plain ones in a report
        "objective": objective_label(run.specs) + (" + TRELAWNEY" if task.lookahead is not None else ""),
        "graph": {"deg": spec.deg, "path": spec.path, "nodes": spec.nodes},
        "recipe": recipe.path.stem,
        "data_seed": task.seed,
        "train_size": task.train_size if not task.train_file else None,
        "test_size": task.test_size if not task.test_file else None,
        "batch_size": train_cfg.batch_size,
        "schedule_steps": train_cfg.steps,
        "stopped_early": trainer.stopped_early,
        "partial": trainer.partial,  # stopped by SIGTERM / Ctrl-C / the time limit before the schedule's end
        "early_stop": early,
        "compiled": getattr(trainer, "compiled", None),  # whether the blocks ran under torch.compile
        "tokens_per_s": rates["tokens_per_s"],  # median over logged intervals: training only
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
        "command": command,
        "train": asdict(train_cfg),
        "config": raw,
    }


def write_json(path: Path, data) -> None:
    """Write JSON atomically (a cell file is never left half-written by a kill)."""
    from foresight.io import write_json as write

    write(path, data)


@dataclass
class _Cell:
    """One (run, seed) cell: everything a process needs to train and record it (picklable)."""

    name: str
    seed: int
    specs: list[ObjectiveSpec]  # the run's objectives, parsed once by the recipe
    run_cfg: TrainConfig
    raw: dict
    model_cfg: object
    run_dir: Path
    desc: str
    command: str | None


def _train_cell(cell: _Cell, *, recipe: Recipe, task: StarGraphTaskConfig, spec: StarGraphSpec,
                train: StarGraphData, test: StarGraphData, resume: bool, results_dir: Path | None,
                should_stop: Callable[[], bool], progress: bool = True,
                allow_changes: bool = False) -> tuple[dict, float]:
    """Train and evaluate one cell; write its result.json (and its results-folder JSON). Returns the record and
    the training FLOPs it ran (for the time-limit estimate)."""
    main = distributed.is_main()
    run_cfg = cell.run_cfg
    run = train_run(
        cell.name, cell.specs, cell.model_cfg, run_cfg, cell.run_dir, raw=cell.raw,
        tokens_per_step=run_cfg.batch_size * train.seq_len, resume=resume, desc=cell.desc, should_stop=should_stop,
        progress=progress, task=("stargraph", task), allow_changes=allow_changes,
        # whole examples (prefix + path, no look-ahead beyond them): the batches do not depend on the built model
        setup=lambda _: RunHooks(batch_fn=lambda step: train.batch(step, run_cfg.batch_size, run_cfg.seed),
                                 evaluate=lambda lm: evaluate(lm.model, test, spec, batch_size=task.eval_batch_size,
                                                              trelawney=task.lookahead)),
    )
    result = cell_record(recipe=recipe, raw=cell.raw, run=run, spec=spec, task=task, command=cell.command)
    if main:
        write_json(cell.run_dir / "result.json", result)
    if results_dir is not None and main:
        path = results_dir / cell_name(recipe.path.stem, spec, cell.name, run_cfg)
        if result["partial"]:
            path = path.with_name(path.stem + "-partial.json")
        write_json(path, result)
        print(f"wrote {path}", flush=True)
    return result, flops_per_token(run.lm, train.seq_len) * run.tokens


def _schedule_flops(cell: _Cell, seq_len: int) -> float:
    """Training FLOPs of the cell's full schedule (the pool's time-limit estimate), counted on a meta model."""
    with torch.device("meta"):
        lm_flops = flops_per_token(TrainableLM(cell.model_cfg, cell.specs), seq_len)
    return lm_flops * cell.run_cfg.batch_size * seq_len * cell.run_cfg.steps


def _label(cell: _Cell) -> str:
    return f"{cell.name} seed {cell.seed}"


def run_stargraph(
    recipe: Recipe, runs: dict[str, list[dict]], out_dir: Path, resume: bool = False, *,
    seeds: list[int] | None = None, results_dir: Path | None = None,
    cell_command: Callable[[str, int], str] | None = None, skip_existing: bool = False,
    time_limit_s: float | None = None, allow_changes: bool = False, only: set[tuple[int, str]] | None = None,
) -> list[dict]:
    """Train every run of ``runs`` for every seed (seed-major order) and evaluate it.

    ``seeds``: values of ``train.seed`` (None: the recipe's; run folders are then ``out_dir/<run>``, else
    ``out_dir/<run>-seed<s>``). ``results_dir``: also write each finished cell's JSON there; with
    ``skip_existing`` a cell whose JSON is already there is not run again. ``cell_command(run, seed)``: the
    command line stored in each cell's JSON. ``time_limit_s``: see ``tasks.pool.Clock``. ``allow_changes``: resume
    cells whose settings changed (``foresight.train.fingerprint``), with a warning. ``only``: run just these
    (seed, run) cells of the runs x seeds product (``foresight bench``: objectives with different seed lists).
    """
    distributed.init(recipe.train)  # under torchrun: join the job (the CLI has already)
    main = distributed.is_main()  # only rank 0 prints and writes files
    print_ = print if main else (lambda *args, **kwargs: None)
    cfg = recipe.task_config  # a StarGraphTaskConfig, parsed at load
    spec = cfg.spec()
    seq_len = trelawney_seq_len(spec, cfg.lookahead)  # what the model reads per training row
    if cfg.jobs < 0:
        raise ForesightError(f"stargraph.jobs must be >= 0 (0 = one process per CPU core), got {cfg.jobs}")
    model_cfgs = {name: complete_model(recipe.run_models[name], vocab_size=spec.vocab_size,
                                       max_seq_len=seq_len + 1) for name in runs}
    seed_list = list(seeds) if seeds else [recipe.train.seed]
    cells = [(seed, name) for seed in seed_list for name in runs if only is None or (seed, name) in only]
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
          f"sequence length {seq_len}" + (" (TRELAWNEY)" if cfg.lookahead else "") + f"; runs: {', '.join(runs)}"
          + (f"; seeds: {', '.join(map(str, seed_list))}" if seeds else "") + f" -> {out_dir}")

    cell_list = []
    for seed, name in cells:
        raw = copy.deepcopy(recipe.raw)
        raw["train"] = {**(raw.get("train") or {}), "seed": seed}  # "train: null" is an empty section
        cell_list.append(_Cell(name=name, seed=seed, specs=runs[name], run_cfg=cfgs[seed], raw=raw,
                               model_cfg=model_cfgs[name],
                               run_dir=out_dir / (name if not seeds else f"{name}-seed{seed}"),
                               desc=name if not seeds else f"{name} s{seed}",
                               command=cell_command(name, seed) if cell_command else None))
    jobs = min(len(cell_list), cfg.jobs if cfg.jobs > 0 else (os.cpu_count() or 1))
    if distributed.world_size() > 1 or recipe.train.device.startswith("cuda"):
        jobs = 1  # processes side by side are for CPU cores; a GPU or a torchrun job runs cells in turn
    shared = dict(recipe=recipe, task=cfg, spec=spec, train=train, test=test, resume=resume, results_dir=results_dir,
                  allow_changes=allow_changes)
    results, not_done = run_all(cell_list, _train_cell, shared, jobs=jobs, time_limit_s=time_limit_s,
                                cost=lambda cell: _schedule_flops(cell, seq_len), label=_label, print_=print_)

    if not_done:
        print_("not run (stopped or out of time): " + ", ".join(f"{c.name} seed {c.seed}" for c in not_done))
    if not results or not main:
        return results
    table = write_outputs(out_dir, spec, results)
    print()
    print(table)
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'}, {out_dir / 'accuracy.png'}")
    sys.stdout.flush()
    return results
