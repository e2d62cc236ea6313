"""``ForesightTrainer``: transformers' ``Trainer`` for a wrapped model, whose checkpoints are
``ForesightModel.save_pretrained`` folders, and whose logs show every objective.

The plain ``Trainer`` trains a ``ForesightModel`` as it is, but saves any model that is not a ``PreTrainedModel``
as one raw safetensors state dict, which fails for tied embeddings (Qwen2, Gemma, most small models) and would
not be a loadable model folder anyway. This subclass saves the model in its own format plus the heads, and
``resume_from_checkpoint`` loads both back into the model being trained.

Logs: the Trainer's ``loss`` is the weighted sum of the objectives. Every training log (what the console,
TensorBoard, W&B and every other reporter receive) also carries ``loss_<objective>`` (each objective's own
loss, unweighted), its per-head losses (``loss_mtp_head1``, ``loss_dsmtp_depth2``, ...) and ``weight_<objective>``
(its weight at that step), averaged over the logging interval exactly as ``loss`` is: the micro-batches of a
step summed with the same normalisation the Trainer applies to ``loss`` (by ``num_items_in_batch``, else by the
accumulation steps), then divided by the optimiser steps since the last log, then averaged over processes.
Evaluation logs get ``eval_loss_<objective>`` and the per-head ones, averaged over samples as ``eval_loss`` is.
``total_flos`` counts the objectives' heads too (``wrapper/report.py``).
"""

from __future__ import annotations

import os

import torch
from transformers import Trainer

from foresight.wrapper.callback import ForesightCallback
from foresight.wrapper.io import load_into


class ForesightTrainer(Trainer):
    """``Trainer`` whose checkpoints (and ``save_model``) are ``save_pretrained`` folders of the wrapped model, with
    per-objective losses in its logs and the heads' FLOPs in ``total_flos``; it adds a ``ForesightCallback``
    (weight schedules) unless one is given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not any(isinstance(c, ForesightCallback) for c in self.callback_handler.callbacks):
            self.add_callback(ForesightCallback())
        self._objective_sums: dict[str, torch.Tensor] = {}  # log key -> sum since the last log
        self._eval_sums: dict = {}  # the same for the running evaluation, weighted by samples
        self._objective_step = self.state.global_step  # the step of the last log

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

    # --- observability ---------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        losses = getattr(outputs, "losses", None)
        if losses:
            values = {f"loss_{k}": v for k, v in losses.items()}
            values.update({f"loss_{k}": v for k, v in (getattr(outputs, "metrics", None) or {}).items()})
            if model.training:
                scale, sums = self._reported_scale(num_items_in_batch), self._objective_sums
            else:  # evaluation: the Trainer's eval_loss is the mean over samples of each batch's loss
                scale, sums = float(inputs["input_ids"].shape[0]), self._eval_sums
                sums["samples"] = sums.get("samples", 0.0) + scale
            for key, v in values.items():
                v = v.detach().float() * scale
                sums[key] = sums[key] + v if key in sums else v
        return (loss, outputs) if return_outputs else loss

    def _reported_scale(self, num_items_in_batch) -> float:
        """What the Trainer multiplies a micro-batch's loss by before adding it to the logged ``loss``: 1 when
        the model normalised by ``num_items_in_batch`` (summing the micro-batches then gives the step's loss),
        else 1 / accumulation steps; times the processes when tokens are averaged across devices."""
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        scale = 1.0 if scaled else 1.0 / self.current_gradient_accumulation_steps
        if self.args.average_tokens_across_devices and scaled:
            scale *= self.accelerator.num_processes // self.get_tp_size()
        return scale

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._objective_sums:  # a training log: add the objectives' share
            logs.update(self._objective_logs())
        if "eval_loss" in logs and self._eval_sums:  # an evaluation's log: eval_loss_<objective>, ...
            logs.update(self._eval_logs())
        super().log(logs, start_time)

    def evaluate(self, *args, **kwargs):
        self._eval_sums = {}  # a fresh evaluation (a log of an earlier one may not have come)
        return super().evaluate(*args, **kwargs)

    def _eval_logs(self) -> dict[str, float]:
        from transformers.trainer_pt_utils import nested_gather

        keys = [k for k in self._eval_sums if k != "samples"]
        sums = torch.stack([torch.as_tensor(self._eval_sums[k], dtype=torch.float32) for k in keys] +
                           [torch.as_tensor(self._eval_sums["samples"], dtype=torch.float32,
                                            device=self._eval_sums[keys[0]].device)])
        totals = nested_gather(sums, self.args.parallel_mode).view(-1, len(keys) + 1).sum(dim=0)
        self._eval_sums = {}
        return {f"eval_{k}": round(float(v / totals[-1]), 4) for k, v in zip(keys, totals[:-1].tolist())}

    def _objective_logs(self) -> dict[str, float]:
        from transformers.trainer_pt_utils import nested_gather

        steps = max(self.state.global_step - self._objective_step, 1)
        keys = list(self._objective_sums)
        sums = torch.stack([self._objective_sums[k] for k in keys])  # (n,)
        means = nested_gather(sums, self.args.parallel_mode)  # (processes · n,) in order
        means = means.view(-1, len(keys)).mean(dim=0) / steps
        self._objective_sums, self._objective_step = {}, self.state.global_step
        out = {k: round(float(v), 4) for k, v in zip(keys, means.tolist())}
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "current_weights"):
            out.update({f"weight_{k}": float(w) for k, w in model.current_weights().items()})
        return out

    def floating_point_ops(self, inputs) -> int:
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "parts"):  # a ForesightModel: the model's own FLOPs plus the objectives'
            from foresight.wrapper.report import floating_point_ops

            return floating_point_ops(model, inputs)
        return super().floating_point_ops(inputs)
