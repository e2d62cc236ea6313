"""The star-graph experiment (TOP paper §5.3, shared/reference/stargraph.md): train each objective set of a
recipe on G(d, l) from the same initialisation and data, evaluate greedy exact match on the test set, and
write a results table, JSON and an accuracy-vs-step plot into one run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from foresight.config import from_dict
from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate, read_examples, split_seeds
from foresight.errors import ForesightError
from foresight.eval.stargraph import evaluate
from foresight.plot import plot_curves
from foresight.tasks.recipe import Recipe, build_model_config
from foresight.train.lm import TrainableLM
from foresight.train.trainer import Trainer


@dataclass
class StarGraphTaskConfig:
    """The ``stargraph:`` section of a recipe."""

    deg: int = 2  # d: arms of the star
    path: int = 4  # l: nodes per arm, the source included
    nodes: int = 20  # N: node labels 0..N-1 (needs N >= 1 + d(l - 1))
    train_size: int = 20000  # training examples generated
    test_size: int = 1000  # test examples generated
    seed: int = 0  # data seed (train and test are independent draws derived from it)
    train_file: str | None = None  # read training examples from a file in the original format instead
    test_file: str | None = None  # read test examples from a file in the original format instead
    eval_batch_size: int = 1000  # examples per greedy-decoding batch


def load_split(cfg: StarGraphTaskConfig, spec: StarGraphSpec, which: str) -> StarGraphData:
    file, size = (cfg.train_file, cfg.train_size) if which == "train" else (cfg.test_file, cfg.test_size)
    if file:
        examples = read_examples(file)
    else:
        if size < 1:
            raise ForesightError(f"stargraph.{which}_size must be >= 1")
        examples = generate(spec, size, split_seeds(cfg.seed)[0 if which == "train" else 1])
    return StarGraphData(examples, spec)


def _summary(name: str, specs: list[dict], evals: list[dict], trainer: Trainer, wall: float, params: int,
             tokens: int) -> dict:
    final = evals[-1] if evals else {}
    best = max(evals, key=lambda e: e["exact_match"]) if evals else {}
    return {
        "run": name,
        "objectives": specs,
        "params": params,
        "steps": trainer.step,
        "stopped_early": trainer.stopped_early,
        "wall_clock_s": round(wall, 2),
        "tokens_per_s": round(tokens / max(wall, 1e-9), 1),
        "final": final,
        "best_exact_match": best.get("exact_match"),
        "best_step": best.get("step"),
        "curve": [[e["step"], e["exact_match"]] for e in evals],
    }


def results_table(spec: StarGraphSpec, results: list[dict]) -> str:
    chance = 1.0 / spec.deg
    lines = [
        f"Star graph G({spec.deg},{spec.path}), N = {spec.nodes}: test exact match of greedy decoding "
        f"(chance ≈ {chance:.1%})",
        "",
        "| run | params | steps | exact match | best | v1 acc | valid arm | wall-clock s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f = r["final"]
        lines.append(
            f"| {r['run']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {f['exact_match']:.1%} | "
            f"{r['best_exact_match']:.1%} | {f['v1_acc']:.1%} | {f['valid_arm']:.1%} | {r['wall_clock_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def run_stargraph(recipe: Recipe, runs: dict[str, list[dict]], out_dir: Path, resume: bool = False) -> list[dict]:
    cfg = from_dict(StarGraphTaskConfig, recipe.section, "stargraph")
    spec = StarGraphSpec(cfg.deg, cfg.path, cfg.nodes).validate()
    model_cfgs = {name: build_model_config(recipe.model_fields(name), vocab_size=spec.vocab_size,
                                           max_seq_len=spec.seq_len + 1) for name in runs}
    train_cfg = recipe.train
    train, test = load_split(cfg, spec, "train"), load_split(cfg, spec, "test")
    if train_cfg.batch_size > len(train):
        raise ForesightError(f"train.batch_size ({train_cfg.batch_size}) exceeds the {len(train)} training examples")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recipe.json").write_text(json.dumps(recipe.raw, indent=2) + "\n")
    print(f"star graph G({spec.deg},{spec.path}) N={spec.nodes}: {len(train)} train / {len(test)} test examples, "
          f"sequence length {spec.seq_len}; runs: {', '.join(runs)} -> {out_dir}")

    results = []
    for name, specs in runs.items():
        torch.manual_seed(train_cfg.seed)  # same trunk initialisation for every run
        model_cfg = model_cfgs[name]
        lm = TrainableLM(model_cfg, specs)
        run_dir = out_dir / name
        trainer = Trainer(
            lm, train_cfg, run_dir,
            batch_fn=lambda step: train.batch(step, train_cfg.batch_size, train_cfg.seed),
            eval_fn=lambda model: evaluate(model, test, spec, batch_size=cfg.eval_batch_size),
            run_config={"recipe": recipe.raw, "run": name, "objectives": specs, "model": asdict(model_cfg)},
            desc=name,
        )
        start_step = trainer.step
        t0 = time.perf_counter()
        evals = trainer.fit(resume=resume)
        wall = time.perf_counter() - t0
        tokens = (trainer.step - start_step) * train_cfg.batch_size * spec.seq_len
        result = _summary(name, specs, evals, trainer, wall, lm.model.num_parameters(), tokens)
        result.update(graph={"deg": spec.deg, "path": spec.path, "nodes": spec.nodes}, seed=train_cfg.seed,
                      device=str(trainer.device), torch=torch.__version__)
        (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)

    table = results_table(spec, results)
    (out_dir / "results.md").write_text(table)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_curves({r["run"]: r["curve"] for r in results}, out_dir / "accuracy.png",
                title=f"Star graph G({spec.deg},{spec.path}), N={spec.nodes}", ylabel="test exact match",
                ylim=(-0.02, 1.02), hline=(1.0 / spec.deg, "chance (1/d)"))
    print()
    print(table)
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'}, {out_dir / 'accuracy.png'}")
    return results
