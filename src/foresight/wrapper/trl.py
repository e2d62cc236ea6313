"""``ForesightSFTTrainer``: TRL's ``SFTTrainer`` (its datasets, chat templates, completion-only masks, packing)
training a wrapped model on its objectives.

TRL's own ``SFTTrainer`` does not call the model's loss: it replaces ``model.forward`` with a fused next-token
log-probability pass (``trl.trainer.utils.add_fused_lm_head``) and computes cross-entropy from it, so TOP, MTP
and DS-MTP would silently do nothing (``ForesightModel`` therefore refuses that replacement with one line). This
subclass lets TRL prepare everything as usual, puts the model's forward back and computes the loss as
``ForesightTrainer`` does: ``model(input_ids, attention_mask, labels, num_items_in_batch=...)``, the weighted
sum of the objectives. Each objective's loss (``loss_ntp``, ``loss_top``, ...) and per-head means
(``mtp_head1``, ...) go into TRL's logs beside ``loss``.

DPO and GRPO are not offered: they score completions by the model's next-token log-probabilities alone (a
preference or reward loss), where the objectives' future-token heads take no part; train with objectives here,
then give ``wrapped.unwrap()`` (the plain model, sharing the trained weights) to ``DPOTrainer`` /
``GRPOTrainer``. Passing a wrapped model to them raises the one-line ``TRL_REPLACED_FORWARD`` error.
"""

from __future__ import annotations

from trl import SFTTrainer

from foresight.errors import ForesightError
from foresight.wrapper.model import ForesightModel, inner_model, is_trl_fused_forward


def _foresight_model(model) -> ForesightModel:
    """The ``ForesightModel`` given, or the one a ``PeftModel`` adapts (``get_peft_model(wrapped, cfg)``)."""
    found = inner_model(model)
    if not isinstance(found, ForesightModel):
        raise ForesightError(f"ForesightSFTTrainer trains a model with objectives (foresight.wrap(model, [...])), "
                             f"got {type(model).__name__}; for a plain model use trl.SFTTrainer")
    return found


class ForesightSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss is the wrapped model's objectives (see the module doc); same arguments."""

    def __init__(self, model, *args, **kwargs) -> None:
        wrapped = _foresight_model(model)
        wrapped._allow_forward_patch = True  # TRL patches forward while it sets up; undone below
        try:
            super().__init__(model, *args, **kwargs)
        finally:
            wrapped._allow_forward_patch = False
            if is_trl_fused_forward(vars(wrapped).get("forward")):
                del wrapped.forward  # back to ForesightModel.forward: the objectives' loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        inputs = {k: v for k, v in inputs.items() if k != "use_cache"}
        out = model(**inputs, num_items_in_batch=num_items_in_batch)
        # With num_items_in_batch each micro-batch's losses are its share of the accumulated batch's mean; scaled
        # by the number of micro-batches, their average (what TRL logs) is that mean.
        steps = 1
        if num_items_in_batch is not None and mode == "train":
            steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        metrics = getattr(self, "_metrics", None)  # TRL's per-step metrics, averaged into each log line
        if metrics is not None:
            values = {f"loss_{k}": v for k, v in out.losses.items()} | dict(out.metrics or {})
            for name, value in values.items():
                value = self.accelerator.gather_for_metrics(value.detach().reshape(1)).mean().item()
                metrics[mode][name].append(value * (steps if name.startswith("loss_") else 1))
        return (out.loss, out) if return_outputs else out.loss
