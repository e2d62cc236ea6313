"""Every star-graph recipe parses, and its models build (on the meta device, no memory) with the right size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foresight.config import from_dict
from foresight.data.stargraph import StarGraphSpec
from foresight.errors import ForesightError
from foresight.objectives import REGISTRY, ObjectiveSpec, as_written
from foresight.tasks.recipe import build_model_config, load_recipe
from foresight.tasks.stargraph import StarGraphTaskConfig
from foresight.train.lm import TrainableLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted((CONFIGS / "stargraph").glob("*.yaml"))  # text recipes: tests/train/test_text_recipes.py


def test_there_are_recipes():
    names = {p.stem for p in RECIPES}
    assert {"demo", "smoke", "paper"} <= names


def _models(path: Path) -> dict[str, TrainableLM]:
    recipe = load_recipe(str(path), [])
    task = from_dict(StarGraphTaskConfig, recipe.section, "stargraph")
    spec = StarGraphSpec(task.deg, task.path, task.nodes).validate()
    cfg = build_model_config(recipe.model, vocab_size=spec.vocab_size, max_seq_len=spec.seq_len + 1)
    with torch.device("meta"):
        return {name: TrainableLM(cfg, specs) for name, specs in recipe.runs.items()}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds(path):
    for name, lm in _models(path).items():
        assert lm.model.num_parameters() > 0, name


def test_paper_recipe_matches_table5_sizes():
    """TOP paper Table 5 parameter counts (NTP 14.2M, MTP-2 16.0M, MTP-4 19.6M) within 1 %.

    The TOP head is excluded as in the paper's table (it is unused at inference); the DS-MTP rows of the
    table (16.6M / 20.7M) include details of the authors' GPT-2 code that we do not copy, so they are only
    checked to be between the NTP and MTP-4 sizes plus projections.
    """
    models = _models(CONFIGS / "stargraph" / "paper.yaml")

    def size(lm, with_objectives):
        n = lm.model.num_parameters()
        if with_objectives:
            n += sum(p.numel() for p in lm.objectives.parameters())
        return n / 1e6

    assert size(models["ntp"], False) == pytest.approx(14.2, rel=0.01)
    assert size(models["top"], False) == pytest.approx(14.2, rel=0.01)
    assert size(models["mtp2"], True) == pytest.approx(16.0, rel=0.01)
    assert size(models["mtp4"], True) == pytest.approx(19.6, rel=0.01)
    assert 16.0 < size(models["dsmtp2"], True) < 16.7
    assert 19.6 < size(models["dsmtp4"], True) < 20.8


def test_the_task_section_is_parsed_once_at_load():
    recipe = load_recipe("smoke", ["stargraph.nodes=12"], "stargraph")
    assert isinstance(recipe.task_config, StarGraphTaskConfig) and recipe.task_config.nodes == 12
    assert recipe.task_config == from_dict(StarGraphTaskConfig, recipe.section, "stargraph")
    with pytest.raises(ForesightError, match="stargraph.eval_batch_size must be >= 1"):
        load_recipe("smoke", ["stargraph.eval_batch_size=0"], "stargraph")  # before any data or model
    with pytest.raises(ForesightError, match="unknown key stargraph.nodez"):
        load_recipe("smoke", ["stargraph.nodez=3"], "stargraph")


def test_objective_specs_are_parsed_once_at_load(monkeypatch):
    import foresight.objectives as objectives

    calls = []
    entry_parse = objectives.objective_config
    monkeypatch.setattr(objectives, "objective_config", lambda spec, where="objectives": (
        calls.append(spec["name"]), entry_parse(spec, where))[1])
    recipe = load_recipe("smoke", [], "stargraph")
    written = recipe.raw["runs"]
    assert calls == [s["name"] for run in written.values() for s in run]  # each entry once, at load
    for run, specs in recipe.runs.items():
        assert all(isinstance(s, ObjectiveSpec) and isinstance(s.config, REGISTRY[s.name][0]) for s in specs)
        assert as_written(specs) == written[run]  # the JSON form: the entries as the recipe wrote them
    assert recipe.runs["top"][1].config.window == 4096 and recipe.runs["mtp3"][1].config.n == 3

    task = from_dict(StarGraphTaskConfig, recipe.section, "stargraph")
    spec = StarGraphSpec(task.deg, task.path, task.nodes).validate()
    cfg = build_model_config(recipe.model, vocab_size=spec.vocab_size, max_seq_len=spec.seq_len + 1)
    calls.clear()
    with torch.device("meta"):
        lm = TrainableLM(cfg, recipe.runs["dsmtp3"])
        assert calls == []  # the model takes the parsed configs as they are
        assert [o.cfg for o in lm.objectives.values()] == [s.config for s in recipe.runs["dsmtp3"]]
        TrainableLM(cfg, written["dsmtp3"])  # plain dicts (library callers, checkpoints): the same one parse
    assert calls == ["ntp", "dsmtp"]
