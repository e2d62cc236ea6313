"""``ModelConfig`` <-> a Hugging Face ``config.json`` for Llama (``LlamaForCausalLM``) and Qwen2 (``Qwen2ForCausalLM``);
Mistral (``MistralForCausalLM``) imports too.

The trunk is the Llama architecture; Qwen2 is Llama with a bias on the q, k, v projections (``qkv_bias``);
Mistral with ``sliding_window: null`` is Llama (export writes it as Llama).
Everything else a config can switch on (RoPE scaling other than Llama 3.1's ``llama3``, sliding-window attention, a
bias on the output projection or the MLP, another activation, a head dim other than hidden/heads) changes the function
the model computes, so import refuses it with one line naming what is supported rather than loading a model
that silently computes something else.

The config is written by hand (no ``transformers`` needed to export) and carries the RoPE base both the
transformers-4 way (``rope_theta``) and the transformers-5 way (``rope_parameters``), so either reads it.
"""

from __future__ import annotations

import json
import math

from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.model.config import LLAMA3_KEYS

SUPPORTED = ("Llama (LlamaForCausalLM) and Qwen2 (Qwen2ForCausalLM), also Mistral (MistralForCausalLM), with plain "
             "or Llama-3.1 ('llama3') RoPE, without sliding-window attention")
_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
# Architectures close to the trunk but not the same function, with the reason, so the refusal says why.
_NOT_THE_TRUNK = {
    "qwen3": "Qwen3 normalises queries and keys (q_norm/k_norm RMSNorm per head) and usually has head_dim != "
             "hidden_size / num_attention_heads, neither of which foresight's trunk computes; train it with "
             "foresight.wrap(model, objectives) instead",
}
_PLAIN_ROPE = {None, "default"}  # rope types that are the plain RoPE of the trunk


def to_hf_config(cfg: ModelConfig, *, dtype: str = "float32", bos_id: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None) -> dict:
    """The ``config.json`` of the trunk: Llama, or Qwen2 when the q/k/v projections carry a bias."""
    model_type = "qwen2" if cfg.qkv_bias else "llama"
    out = {
        "architectures": [_ARCH[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 4
        "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
        # transformers 5
        "rope_parameters": {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": dtype,  # transformers 4
        "dtype": dtype,  # transformers 5
    }
    if model_type == "llama":
        out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    return out


def _rope(hf: dict, where: str) -> tuple[float, dict | None]:
    """The RoPE base and scaling (None or llama3's parameters), transformers 4 and 5 spellings; other scalings
    are refused."""
    params = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}  # transformers 5
    scaling = hf.get("rope_scaling") if isinstance(hf.get("rope_scaling"), dict) else {}  # transformers 4
    kinds = {d.get("rope_type", d.get("type", "default")) for d in (params, scaling) if d}
    if not all(isinstance(k, str) for k in kinds):
        raise ForesightError(f"{where}: rope_type must be a name such as \"default\" or \"llama3\"")
    scaled = sorted(k for k in kinds if k not in _PLAIN_ROPE)
    if scaled and scaled != ["llama3"]:
        raise ForesightError(f"{where}: RoPE scaling {scaled[-1]!r} is not implemented; foresight imports {SUPPORTED}")
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ForesightError(f"{where}: partial rotary embeddings are not implemented; foresight imports {SUPPORTED}")
    theta = (_value(params, "rope_theta", where, "number", name="rope_parameters.rope_theta") if "rope_theta" in params
             else _value(hf, "rope_theta", where, "number", 10000.0))
    if not scaled:
        return theta, None
    source = params if params.get("rope_type") == "llama3" else scaling
    missing = [k for k in LLAMA3_KEYS if k not in source]
    if missing:
        raise ForesightError(f"{where}: llama3 RoPE scaling lacks {', '.join(missing)}")
    return theta, {"rope_type": "llama3", **{k: source[k] for k in LLAMA3_KEYS}}


def model_type_of(hf: dict, where: str) -> str:
    """'llama' or 'qwen2', or a ForesightError naming the architecture found and the supported ones."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if not isinstance(model_type, (str, type(None))):
        raise ForesightError(f"{where}: model_type must be a name such as \"llama\", got {json.dumps(model_type)[:60]}")
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ForesightError(f"{where}: architectures must be a list of class names, got {json.dumps(archs)[:60]}")
    if model_type in _NOT_THE_TRUNK:
        raise ForesightError(f"{where}: model_type {model_type!r} is not supported: {_NOT_THE_TRUNK[model_type]}")
    if model_type not in _ARCH:
        found = f"model_type {model_type!r}" + (f" ({', '.join(archs)})" if archs else "")
        raise ForesightError(f"{where}: {found} is not supported; foresight imports {SUPPORTED}")
    if archs and _ARCH[model_type] not in archs:
        raise ForesightError(f"{where}: architectures {archs} is not a causal LM; foresight imports {SUPPORTED}")
    return model_type


_MISSING = object()


def _value(hf: dict, key: str, where: str, kind: str, default=_MISSING, name: str | None = None):
    """``hf[key]`` checked to be of ``kind``: "count" (an integer >= 1), "number" (finite, > 0) or "bool"; null or
    absent gives ``default`` (absent without a default is an error). One line naming the file and key otherwise
    (issue 21: ``int("x")``, ``int(None)``, NaN, ``bool("no")`` used to raise or pass silently)."""
    value, key = hf.get(key), name or key
    if value is None:
        if default is _MISSING:
            raise ForesightError(f"{where}: missing {key!r}; is this a complete Llama/Qwen2 config?")
        return default
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ForesightError(f"{where}: {key} must be true or false, got {json.dumps(value)[:60]}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "count":
        if number and math.isfinite(value) and value == int(value) and value >= 1:
            return int(value)
        raise ForesightError(f"{where}: {key} must be an integer >= 1, got {json.dumps(value)[:60]}")
    if number and math.isfinite(value) and value > 0:
        return float(value)
    raise ForesightError(f"{where}: {key} must be a finite number > 0, got {json.dumps(value)[:60]}")


def from_hf_config(hf: dict, where: str = "config.json") -> ModelConfig:
    """A ``ModelConfig`` computing the same function as the HF model, or a one-line ForesightError."""
    if not isinstance(hf, dict):
        raise ForesightError(f"{where}: must hold a JSON object of config fields, got {type(hf).__name__}")
    model_type = model_type_of(hf, where)

    def need(key: str, kind: str = "count", default=_MISSING):
        return _value(hf, key, where, kind, default)

    hidden, heads = need("hidden_size"), need("num_attention_heads")
    layer_types = hf.get("layer_types") or []
    layer_types = layer_types if isinstance(layer_types, list) else [layer_types]  # not a list: not supported
    checks = [
        (hf.get("hidden_act", "silu") == "silu", f"activation {hf.get('hidden_act')!r} (only silu/SwiGLU)"),
        (not hf.get("mlp_bias", False), "mlp_bias = true"),
        (model_type != "llama" or not hf.get("attention_bias", False),
         "attention_bias = true (a bias on the output projection too)"),
        (hf.get("head_dim") in (None, hidden // heads),
         f"head_dim {hf.get('head_dim')} != hidden_size / num_attention_heads"),
        (not (model_type == "qwen2" and hf.get("use_sliding_window", False)), "sliding-window attention"),
        # Mistral attends within a sliding window unless sliding_window is null; then it is a Llama.
        (not (model_type == "mistral" and hf.get("sliding_window") is not None),
         f"sliding-window attention (sliding_window = {hf.get('sliding_window')}; null is a Llama)"),
        (all(t == "full_attention" for t in layer_types), "layer_types other than full_attention"),
    ]
    for ok, what in checks:
        if not ok:
            raise ForesightError(f"{where}: {what} is not supported; foresight imports {SUPPORTED}")
    theta, rope_scaling = _rope(hf, where)
    return ModelConfig(
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        n_layers=need("num_hidden_layers"),
        n_heads=heads,
        n_kv_heads=need("num_key_value_heads", default=heads),
        intermediate_size=need("intermediate_size"),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        norm_eps=need("rms_norm_eps", "number", 1e-6),
        tie_embeddings=need("tie_word_embeddings", "bool", False),  # LlamaConfig and Qwen2Config default
        qkv_bias=model_type == "qwen2",
        init_std=need("initializer_range", "number", 0.02),
        max_seq_len=need("max_position_embeddings", default=2048),
    )
