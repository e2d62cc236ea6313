"""Training objectives: NTP, TOP, MTP, DS-MTP. Each maps trunk outputs + tokens to (loss sum, count)."""

from __future__ import annotations

from dataclasses import fields

from foresight.errors import ForesightError
from foresight.objectives.base import IGNORE_INDEX, Batch, LossOutput, Objective, shifted_labels
from foresight.objectives.dsmtp import DSMTP, DSMTPConfig
from foresight.objectives.mtp import MTP, MTPConfig
from foresight.objectives.ntp import NTP, NTPConfig
from foresight.objectives.top import TOP, TOPConfig, top_loss, top_targets

REGISTRY = {
    "ntp": (NTPConfig, NTP),
    "top": (TOPConfig, TOP),
    "mtp": (MTPConfig, MTP),
    "dsmtp": (DSMTPConfig, DSMTP),
}


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
    "Batch", "DSMTP", "DSMTPConfig", "IGNORE_INDEX", "LossOutput", "MTP", "MTPConfig", "NTP", "NTPConfig",
    "Objective", "REGISTRY", "TOP", "TOPConfig", "build_objective", "objective_config", "shifted_labels",
    "top_loss", "top_targets",
]
