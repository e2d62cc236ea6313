"""What ``foresight.wrap`` checks before it builds heads, so a run does not fail at its first checkpoint.

``checked(model, objectives)`` is called once by ``wrap``:

- **Save-ability.** transformers refuses ``save_pretrained`` for a model whose quantizer is not serializable
  ("The model is quantized with gguf and is not serializable"), which a training run meets only at its first
  checkpoint, after the steps before it. A model loaded with ``from_pretrained(..., gguf_file=...)`` usually holds
  plain float weights already (transformers dequantised them at load) and is marked quantized only by flags: those
  flags are cleared here, so it saves, trains and reloads like any model. Weights that are still packed GGUF
  blocks (``GgufLinear``: neither trainable nor saveable) and other non-serializable quantizations are refused in
  one line that says how to load the model instead.
- **Objective entries.** Config objects (``foresight.TOPConfig(window=8)``) are accepted wherever dicts are and
  become their written JSON form (``foresight.objectives.written_form``), what the heads file stores.
"""

from __future__ import annotations

from foresight.errors import ForesightError
from foresight.objectives import written_form


def checked(model, objectives):
    """``(model, objectives)`` ready for ``ForesightModel``: the model saveable (GGUF flags cleared) or a one-line
    ``ForesightError``; config objects in ``objectives`` replaced by their JSON form."""
    check_saveable(model)
    if isinstance(objectives, (list, tuple)):
        objectives = [written_form(o) for o in objectives]
    return model, objectives


def _quant_method(quantizer) -> str:
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    return str(getattr(method, "value", method))


def _packed_parameters(model) -> list[str]:
    """Names of parameters that are not floating point: packed quantized blocks (GGUF's uint8 rows)."""
    return [name for name, p in model.named_parameters() if not p.dtype.is_floating_point]


def check_saveable(model) -> None:
    """Make ``model.save_pretrained`` work later, or refuse now in one line (see the module doc)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or getattr(model, "_hf_peft_config_loaded", False):
        return  # (with a PEFT adapter loaded, save_pretrained writes only the adapter: nothing to check)
    if quantizer.is_serializable():
        return
    method = _quant_method(quantizer)
    if method != "gguf":
        raise ForesightError(f"foresight.wrap: the model is quantized with {method}, which transformers cannot "
                             f"save, so training would fail at its first checkpoint; load it unquantized, or call "
                             f"model.dequantize() before wrap")
    packed = _packed_parameters(model)
    if packed:
        raise ForesightError(f"foresight.wrap: {len(packed)} weights of this GGUF model are still packed blocks "
                             f"({packed[0]}, ...), which neither train nor save; load it dequantized: "
                             f"from_pretrained(..., gguf_file=..., "
                             f"quantization_config=transformers.GgufConfig(dequantize=True))")
    # Every weight is a plain float tensor already (transformers dequantised the file at load): only the
    # quantizer's flags stand in the way of save_pretrained (and of transformers' Trainer, which refuses to
    # train a quantized model without an adapter). Drop them, as transformers does for a dequantize=True load.
    quantizer.remove_quantization_config(model)
    for module in model.modules():  # (the flag transformers sets on the config of every PreTrainedModel inside)
        config = getattr(module, "config", None)
        if config is not None and "_is_quantized" in vars(config):
            del config._is_quantized


def is_peft_model(model) -> bool:
    """A PEFT ``PeftModel`` (found by its attributes, so peft need not be installed)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def has_adapter_layers(model) -> bool:
    """Whether PEFT injected adapter layers (LoRA's ``base_layer`` + ``lora_A`` ...) into ``model``'s modules."""
    return any(c.__name__ == "BaseTunerLayer" for m in model.modules() for c in type(m).__mro__)
