"""foresight: train language models with future-aware objectives (TOP, MTP, DS-MTP) beside NTP.

The public API, imported on first use so that ``import foresight`` stays fast (no torch until needed); this
module imports none of foresight's packages itself, so every package may read ``__version__`` from it:

- ``wrap(model, objectives=[...])``: the objectives on any transformers decoder-only causal LM
  (``ForesightModel``; ``ForesightTrainer`` is transformers' ``Trainer`` saving wrapped checkpoints,
  ``ForesightCallback`` moves weight schedules with the Trainer's steps; ``ForesightSFTTrainer`` is TRL's
  ``SFTTrainer`` training the objectives).
- Objective configs (``NTPConfig``, ``TOPConfig``, ``MTPConfig``, ``DSMTPConfig``, ``objective_config``),
  ``top_targets`` and ``top_loss`` (TOP paper §3), the fused linear losses ``linear_cross_entropy`` and
  ``linear_soft_cross_entropy``.
- foresight's own models: ``ModelConfig``, ``Transformer``, ``TrainableLM``, ``load_model`` (a checkpoint or run
  folder), ``generate`` and ``speculative_generate``, ``export_checkpoint`` (to a Hugging Face folder) and
  ``import_hf`` (from one); ``speculative_generate`` also drafts with a wrapped model's own heads
  (``speculative_generate(wrapped, input_ids, max_new_tokens)``, output equal to greedy ``generate``).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "wrap": "foresight.wrapper",
    "ForesightModel": "foresight.wrapper",
    "ForesightOutput": "foresight.wrapper",
    "ForesightCallback": "foresight.wrapper",
    "ForesightTrainer": "foresight.wrapper",
    "ForesightSFTTrainer": "foresight.wrapper",
    "NTPConfig": "foresight.objectives",
    "TOPConfig": "foresight.objectives",
    "MTPConfig": "foresight.objectives",
    "DSMTPConfig": "foresight.objectives",
    "objective_config": "foresight.objectives",
    "top_targets": "foresight.objectives",
    "top_loss": "foresight.objectives",
    "linear_cross_entropy": "foresight.ops",
    "linear_soft_cross_entropy": "foresight.ops",
    "ModelConfig": "foresight.model",
    "Transformer": "foresight.model",
    "TrainableLM": "foresight.train.lm",
    "load_model": "foresight.train.lm",
    "generate": "foresight.generate",
    "speculative_generate": "foresight.generate",
    "export_checkpoint": "foresight.hf",
    "import_hf": "foresight.hf",
    "ForesightError": "foresight.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'foresight' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted([*_LAZY, "__version__"])
