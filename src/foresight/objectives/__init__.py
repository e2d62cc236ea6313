"""Training objectives: NTP, TOP, MTP, DS-MTP. Each maps trunk outputs + tokens to (loss sum, count).

``REGISTRY`` maps a recipe name to (config class, objective class); ``register`` adds one. The rest of the
library reaches objectives only through this registry and the ``Objective`` protocol (``base.py``), so a new
objective is a module here plus its tests."""

from __future__ import annotations

from dataclasses import fields

from foresight.errors import ForesightError
from foresight.objectives.base import IGNORE_INDEX, Batch, Compute, LossOutput, Objective, shifted_labels
from foresight.objectives.dsmtp import DSMTP, DSMTPConfig
from foresight.objectives.mtp import MTP, MTPConfig
from foresight.objectives.ntp import NTP, NTPConfig
from foresight.objectives.top import TOP, TOPConfig, top_loss, top_targets

REGISTRY: dict[str, tuple[type, type[Objective]]] = {
    "ntp": (NTPConfig, NTP),
    "top": (TOPConfig, TOP),
    "mtp": (MTPConfig, MTP),
    "dsmtp": (DSMTPConfig, DSMTP),
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


def objective_label(specs: list[dict]) -> str:
    """The TOP paper's name for an objective list: each objective's ``paper_label`` joined by ' + ', the
    next-token loss left implicit (NTP + TOP is "TOP"); "(no NTP)" marks a list without it."""
    parts, next_token = [], False
    for spec in specs:
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


def objective_config(spec: dict, where: str = "objectives"):
    """``{"name": "top", "window": 16, ...}`` -> TOPConfig(window=16, ...), with one clear error if wrong."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ForesightError(f"{where}: each objective must be a mapping with a 'name' (one of {sorted(REGISTRY)})")
    name = spec["name"]
    if name not in REGISTRY:
        raise ForesightError(f"{where}: unknown objective {name!r}; choose from {sorted(REGISTRY)}")
    cfg_cls = REGISTRY[name][0]
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(spec) - known - {"name"})
    if unknown:
        raise ForesightError(f"{where}.{name}: unknown key {unknown[0]!r}; known keys: {sorted(known)}")
    try:
        return cfg_cls(**{k: v for k, v in spec.items() if k != "name"})
    except TypeError as e:
        raise ForesightError(f"{where}.{name}: {e}") from None


def build_objective(spec: dict, model_cfg) -> Objective:
    cfg = objective_config(spec)
    return REGISTRY[spec["name"]][1](cfg, model_cfg)


__all__ = [
    "Batch", "Compute", "DSMTP", "DSMTPConfig", "IGNORE_INDEX", "LossOutput", "MTP", "MTPConfig", "NTP", "NTPConfig",
    "Objective", "REGISTRY", "TOP", "TOPConfig", "build_objective", "drafting_objectives", "objective_config",
    "objective_label", "register", "shifted_labels", "top_loss", "top_targets",
]
