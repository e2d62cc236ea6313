"""``ForesightModel``: a transformers causal LM plus objective heads, used like the model.

``forward(input_ids, attention_mask=None, labels=None)`` runs the model once (no KV cache) and every objective
on its hidden states; ``labels`` follow the transformers convention (same shape as ``input_ids``, -100 =
ignored, shifted inside). The output has ``loss`` (Σ weight · objective loss), ``losses`` (objective name →
its mean loss) and ``logits`` (the model's own, soft cap included) unless ``return_logits=False``.

What each objective reads (B, T = input_ids.shape):
- NTP: ``labels`` exactly as the model's own loss reads them, so it equals ``model(..., labels=labels).loss``.
- TOP, MTP, DS-MTP: the stream ``labels`` with positions where ``attention_mask`` is 0 also ignored, and no
  loss at such positions: padding is never a target and never a trained position; a position's targets stop
  at the end of the sequence (nothing past T is ranked or predicted).

The wrapper stays usable where a transformers model is expected (``docs/ecosystem.md``): ``config``,
``generation_config``, ``device``, ``dtype``, ``can_generate()`` and ``generate(...)`` are the model's own (so
``generate`` gives the plain model's tokens); ``unwrap()`` returns the model as it was given. The model may be a
PEFT ``PeftModel`` (``wrap(get_peft_model(model, cfg), ...)``): the objectives then read its adapted layers, and
``save_pretrained`` writes the adapter plus the heads. Wrapping first and then ``get_peft_model(wrapped, cfg)``
works too; ``LoraConfig(modules_to_save=wrapped.head_module_names)`` keeps the heads trainable there.

Normalisation: each objective's loss sum is divided by its own count (foresight's definitions; MTP and DS-MTP
divide by the next-token count, as in ``foresight.objectives``). When transformers' ``Trainer`` passes
``num_items_in_batch`` (gradient accumulation), every objective divides by it instead, as the model's own loss
does, so the accumulated gradient is that of one large batch.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn
from transformers.utils import ModelOutput

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.objectives import build_on_parts
from foresight.objectives.base import IGNORE_INDEX
from foresight.objectives.parts import Parts, WrapTrunkOutput
from foresight.objectives.weights import check_weight, in_fractions, weight_at
from foresight.wrapper.checks import has_adapter_layers, is_peft_model
from foresight.wrapper.io import from_pretrained, save_pretrained

_TRUNK_TENSORS = ("hidden", "final", "last_input")
# Keyword arguments callers of a transformers model pass (PEFT's PeftModelForCausalLM, TRL's collators) that mean
# nothing to a pass without a KV cache that returns only what the objectives need.
_IGNORED_IF_NONE = ("inputs_embeds", "output_attentions", "output_hidden_states", "return_dict",
                    "past_key_values", "cache_position")
TRL_REPLACED_FORWARD = (
    "foresight: TRL's trainers replace the model's forward with their own next-token log-probabilities, which "
    "would train without the objectives: use foresight.ForesightSFTTrainer (SFTTrainer's arguments) for SFT; "
    "DPO/GRPO score completions by next-token log-probabilities alone, so give them wrapped.unwrap()")


def is_trl_fused_forward(fn) -> bool:
    """Whether ``fn`` is the forward TRL's ``add_fused_lm_head`` installs (it copies the name of the forward it
    replaces, so it is recognised by its code object)."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return code is not None and code.co_name == "_fused_forward" and "trl" in Path(code.co_filename).parts


def inner_model(model: nn.Module) -> nn.Module:
    """The transformers ``...ForCausalLM`` inside ``model``: itself, or the model a ``PeftModel`` adapts (whose
    layers hold the adapters, so the objectives train them)."""
    return model.get_base_model() if is_peft_model(model) else model


def transformers_model(model: nn.Module) -> nn.Module:
    """``inner_model(model)`` for ``wrap``, refusing a plain model that PEFT injected adapters into."""
    if not is_peft_model(model) and has_adapter_layers(model):
        # e.g. wrap(peft_model.base_model.model): it trains, but its save_pretrained writes the adapter-injected
        # keys, which a plain load cannot read back
        raise ForesightError(f"foresight.wrap: this {type(model).__name__} holds PEFT adapter layers but is not "
                             f"the PeftModel; wrap the PeftModel itself (wrap(get_peft_model(model, cfg), ...)) or "
                             f"merge it first (peft_model.merge_and_unload())")
    inner = inner_model(model)
    if is_peft_model(model):
        for what, module in (("output head", inner.get_output_embeddings()),
                             ("input embedding", inner.get_input_embeddings())):
            if hasattr(module, "base_layer") or hasattr(module, "modules_to_save"):
                # the objectives read the head's and the embedding's weights directly (fused losses, DS-MTP's
                # embedding of x[t+k]), so an adapter or a trained copy there would be bypassed
                raise ForesightError(f"foresight.wrap: the PeftModel adapts the model's {what} (LoRA target or "
                                     f"modules_to_save), which the objectives read directly; leave it out of the "
                                     f"PEFT config (adapt e.g. q_proj, v_proj)")
    return inner


@dataclass
class ForesightOutput(ModelOutput):
    """``loss``: weighted sum of the objectives (None without labels); ``logits`` (B, T, V) or None;
    ``losses``: objective name -> mean loss (scalar tensors); ``metrics``: per-head means (``mtp_head1``, ...)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    losses: dict | None = None
    metrics: dict | None = None


class ForesightModel(nn.Module):
    """A transformers causal LM (``.model``) with foresight objectives (``.objectives``); see the module doc.

    Built by ``foresight.wrap``; ``heads[name]`` is each objective's head module; ``save_pretrained`` /
    ``ForesightModel.from_pretrained`` store and restore both.
    """

    # transformers' Trainer then passes num_items_in_batch and does not rescale the loss itself.
    accepts_loss_kwargs = True

    def __init__(self, model: nn.Module, objectives: list[dict], return_logits: bool = True) -> None:
        super().__init__()
        if not isinstance(objectives, (list, tuple)) or not objectives:
            raise ForesightError("foresight.wrap: objectives must be a non-empty list of specs, "
                                 "for example [{'name': 'ntp'}, {'name': 'top', 'window': 1024}]")
        self.model = model
        self.parts = Parts(transformers_model(model))
        self.specs = [dict(s) if isinstance(s, dict) else s for s in objectives]
        self.objectives = nn.ModuleDict()
        self.weights: dict[str, float | list] = {}
        for i, spec in enumerate(self.specs):
            obj = build_on_parts(spec, self.parts)  # one line for an objective without on_parts
            key = obj.name if obj.name not in self.objectives else f"{obj.name}_{i}"
            check_weight(obj.cfg.weight, f"objectives.{key}.weight")
            self.objectives[key] = obj
            self.weights[key] = obj.cfg.weight
        self.return_logits = return_logits
        self.step, self.total_steps = 0, None  # for weight schedules; set_step() or ForesightCallback move them
        self._warned_frozen: set[str] = set()

    def __setattr__(self, name, value):
        # TRL's trainers patch `model.forward` (trl.trainer.utils.add_fused_lm_head) and then compute a next-token
        # loss of their own from it: the objectives would silently do nothing. ForesightSFTTrainer allows it.
        # Other patches of forward (accelerate's autocast wrapper for bf16/fp16, torch.compile) call ours: kept.
        if name == "forward" and is_trl_fused_forward(value) and not self.__dict__.get("_allow_forward_patch"):
            raise ForesightError(TRL_REPLACED_FORWARD)
        super().__setattr__(name, value)

    # --- what users reach for ---------------------------------------------------------------------------

    @property
    def heads(self) -> dict[str, nn.Module]:
        """Objective name -> its head: NTP the model's ``lm_head``; TOP the V×D ``nn.Linear``; MTP the
        ``ModuleList`` of n-1 decoder layers; DS-MTP the ``ModuleList`` of D modules."""
        return {key: obj.head_module(self.parts) for key, obj in self.objectives.items()}

    @property
    def head_module_names(self) -> list[str]:
        """The heads' module names in this model, one per trained module (``objectives.top.head``,
        ``objectives.mtp.heads.0``, ``objectives.dsmtp.layers.0``, ...): what to pass as PEFT's
        ``LoraConfig(modules_to_save=...)`` when calling ``get_peft_model(wrapped, cfg)``, so PEFT trains and
        saves the heads instead of freezing them. NTP's head is the model's own ``lm_head`` and is not listed."""
        names = []
        for key, obj in self.objectives.items():
            head = obj.head_module(self.parts)
            if head is self.parts.lm_head:
                continue
            prefix = next(f"objectives.{key}.{n}" for n, m in obj.named_modules() if m is head)
            names += [f"{prefix}.{i}" for i in range(len(head))] if isinstance(head, nn.ModuleList) else [prefix]
        return names

    # --- what the transformers ecosystem reaches for (docs/ecosystem.md) --------------------------------

    @property
    def config(self):
        """The wrapped model's config."""
        return self.model.config

    @property
    def generation_config(self):
        """The wrapped model's ``GenerationConfig`` (the same object: TRL sets its pad and eos ids on it)."""
        return inner_model(self.model).generation_config

    @generation_config.setter
    def generation_config(self, value) -> None:  # PEFT's generate assigns its own before generating
        inner_model(self.model).generation_config = value

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return inner_model(self.model).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's parameters."""
        return inner_model(self.model).dtype

    @property
    def name_or_path(self) -> str:
        return inner_model(self.model).name_or_path

    def can_generate(self) -> bool:
        """Whether the wrapped model generates (a ``...ForCausalLM`` does)."""
        return inner_model(self.model).can_generate()

    def generate(self, *args, **kwargs):
        """The wrapped model's own ``generate`` (greedy, sampling, beams, ... with its KV cache; adapters
        included for a ``PeftModel``): the same tokens as the plain model, the heads unused."""
        return self.model.generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, *args, **kwargs):
        """The wrapped model's (PEFT's ``PeftModelForCausalLM`` asks its base model for it)."""
        return inner_model(self.model).prepare_inputs_for_generation(*args, **kwargs)

    def unwrap(self) -> nn.Module:
        """The model as it was given to ``wrap`` (a transformers model or a ``PeftModel``), heads left behind;
        it shares its weights with this wrapper. ``merge_and_unload()`` first for a plain model from a PEFT one."""
        return self.model

    def merge_and_unload(self) -> "ForesightModel":
        """For a wrapped ``PeftModel``: merge the adapters into the weights (PEFT's ``merge_and_unload``) and
        wrap the plain model that results, heads kept; returns this wrapper. A plain model is left as it is."""
        if is_peft_model(self.model):
            self.model = self.model.merge_and_unload()
            self.parts = Parts(self.model)
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.parts.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.parts.lm_head

    def enable_input_require_grads(self) -> None:
        """Passed to the model (what gradient checkpointing with frozen embeddings, e.g. under PEFT, needs)."""
        inner_model(self.model).enable_input_require_grads()

    def add_model_tags(self, tags) -> None:
        """Passed to the model (TRL tags the model it trains; the tags go into the saved model card)."""
        inner_model(self.model).add_model_tags(tags)

    def set_step(self, step: int, total_steps: int | None = None) -> None:
        """The optimiser step that weight schedules (``[[{step: s}, value], ...]``) are read at; ``total_steps``
        is what ``{frac: f}`` times are fractions of."""
        self.step, self.total_steps = int(step), total_steps

    def current_weights(self) -> dict[str, float]:
        """Each objective's weight at the current step."""
        out = {}
        for key, w in self.weights.items():
            if in_fractions(w) and self.total_steps is None:
                raise ForesightError(f"objectives.{key}.weight is a schedule in fractions of the run; call "
                                     f"set_step(step, total_steps) (or use foresight.wrapper.ForesightCallback)")
            out[key] = weight_at(w, self.step, self.total_steps or 0)
        return out

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        """Passed to the wrapped model (its trunk layers); the heads run without checkpointing."""
        self.model.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing_disable()

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """The newer transformers name of ``gradient_checkpointing_enable`` (what ``Trainer`` calls when present)."""
        enable = (getattr(self.model, "activation_checkpointing_enable", None)
                  or self.model.gradient_checkpointing_enable)
        enable(**kwargs)

    def save_pretrained(self, directory, **kwargs) -> None:
        """The model in its own format (``model.save_pretrained``) plus the heads in
        ``foresight_heads.safetensors`` (see ``foresight.wrapper.io``)."""
        save_pretrained(self, directory, **kwargs)  # with a model card, README.md (wrapper/report.py)

    def print_trainable_parameters(self) -> None:
        """Trainable and total parameters (PEFT's line), then each objective's heads and their share of the
        model's parameters, e.g. ``TOP head 28.3M (+21.0 %)`` (``wrapper/report.py``)."""
        from foresight.wrapper.report import print_trainable_parameters

        print_trainable_parameters(self)

    @classmethod
    def from_pretrained(cls, directory, *, return_logits: bool = True, base_model=None, is_trainable: bool = False,
                        **model_kwargs) -> "ForesightModel":
        """Model and heads from a folder written by ``save_pretrained`` (``model_kwargs`` go to
        ``AutoModelForCausalLM.from_pretrained``); for a PEFT adapter folder, ``base_model`` (a model or a path;
        default: the one ``adapter_config.json`` names) with the adapter on it. Weights that do not fit raise
        ``ForesightError`` naming them."""
        return from_pretrained(cls, directory, return_logits=return_logits, base_model=base_model,
                               is_trainable=is_trainable, **model_kwargs)

    # --- passes ----------------------------------------------------------------------------------------

    def _batches(self, input_ids, attention_mask, labels) -> tuple[Batch, Batch]:
        """The NTP batch (labels as given) and the batch of the other objectives (padding ignored)."""
        if labels.shape != input_ids.shape:
            raise ForesightError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(labels.shape)}")
        t = labels.shape[1]
        pad = labels.new_full((labels.shape[0], 1), IGNORE_INDEX)  # nothing is known past the sequence
        ntp = Batch(torch.cat([labels, pad], dim=1), t)  # (B, T + 1)
        if attention_mask is None:
            return ntp, ntp
        keep = attention_mask.bool()  # (B, T)
        future = torch.cat([labels.masked_fill(~keep, IGNORE_INDEX), pad], dim=1)
        return ntp, Batch(future, t, loss_mask=keep)

    def _model_kwargs(self, kwargs: dict) -> dict:
        """The keyword arguments for the trunk pass: the cache is always off, and arguments that PEFT or TRL pass
        as None (or, for ``use_cache``, at all) are dropped; anything else goes to the model."""
        kwargs = {k: v for k, v in kwargs.items() if k != "use_cache" and not (k in _IGNORED_IF_NONE and v is None)}
        if kwargs.get("inputs_embeds") is not None:
            raise ForesightError("foresight.wrap: inputs_embeds is not supported (DS-MTP and the targets read "
                                 "input_ids); pass input_ids")
        return kwargs

    def _warn_frozen_heads(self) -> None:
        """Once per objective: a head with no trainable parameter while the rest trains (``get_peft_model(wrapped,
        cfg)`` freezes every module outside ``modules_to_save``) is almost always a mistake, so say how to fix it."""
        if not (self.training and torch.is_grad_enabled()):
            return
        for key, obj in self.objectives.items():
            params = [p for p in obj.parameters()]
            if params and key not in self._warned_frozen and not any(p.requires_grad for p in params):
                self._warned_frozen.add(key)
                warnings.warn(f"foresight: the {key} head has no trainable parameters, so it will not learn (PEFT "
                              f"freezes modules outside modules_to_save): pass LoraConfig(modules_to_save="
                              f"wrapped.head_module_names) to get_peft_model to train it", stacklevel=3)

    def _divisors(self, results_or_counts: dict[str, torch.Tensor], num_items_in_batch) -> dict[str, torch.Tensor]:
        if num_items_in_batch is not None:
            n = torch.as_tensor(num_items_in_batch)
            return {k: n.to(c.device) for k, c in results_or_counts.items()}
        return {k: c.clamp(min=1) for k, c in results_or_counts.items()}

    def _metrics(self, results, divisors) -> dict[str, torch.Tensor]:
        """Per-head means (``mtp_head1``, ``dsmtp_depth1``, ...), renamed after the key of a repeated objective,
        over the same divisor as the objective's loss (``num_items_in_batch`` under the Trainer), so they add up
        to it across micro-batches as the losses do."""
        return {m.replace(self.objectives[k].name, k, 1): v * (r.count.clamp(min=1) / divisors[k])
                for k, r in results.items() for m, v in r.metrics.items()}

    def _batch_of(self, key: str, ntp: Batch, future: Batch) -> Batch:
        # the next-token loss reads the labels as given (so it equals the model's own loss); the others also
        # ignore padding
        return ntp if self.objectives[key].next_token else future

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_logits: bool | None = None,
                num_items_in_batch: torch.Tensor | int | None = None, **model_kwargs) -> ForesightOutput:
        """One pass of the model and every objective. ``model_kwargs`` (e.g. ``position_ids``) go to the model."""
        out = self.parts.trunk(input_ids, attention_mask, **self._model_kwargs(model_kwargs))
        want_logits = self.return_logits if return_logits is None else return_logits
        logits = self.parts.logits(out.hidden) if want_logits else None
        if labels is None:
            return ForesightOutput(loss=None, logits=logits, losses={}, metrics={})
        self._warn_frozen_heads()
        ntp, future = self._batches(input_ids, attention_mask, labels)
        results = {k: obj(out, self._batch_of(k, ntp, future), self.parts) for k, obj in self.objectives.items()}
        divisors = self._divisors({k: r.count for k, r in results.items()}, num_items_in_batch)
        weights = self.current_weights()
        losses = {k: r.loss_sum / divisors[k] for k, r in results.items()}
        loss = sum(weights[k] * losses[k] for k in losses)
        return ForesightOutput(loss=loss, logits=logits, losses=losses, metrics=self._metrics(results, divisors))

    def forward_backward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                         attention_mask: torch.Tensor | None = None, *, scale: float = 1.0,
                         num_items_in_batch: torch.Tensor | int | None = None,
                         autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                         **model_kwargs) -> ForesightOutput:
        """Forward and backward of ``scale · loss`` with one head's activations alive at a time (Meta MTP §2).

        Accumulates the same gradients as ``forward(...).loss * scale`` followed by ``.backward()``, but the
        objectives read detached copies of the trunk's outputs and each MTP head / DS-MTP module runs its
        forward and backward before the next starts; the trunk then gets one backward. Returns the output with
        detached losses (no logits). Call ``optimizer.step()`` after it as after ``loss.backward()``; for
        gradient accumulation over m micro-batches pass ``scale=1/m`` (or ``num_items_in_batch``).
        ``autocast``: a context manager for the forward passes
        (e.g. ``lambda: torch.autocast("cuda", torch.bfloat16)``).
        """
        self._warn_frozen_heads()
        with autocast():
            out = self.parts.trunk(input_ids, attention_mask, **self._model_kwargs(model_kwargs))
        leaves = WrapTrunkOutput(**{f: getattr(out, f).detach().requires_grad_() for f in _TRUNK_TENSORS},
                                 cos=None, sin=None, layer_kwargs=out.layer_kwargs, input_ids=input_ids)
        ntp, future = self._batches(input_ids, attention_mask, labels)
        batches = {k: self._batch_of(k, ntp, future) for k in self.objectives}
        divisors = self._divisors({k: obj.count(batches[k]) for k, obj in self.objectives.items()},
                                  num_items_in_batch)
        weights = self.current_weights()
        results = {k: obj.forward_backward(leaves, batches[k], self.parts, scale * weights[k] / float(divisors[k]),
                                           autocast)
                   for k, obj in self.objectives.items()}
        roots = [(getattr(out, f), getattr(leaves, f).grad) for f in _TRUNK_TENSORS]
        roots = [(t, g) for t, g in roots if g is not None and t.requires_grad]  # read, and not a frozen trunk
        if roots:
            torch.autograd.backward([t for t, _ in roots], [g for _, g in roots])
        losses = {k: r.loss_sum / divisors[k] for k, r in results.items()}
        loss = sum(weights[k] * losses[k] for k in losses)
        return ForesightOutput(loss=loss, logits=None, losses=losses, metrics=self._metrics(results, divisors))
