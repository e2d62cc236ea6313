"""foresight's objectives on any transformers decoder-only causal LM.

    wrapped = foresight.wrap(model, objectives=[{"name": "ntp"}, {"name": "top", "window": 1024}])
    out = wrapped(input_ids, attention_mask=mask, labels=labels)   # out.loss, out.losses, out.logits
    out.loss.backward()

See ``foresight.wrapper.model`` for what each objective reads and how losses are normalised, and
``ForesightModel.forward_backward`` for the memory-saving per-head backward (Meta MTP §2).
"""

from __future__ import annotations

from foresight.errors import ForesightError
from foresight.wrapper.checks import checked
from foresight.wrapper.model import ForesightModel, ForesightOutput

from_pretrained = ForesightModel.from_pretrained  # foresight.wrapper.from_pretrained(DIR): the same

HEAD_INITS = ("warm", "random")


def wrap(model, objectives: list[dict], *, return_logits: bool = True, head_init: str = "warm",
         freeze_trunk: bool = False) -> ForesightModel:
    """``model`` (a transformers ``...ForCausalLM``) with the given objectives, as a ``torch.nn.Module``.

    ``objectives``: recipe-style specs, each with a ``name`` (``ntp``, ``top``, ``mtp``, ``dsmtp``), optional
    ``weight`` (a number or a schedule ``[[{step: s}, value], ...]``) and the objective's options (``window``, ``n``,
    ``depth``, ``preset``, ...; see ``foresight.objectives``), or config objects (``foresight.TOPConfig(window=8)``),
    stored as their JSON form. A model loaded from a GGUF file is made saveable first (its weights are plain
    floats; the quantization flags that would stop ``save_pretrained`` are cleared), or refused in one line when
    it cannot be (``foresight.wrapper.checks``). New heads are created on the model's device and
    in its dtype. ``return_logits=False`` skips the (B, T, V) logits (the losses never need them).
    Unsupported models raise ``ForesightError`` with one line naming what is supported; so does an objective
    that does not declare ``Objective.on_parts`` (``objective 'x' does not support foresight.wrap``).
    ``model`` may be a PEFT ``PeftModel`` (``wrap(get_peft_model(model, cfg), ...)``: LoRA and heads train, the
    heads always); for the other order see ``ForesightModel.head_module_names``. ``wrapped.unwrap()`` gives the
    model back (docs/ecosystem.md).

    ``head_init``: ``"warm"`` (default) starts the new heads from the model's own weights, so that on a pretrained
    model they begin near its next-token loss rather than above chance: MTP heads and DS-MTP layers copies of
    the last layer, DS-MTP projections passing the hidden state through, the TOP head a copy of the output head
    (``OnParts.warm_start_on_parts``; measured in notes/issue22-heads-logs.md); ``"random"``: the model's own
    initialisation (``initializer_range``). ``freeze_trunk=True``: only the heads train (every parameter of
    ``model`` gets ``requires_grad = False``, the objectives' own parameters ``True``).
    """
    if head_init not in HEAD_INITS:
        raise ForesightError(f"foresight.wrap: head_init must be one of {', '.join(HEAD_INITS)}, got {head_init!r}")
    model, objectives = checked(model, objectives)  # save-ability (GGUF), config objects (wrapper/checks.py)
    wrapped = ForesightModel(model, objectives, return_logits=return_logits)
    if head_init == "warm":
        for obj in wrapped.objectives.values():
            obj.warm_start_on_parts(wrapped.parts)
    if freeze_trunk:
        freeze_trunk_of(wrapped)
    return wrapped


def freeze_trunk_of(wrapped: ForesightModel) -> None:
    """Head-only training: the wrapped model's parameters frozen (shared ones too: NTP's output head, the
    embedding the DS-MTP modules read), the objectives' own parameters trainable."""
    for p in wrapped.model.parameters():
        p.requires_grad_(False)
    shared = {id(p) for p in wrapped.model.parameters()}
    own = [p for obj in wrapped.objectives.values() for p in obj.parameters() if id(p) not in shared]
    if not own:
        raise ForesightError("foresight.wrap: freeze_trunk=True leaves nothing to train (no objective has heads "
                             "of its own: add top, mtp or dsmtp)")
    for p in own:
        p.requires_grad_(True)


def __getattr__(name: str):
    if name == "ForesightCallback":  # needs transformers' Trainer classes; imported on first use
        from foresight.wrapper.callback import ForesightCallback

        return ForesightCallback
    if name == "ForesightTrainer":
        from foresight.wrapper.trainer import ForesightTrainer

        return ForesightTrainer
    if name == "ForesightSFTTrainer":  # needs trl
        try:
            from foresight.wrapper.trl import ForesightSFTTrainer
        except ImportError as e:
            from foresight.errors import ForesightError

            raise ForesightError(f"ForesightSFTTrainer needs TRL ({e}); pip install 'foresight[trl]'") from None

        return ForesightSFTTrainer
    raise AttributeError(f"module 'foresight.wrapper' has no attribute {name!r}")


__all__ = ["ForesightCallback", "ForesightModel", "ForesightSFTTrainer", "ForesightTrainer", "ForesightOutput",
           "from_pretrained", "wrap"]
