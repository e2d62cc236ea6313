"""A transformers ``TrainerCallback`` that moves a wrapped model's weight schedules with the Trainer's steps."""

from __future__ import annotations

from transformers import TrainerCallback


class ForesightCallback(TrainerCallback):
    """Calls ``model.set_step(state.global_step, state.max_steps)`` before every step, so objective weights
    given as schedules (``[[{frac: 0}, 0.3], [{frac: 0.7}, 0.1]]``) follow the run. ``ForesightTrainer`` adds it
    by itself, and logs each objective's loss, per-head losses and weight (``loss_top``, ``loss_mtp_head1``,
    ``weight_top``; see ``foresight.wrapper.trainer``); a plain ``Trainer`` with this callback moves the
    schedules but logs only the summed loss."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and hasattr(model, "set_step"):
            model.set_step(state.global_step, state.max_steps)
        return control
