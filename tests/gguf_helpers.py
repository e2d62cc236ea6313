"""Tiny GGUF files for tests, written with the gguf package's writer as llama.cpp writes them (tensor names,
metadata, a byte-level BPE tokenizer, and for Llama its q/k row permutation): ``hf_model`` makes a random
transformers Llama / Qwen2 model, ``write_gguf`` writes it (F32 or quantized). Used by ``tests/hf/test_hf_gguf.py``
(``foresight import``) and ``tests/wrapper/test_wrap_checks.py`` (``foresight.wrap`` on a GGUF-loaded model)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from helpers import perturb_norms_and_biases

MERGES = ["Ġ t", "h e", "Ġt he"]


def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable character table (the symbols of a byte-level BPE vocabulary)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def hf_model(kind: str, seed: int = 0, tie: bool = True):
    """A random transformers model, vocabulary 260 (256 bytes + 3 merges + an end token), O(1) activations."""
    cfg = dict(vocab_size=260, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, initializer_range=0.25,
               rope_theta=500.0, tie_word_embeddings=tie)
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cls = transformers.LlamaForCausalLM if kind == "llama" else transformers.Qwen2ForCausalLM
    config = (transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config)(**cfg)
    model = cls(config)
    perturb_norms_and_biases(model)
    return model.eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> llama.cpp layout of a Llama q/k projection (rows of each head: rotate-half -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, kind: str = "llama", quant: str = "F32", arch: str | None = None, extra=None):
    """Write ``model`` as llama.cpp does (names, metadata, tokenizer); matrices in ``quant`` (F32 or Q8_0)."""
    import gguf

    c = model.config
    arch = arch or kind
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(500.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    tokens = _byte_symbols() + ["Ġt", "he", "Ġthe", "<|endoftext|>"]
    assert len(tokens) == c.vocab_size
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])  # 1 normal, 3 control
    w.add_token_merges(MERGES)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_bos_token_id(len(tokens) - 1)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    qtype = getattr(gguf.GGMLQuantizationType, quant)
    for key, t in model.state_dict().items():
        a = t.detach().float().numpy().copy()
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            name = "output.weight"
        else:
            m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
            name = f"blk.{m[1]}.{names[m[2]]}.{m[3]}"
            if kind == "llama" and m[2] == "self_attn.q_proj":
                a = _permute(a, c.num_attention_heads)
            elif kind == "llama" and m[2] == "self_attn.k_proj":
                a = _permute(a, c.num_key_value_heads)
        if a.ndim == 2 and quant != "F32":
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)
    for name, a in (extra or {}).items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
