"""What the objectives need from a Hugging Face causal LM (``foresight.wrap``), found by structure, and one trunk
pass that leaves the tensors they read. It sits in ``objectives/`` because the objectives on a transformers model
(``wrapped.py``) build on it; ``foresight.wrapper`` and ``generate/wrapped.py`` use it from here.

A decoder-only ``...ForCausalLM`` in transformers is ``base_model`` (embedding, ``layers``, final ``norm``) plus
``lm_head``; the architecture's own code turns the last layer's output into logits (final norm, head, and for
Gemma 2 a soft cap ``c · tanh(z / c)``). The objectives need three tensors of the trunk, as foresight's own
``TrunkOutput`` (``foresight.model.transformer``) names them:

    hidden      (B, T, D)  the final norm's output: what the next-token head (and the TOP head) reads
    final       (B, T, D)  the last layer's output before the final norm (DS-MTP ``h0: pre_norm``)
    last_input  (B, T, D)  the last layer's input: MTP heads run in parallel with the last layer (Meta MTP §2)

plus the keyword arguments the model passed to its last layer (attention mask, RoPE tables, position ids), so
an extra layer of the model's own class, built with the last layer's index, computes what another last layer
would: the same attention type (Gemma 2 alternates sliding and global layers), the same positions. They are
caught with forward hooks on the last layer for the duration of one pass; nothing in the model is changed.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from foresight.errors import ForesightError
from foresight.model.transformer import TrunkOutput

SUPPORTED = ("decoder-only causal LMs of transformers (an ...ForCausalLM with base_model.layers, base_model.norm "
             "and a bias-free lm_head), e.g. Llama, Qwen2, Qwen3, Mistral, Phi-3, Gemma 2")
_CACHE_KWARGS = ("cache", "past_key_value", "past_key_values")  # never let a head layer touch a KV cache
# Config keys that change how logits come out of lm_head; a model carrying one we do not apply is refused,
# because the loss would silently differ from the model's own.
_KNOWN_LOGIT_KEYS = {"final_logit_softcapping"}
_UNKNOWN_LOGIT_KEYS = ("logit_scale", "logits_scaling", "output_multiplier_scale", "mup_width_multiplier")


@dataclass
class WrapTrunkOutput(TrunkOutput):
    """``TrunkOutput`` of a transformers model: ``cos``/``sin`` are None (RoPE lives in ``layer_kwargs``)."""

    layer_kwargs: dict = field(default_factory=dict)  # what the model passed its last layer, caches removed
    input_ids: torch.Tensor | None = None  # (B, T): DS-MTP module k embeds input_ids[t + k]


class Parts:
    """The pieces of ``model`` the objectives use: layers, final norm, embedding, output head, soft cap."""

    def __init__(self, model: nn.Module) -> None:
        name = type(model).__name__
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "base_model"):
            raise ForesightError(f"foresight.wrap: {name} is not a transformers model; supported: {SUPPORTED}")
        if getattr(config, "is_encoder_decoder", False) or not name.endswith("ForCausalLM"):
            raise ForesightError(f"foresight.wrap: {name} is not a decoder-only causal LM; supported: {SUPPORTED}")
        base = model.base_model
        layers, norm = getattr(base, "layers", None), getattr(base, "norm", None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or not isinstance(norm, nn.Module):
            raise ForesightError(f"foresight.wrap: {name} has an unknown layer structure (no base_model.layers "
                                 f"and base_model.norm); supported: {SUPPORTED}")
        if not isinstance(head, nn.Linear) or head.bias is not None or not isinstance(embed, nn.Embedding):
            raise ForesightError(f"foresight.wrap: {name} has no bias-free nn.Linear output head and nn.Embedding "
                                 f"input embedding; supported: {SUPPORTED}")
        odd = [k for k in _UNKNOWN_LOGIT_KEYS if getattr(config, k, None) not in (None, 1, 1.0)]
        if odd:
            raise ForesightError(f"foresight.wrap: {name} scales its logits ({odd[0]} = {getattr(config, odd[0])}), "
                                 f"which wrap does not reproduce; supported: {SUPPORTED}")
        self.model, self.config = model, config
        self.layers, self.norm, self.lm_head, self.embed_tokens = layers, norm, head, embed
        self.softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2: c in c · tanh(z / c)
        self.layer_class = type(layers[-1])
        self.last_index = len(layers) - 1

    @property
    def hidden_size(self) -> int:
        return self.lm_head.weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    def new_layer(self) -> nn.Module:
        """A fresh decoder layer of the model's own class, with the last layer's index (so its attention type
        and RoPE are the last layer's), initialised as the model initialises its layers."""
        try:
            layer = self.layer_class(self.config, self.last_index)
        except TypeError as e:
            raise ForesightError(f"foresight.wrap: cannot build a {self.layer_class.__name__}(config, layer_idx) "
                                 f"({e}); supported: {SUPPORTED}") from None
        ref = next(self.layers[-1].parameters())
        layer.to(device=ref.device, dtype=ref.dtype)
        init = getattr(self.model, "_init_weights", None)
        if init is not None:
            for module in layer.modules():
                init(module)
        return layer

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own logits (B, T, V) from final-norm hidden states, soft cap included."""
        z = self.lm_head(hidden)
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def run_layer(self, layer: nn.Module, x: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
        """A head layer on x (B, T, D) with the last trunk layer's keyword arguments; (B, T, D)."""
        out = layer(x, **layer_kwargs)
        return out[0] if isinstance(out, tuple) else out  # transformers 4 layers return tuples

    @contextlib.contextmanager
    def _catch_last_layer(self, caught: dict):
        def before(module, args, kwargs):
            caught["last_input"] = args[0] if args else kwargs["hidden_states"]
            caught["layer_kwargs"] = {k: v for k, v in kwargs.items()
                                      if k not in _CACHE_KWARGS and k != "hidden_states"}
            caught["layer_kwargs"]["use_cache"] = False

        def after(module, args, kwargs, output):
            caught["final"] = output[0] if isinstance(output, tuple) else output

        last = self.layers[-1]
        handles = [last.register_forward_pre_hook(before, with_kwargs=True),
                   last.register_forward_hook(after, with_kwargs=True)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              **model_kwargs) -> WrapTrunkOutput:
        """One pass of the base model without a KV cache; the tensors the objectives read."""
        caught: dict = {}
        with self._catch_last_layer(caught):
            out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                        **model_kwargs)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        if "final" not in caught:
            raise ForesightError(f"foresight.wrap: {type(self.model).__name__}'s last layer did not run; "
                                 f"supported: {SUPPORTED}")
        return WrapTrunkOutput(hidden=hidden, final=caught["final"], last_input=caught["last_input"], cos=None,
                               sin=None, layer_kwargs=caught["layer_kwargs"], input_ids=input_ids)


def prefix_layer_kwargs(parts, h: torch.Tensor) -> dict:
    """The keyword arguments the model gives its last layer for a pass over positions 0..N-1 without a cache
    (h: (B, N, D)): the causal (or sliding-window, by the last layer's type) mask and the RoPE tables, built by
    the model's own mask functions and rotary embedding."""
    from transformers import masking_utils

    base, config = parts.model.base_model, parts.config
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise ForesightError(f"{type(parts.model).__name__} has no base_model.rotary_emb: its heads cannot draft "
                             f"from Python (supported: Llama, Qwen2, Qwen3, Mistral, Phi-3, Gemma 2)")
    b, n = h.shape[:2]
    position_ids = torch.arange(n, device=h.device)[None].expand(b, -1)  # (B, N)
    types = getattr(config, "layer_types", None)
    sliding = types is not None and types[parts.last_index] == "sliding_attention"
    make = masking_utils.create_sliding_window_causal_mask if sliding else masking_utils.create_causal_mask
    params = inspect.signature(make).parameters
    mask_kwargs = dict(config=config, inputs_embeds=h, attention_mask=None, position_ids=position_ids)
    if "cache" in params:  # transformers >= 5.2x
        mask_kwargs["cache"] = None
    else:  # older names
        mask_kwargs.update(past_key_values=None, cache_position=torch.arange(n, device=h.device))
    return {"attention_mask": make(**mask_kwargs), "position_ids": position_ids,
            "position_embeddings": rotary(h, position_ids), "use_cache": False}


class HeadCache:
    """A transformers KV cache of the model's structure (``DynamicCache(config=...)``: Gemma 2's sliding-window
    layers get sliding caches) that can be cropped back after a rejected draft: ``arg`` is the keyword the
    model's layers take it by (``cache`` in transformers 5, ``past_key_values`` before), ``filled(m)`` is called
    after every pass of m positions, ``crop(remove)`` drops the last ``remove`` positions."""

    def __init__(self, parts) -> None:
        from transformers import DynamicCache

        base = parts.model.base_model
        self.arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        try:
            self.cache = DynamicCache(config=parts.config)
        except TypeError:
            self.cache = DynamicCache()
        self.length = 0
        self.recording = False

    def filled(self, m: int) -> None:
        self.length += m
        if not self.recording and hasattr(self.cache, "activate_past_recording"):
            # after the prefill (as transformers does): sliding-window layers keep what a crop may need
            self.cache.activate_past_recording(recurrent_states_to_keep=m)
            self.recording = True

    def crop(self, remove: int) -> None:
        if hasattr(self.cache, "activate_past_recording"):  # transformers 5: crop(-tokens to remove)
            for layer in self.cache.layers:  # a head's cache fills one layer only: the others stay empty
                if getattr(layer, "is_initialized", True):
                    layer.crop(-remove)
        else:  # transformers 4: crop(length to keep)
            self.cache.crop(self.length - remove)
        self.length -= remove
