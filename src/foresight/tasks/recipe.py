"""A recipe file: ``task``, a task section, ``model``, ``train`` and ``runs`` (named objective lists).

A run is a list of objective specs, or a mapping ``{objectives: [...], model: {...}}`` whose ``model`` entries
override the shared ``model`` section for that run only (e.g. MTP's shorter trunk, parameter-matched to NTP).

What is parsed when: ``load_recipe`` parses every section once, before any data or model exists, through the one
coercion path (``foresight.config.from_dict``): ``train``, the task's section, each run's objectives
(``parse_objectives``) and each run's model (``parse_model``: the shared section with the run's overrides, for
every run of the file, selected or not). Only what the task decides is left: ``complete_model`` fills in its
values (vocabulary, sequence length) once the task knows them. ``Recipe.raw`` keeps the JSON form that
checkpoints and results store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from foresight.config import apply_overrides, find_recipe, from_dict, load_yaml
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.objectives import ObjectiveSpec, parse_objectives
from foresight.train.config import TrainConfig

SECTIONS = {"task", "model", "train", "runs"}  # and each task's own section, named after the task (TASKS)


@dataclass(frozen=True)
class RunModel:
    """A ``model`` section parsed at load: its ``ModelConfig`` and the fields the recipe wrote.

    ``config`` holds every field typed and checked; what the recipe left out has its default, so the fields a
    task decides (``vocab_size``, ``max_seq_len``) are placeholders until ``complete_model``. ``written``: the
    fields as written (the shared section with the run's overrides), so a task can tell an explicit value it
    must refuse or honour from a default it may replace."""

    config: ModelConfig
    written: dict


@dataclass
class Recipe:
    path: Path
    raw: dict  # the recipe after overrides, stored in checkpoints and results (the JSON form)
    task: str
    model: RunModel  # the shared ``model`` section, parsed
    train: TrainConfig
    runs: dict[str, list[ObjectiveSpec]]  # run name -> its objectives, parsed once (``.written``: the JSON form)
    section: dict  # the task's own section, as written
    run_models: dict[str, RunModel] = field(default_factory=dict)  # run name -> its model (shared + overrides)
    task_config: object = None  # the task's section parsed into its config class (tasks.TASKS)


def parse_model(fields: dict) -> RunModel:
    """The one parse of model fields: keys and types (``from_dict``), then ``ModelConfig.validate``; a problem is
    one line naming ``model.<key>``."""
    return RunModel(from_dict(ModelConfig, fields, "model"), dict(fields))


def complete_model(model: RunModel, **fixed) -> ModelConfig:
    """The run's ModelConfig with the values the task decides (``vocab_size=``, ``max_seq_len=``): a field the
    recipe wrote must agree (one line otherwise), except ``max_seq_len``, where the larger of the two wins (the
    RoPE cache may be longer than the task's sequences). Checked again by ``ModelConfig.validate``."""
    cfg = model.config
    for key, value in fixed.items():
        if key in model.written and key != "max_seq_len" and getattr(cfg, key) != value:
            raise ForesightError(f"model.{key}={getattr(cfg, key)} does not match the task, which needs {value}; "
                                 f"remove it")
    if "max_seq_len" in fixed and "max_seq_len" in model.written:
        fixed["max_seq_len"] = max(cfg.max_seq_len, fixed["max_seq_len"])
    return replace(cfg, **fixed)  # a new ModelConfig: __post_init__ validates it


def load_recipe(name: str, overrides: list[str], group: str = "") -> Recipe:
    from foresight.tasks import TASKS

    path = find_recipe(name, group)
    raw = apply_overrides(load_yaml(path), overrides)
    sections = SECTIONS | set(TASKS)
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ForesightError(f"{path}: unknown section {unknown[0]!r}; known sections: {', '.join(sorted(sections))}")
    task = raw.get("task")
    if not isinstance(task, str) or task not in TASKS:  # a list or mapping there is no task name (issue 21)
        raise ForesightError(f"{path}: 'task' must be one of {sorted(TASKS)}, got {task!r}")
    if not isinstance(raw.get("model") or {}, dict):
        raise ForesightError(f"{path}: model must be a mapping of ModelConfig fields")
    model = parse_model(raw.get("model") or {})  # the shared section
    train = from_dict(TrainConfig, raw.get("train"), "train")
    runs = raw.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise ForesightError(f"{path}: 'runs' must map run names to objective lists, e.g. ntp: [{{name: ntp}}]")
    run_specs, run_models = {}, {}
    for run_name, entry in runs.items():
        specs, own = entry, {}
        if isinstance(entry, dict):
            extra = sorted(set(entry) - {"objectives", "model"})
            if extra:
                raise ForesightError(f"runs.{run_name}: unknown key {extra[0]!r}; a run is a list of objectives or "
                                     f"{{objectives: [...], model: {{...}}}}")
            specs = entry.get("objectives")
            own = entry.get("model") or {}
            if not isinstance(own, dict):
                raise ForesightError(f"runs.{run_name}.model must be a mapping of ModelConfig fields")
        if not isinstance(specs, list) or not specs:
            raise ForesightError(f"runs.{run_name} must be a non-empty list of objectives")
        run_specs[run_name] = parse_objectives(specs, where=f"runs.{run_name}")  # the one parse of the run
        run_models[run_name] = model
        if own:  # the run's model: the shared section with its overrides, parsed as a whole
            try:
                run_models[run_name] = parse_model({**model.written, **own})
            except ForesightError as e:
                raise ForesightError(f"runs.{run_name}: {e}") from None
    section = raw.get(task) or {}
    task_config = from_dict(TASKS[task].config, section, task)  # the one parse of the task's section
    return Recipe(path, raw, task, model, train, run_specs, section, run_models, task_config)


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
