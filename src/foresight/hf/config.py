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
    scaled = sorted(k for k in kinds if k not in _PLAIN_ROPE)
    if scaled and scaled != ["llama3"]:
        raise ForesightError(f"{where}: RoPE scaling {scaled[-1]!r} is not implemented; foresight imports {SUPPORTED}")
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ForesightError(f"{where}: partial rotary embeddings are not implemented; foresight imports {SUPPORTED}")
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
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
    if model_type in _NOT_THE_TRUNK:
        raise ForesightError(f"{where}: model_type {model_type!r} is not supported: {_NOT_THE_TRUNK[model_type]}")
    if model_type not in _ARCH:
        found = f"model_type {model_type!r}" + (f" ({', '.join(archs)})" if archs else "")
        raise ForesightError(f"{where}: {found} is not supported; foresight imports {SUPPORTED}")
    if archs and _ARCH[model_type] not in archs:
        raise ForesightError(f"{where}: architectures {archs} is not a causal LM; foresight imports {SUPPORTED}")
    return model_type


def from_hf_config(hf: dict, where: str = "config.json") -> ModelConfig:
    """A ``ModelConfig`` computing the same function as the HF model, or a one-line ForesightError."""
    model_type = model_type_of(hf, where)

    def need(key: str):
        if key not in hf:
            raise ForesightError(f"{where}: missing {key!r}; is this a complete {_ARCH[model_type]} config?")
        return hf[key]

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
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
        (all(t == "full_attention" for t in hf.get("layer_types") or []), "layer_types other than full_attention"),
    ]
    for ok, what in checks:
        if not ok:
            raise ForesightError(f"{where}: {what} is not supported; foresight imports {SUPPORTED}")
    theta, rope_scaling = _rope(hf, where)
    return ModelConfig(
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        n_layers=int(need("num_hidden_layers")),
        n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        intermediate_size=int(need("intermediate_size")),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # LlamaConfig and Qwen2Config default
        qkv_bias=model_type == "qwen2",
        init_std=float(hf.get("initializer_range", 0.02)),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
    )
