"""A recipe file: ``task``, a task section, ``model``, ``train`` and ``runs`` (named objective lists).

A run is a list of objective specs, or a mapping ``{objectives: [...], model: {...}}`` whose ``model`` entries
override the shared ``model`` section for that run only (e.g. MTP's shorter trunk, parameter-matched to NTP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from foresight.config import apply_overrides, find_recipe, from_dict, load_yaml
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.objectives import ObjectiveSpec, parse_objectives
from foresight.train.config import TrainConfig

SECTIONS = {"task", "model", "train", "runs"}  # and each task's own section, named after the task (TASKS)


@dataclass
class Recipe:
    path: Path
    raw: dict  # the recipe after overrides, stored in checkpoints and results
    task: str
    model: dict  # ModelConfig fields; the task fills in what it decides (vocab_size, max_seq_len)
    train: TrainConfig
    runs: dict[str, list[ObjectiveSpec]]  # run name -> its objectives, parsed once (``.written``: the JSON form)
    section: dict  # the task's own section, as written
    run_models: dict[str, dict] = field(default_factory=dict)  # run name -> its model overrides
    task_config: object = None  # the task's section parsed into its config class (tasks.TASK_CONFIGS)

    def model_fields(self, run: str) -> dict:
        """The ``model`` section with ``run``'s own overrides applied."""
        return {**self.model, **self.run_models.get(run, {})}


def load_recipe(name: str, overrides: list[str], group: str = "") -> Recipe:
    from foresight.tasks import TASKS, task_config_class

    path = find_recipe(name, group)
    raw = apply_overrides(load_yaml(path), overrides)
    sections = SECTIONS | set(TASKS)
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ForesightError(f"{path}: unknown section {unknown[0]!r}; known sections: {', '.join(sorted(sections))}")
    task = raw.get("task")
    if task not in TASKS:
        raise ForesightError(f"{path}: 'task' must be one of {sorted(TASKS)}, got {task!r}")
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise ForesightError(f"{path}: model must be a mapping of ModelConfig fields")
    train = from_dict(TrainConfig, raw.get("train"), "train")
    runs = raw.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise ForesightError(f"{path}: 'runs' must map run names to objective lists, e.g. ntp: [{{name: ntp}}]")
    run_specs, run_models = {}, {}
    for run_name, entry in runs.items():
        specs = entry
        if isinstance(entry, dict):
            extra = sorted(set(entry) - {"objectives", "model"})
            if extra:
                raise ForesightError(f"runs.{run_name}: unknown key {extra[0]!r}; a run is a list of objectives or "
                                     f"{{objectives: [...], model: {{...}}}}")
            specs = entry.get("objectives")
            if not isinstance(entry.get("model", {}), dict):
                raise ForesightError(f"runs.{run_name}.model must be a mapping of ModelConfig fields")
            run_models[run_name] = entry.get("model") or {}
        if not isinstance(specs, list) or not specs:
            raise ForesightError(f"runs.{run_name} must be a non-empty list of objectives")
        run_specs[run_name] = parse_objectives(specs, where=f"runs.{run_name}")  # the one parse of the run
    section = raw.get(task) or {}
    task_config = from_dict(task_config_class(task), section, task)  # the one parse of the task's section
    return Recipe(path, raw, task, model, train, run_specs, section, run_models, task_config)


def build_model_config(fields: dict, **fixed) -> ModelConfig:
    """ModelConfig from recipe fields, with the task's ``fixed`` values (an explicit mismatch is an error)."""
    for key, value in fixed.items():
        if key in fields and fields[key] != value and key != "max_seq_len":
            raise ForesightError(f"model.{key}={fields[key]} does not match the task, which needs {value}; remove it")
    merged = {**fields, **fixed}
    if "max_seq_len" in fields:
        merged["max_seq_len"] = max(fields["max_seq_len"], fixed.get("max_seq_len", 0))
    return from_dict(ModelConfig, merged, "model")


def select_runs(recipe: Recipe, names: str | None) -> dict[str, list[ObjectiveSpec]]:
    """``"ntp,top"`` -> those runs of the recipe, in that order; None -> all."""
    if not names:
        return recipe.runs
    chosen = {}
    for n in (s.strip() for s in names.split(",") if s.strip()):
        if n not in recipe.runs:
            raise ForesightError(f"--runs: no run {n!r} in {recipe.path}; it has: {', '.join(recipe.runs)}")
        chosen[n] = recipe.runs[n]
    return chosen
