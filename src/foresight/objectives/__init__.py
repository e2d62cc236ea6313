"""Training objectives: NTP, TOP, MTP, DS-MTP, FSP, NextLat, MuToR. Each maps trunk outputs + tokens to
(loss sum, count).

``REGISTRY`` maps a recipe name to (config class, objective class); ``register`` adds one. The rest of the
library reaches objectives only through this registry and the ``Objective`` protocol (``base.py``), so a new
objective is a module here plus its tests. ``wrapped.py`` holds the objectives on a transformers model
(``foresight.wrap``; ``Objective.on_parts``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from foresight.config import from_dict
from foresight.errors import ForesightError
from foresight.objectives.base import IGNORE_INDEX, Compute, LossOutput, Objective, shifted_labels
from foresight.objectives.dsmtp import DSMTP, DSMTPConfig
from foresight.objectives.fsp import FSP, FSPConfig
from foresight.objectives.mtp import MTP, MTPConfig
from foresight.objectives.mutor import MuToR, MuToRConfig
from foresight.objectives.nextlat import NextLat, NextLatConfig
from foresight.objectives.ntp import NTP, NTPConfig
from foresight.objectives.top import TOP, TOPConfig, top_loss, top_targets
from foresight.objectives.weights import check_weight
from foresight.objectives.wrapped import OnParts  # importing it fills ``ON_PARTS`` (``Objective.on_parts``)

REGISTRY: dict[str, tuple[type, type[Objective]]] = {
    "ntp": (NTPConfig, NTP),
    "top": (TOPConfig, TOP),
    "mtp": (MTPConfig, MTP),
    "dsmtp": (DSMTPConfig, DSMTP),
    "fsp": (FSPConfig, FSP),
    "nextlat": (NextLatConfig, NextLat),
    "mutor": (MuToRConfig, MuToR),
}


def register(config_cls: type, objective_cls: type[Objective]) -> None:
    """Make ``objective_cls`` (configured by the dataclass ``config_cls``) available to recipes as
    ``{name: <objective_cls.name>, ...}``."""
    name = objective_cls.name
    if name in REGISTRY:
        raise ValueError(f"an objective named {name!r} is already registered")
    REGISTRY[name] = (config_cls, objective_cls)


def drafting_objectives() -> list[str]:
    """Names of the registered objectives that can draft for speculative decoding, in ``auto`` order."""
    found = [(cls.draft_order, name) for name, (_, cls) in REGISTRY.items() if cls.draft_order is not None]
    return [name for _, name in sorted(found)]


def objective_label(specs: list) -> str:
    """The TOP paper's name for an objective list: each objective's ``paper_label`` joined by ' + ', the
    next-token loss left implicit (NTP + TOP is "TOP"); "(no NTP)" marks a list without it."""
    parts, next_token = [], False
    for spec in as_written(specs):
        entry = REGISTRY.get(spec.get("name"))
        if entry is None:  # (recipes are checked at load; a foreign name still gets a readable label)
            parts.append(str(spec.get("name")).upper())
        elif entry[1].next_token:
            next_token = True
        else:
            parts.append(entry[1].paper_label(spec))
    if not parts:
        return "NTP"
    label = " + ".join(parts)
    return label if next_token else f"{label} (no NTP)"


def config_name(entry) -> str | None:
    """The ``REGISTRY`` name of a config object (``TOPConfig(window=8)`` -> ``"top"``), None for anything else."""
    for name, (cfg_cls, _) in REGISTRY.items():
        if type(entry) is cfg_cls:
            return name
    return None


def written_form(entry):
    """An objective entry as checkpoints store it: a config object becomes its JSON form, ``{"name": "top",
    **every field}`` (every field, presets resolved, so a later change of a default does not change what a stored
    run means); a parsed ``ObjectiveSpec`` gives its entry as written; a mapping is copied; anything else is
    returned as it is (the parse names what is wrong with it)."""
    name = config_name(entry)
    if name is not None:
        return {"name": name, **asdict(entry)}
    if isinstance(entry, ObjectiveSpec):
        return dict(entry.written)
    return dict(entry) if isinstance(entry, dict) else entry


def objective_config(spec: dict, where: str = "objectives"):
    """``{"name": "top", "window": 16, ...}`` -> TOPConfig(window=16, ...), each value checked against its field's
    type (``foresight.config.from_dict``, as every recipe section), with one clear error if wrong."""
    spec = written_form(spec)
    if not isinstance(spec, dict) or "name" not in spec:
        configs = ", ".join(c.__name__ for c, _ in REGISTRY.values())
        raise ForesightError(f"{where}: each objective must be a mapping with a 'name' (one of {sorted(REGISTRY)}) "
                             f"or a config object ({configs}); got {type(spec).__name__}")
    name = spec["name"]
    if name not in REGISTRY:
        raise ForesightError(f"{where}: unknown objective {name!r}; choose from {sorted(REGISTRY)}")
    # The one coercion path of recipes (config.from_dict): unknown keys and wrong types are one line naming the key.
    return from_dict(REGISTRY[name][0], {k: v for k, v in spec.items() if k != "name"}, f"{where}.{name}")


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective of a run, parsed: ``name`` (its ``REGISTRY`` key), ``config`` (its config dataclass) and
    ``written`` (the entry as the recipe wrote it: the JSON form that checkpoints and results store, so old
    checkpoints, exports and reports read the same thing)."""

    name: str
    config: object
    written: dict


def parse_objectives(specs: list, where: str = "objectives") -> list[ObjectiveSpec]:
    """The one parse of an objective list (recipes at load, ``TrainableLM`` for library callers and checkpoints):
    ``[{"name": "top", "window": 16}, ...]`` -> ``ObjectiveSpec``s, every entry's keys and weight schedule
    checked, one clear error if wrong. Entries already parsed are kept as they are (never parsed twice)."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ForesightError(f"{where}: at least one objective is needed (for example [{{name: ntp}}])")
    parsed = []
    for spec in specs:
        if not isinstance(spec, ObjectiveSpec):
            spec = written_form(spec)  # a config object (TOPConfig(window=8)) is parsed from its JSON form
            cfg = objective_config(spec, where)
            check_weight(cfg.weight, f"{where}.{spec['name']}.weight")
            spec = ObjectiveSpec(spec["name"], cfg, dict(spec))
        parsed.append(spec)
    return parsed


def as_written(specs: list) -> list[dict]:
    """The JSON form of an objective list (what checkpoints and results store): each entry as written."""
    return [written_form(s) for s in specs]


def build_objective(spec: ObjectiveSpec | dict, model_cfg) -> Objective:
    (spec,) = parse_objectives([spec])
    return REGISTRY[spec.name][1](spec.config, model_cfg)


def build_on_parts(spec, parts) -> Objective:
    """An objective from a recipe-style spec (``{"name": "top", "window": 1024}``) or a config object
    (``TOPConfig(window=1024)``), its heads built on a transformers model's ``parts`` (``foresight.wrap``):
    ``Objective.on_parts``, one line if it has none."""
    spec = written_form(spec)
    cfg = objective_config(spec)
    return REGISTRY[spec["name"]][1].on_parts(cfg, parts)


__all__ = [
    "Compute", "DSMTP", "DSMTPConfig", "FSP", "FSPConfig", "IGNORE_INDEX", "LossOutput", "MTP", "MTPConfig",
    "MuToR", "MuToRConfig",
    "NTP", "NTPConfig", "NextLat", "NextLatConfig", "Objective", "ObjectiveSpec", "OnParts",
    "REGISTRY", "TOP", "TOPConfig", "as_written", "build_objective", "build_on_parts",
    "config_name", "drafting_objectives", "objective_config", "objective_label", "parse_objectives", "register",
    "shifted_labels", "top_loss", "top_targets", "written_form",
]
