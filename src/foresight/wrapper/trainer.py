"""``ForesightTrainer``: transformers' ``Trainer`` for a wrapped model, whose checkpoints are
``ForesightModel.save_pretrained`` folders.

The plain ``Trainer`` trains a ``ForesightModel`` as it is, but saves any model that is not a ``PreTrainedModel``
as one raw safetensors state dict, which fails for tied embeddings (Qwen2, Gemma, most small models) and would
not be a loadable model folder anyway. This subclass saves the model in its own format plus the heads, and
``resume_from_checkpoint`` loads both back into the model being trained.
"""

from __future__ import annotations

import os

import torch
from transformers import Trainer

from foresight.wrapper.io import load_into


class ForesightTrainer(Trainer):
    """``Trainer`` whose checkpoints (and ``save_model``) are ``save_pretrained`` folders of the wrapped model."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_into(self.accelerator.unwrap_model(model if model is not None else self.model), resume_from_checkpoint)
