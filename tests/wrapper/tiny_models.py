"""Tiny random transformers models for the wrapper tests (float32, built from configs: nothing is downloaded)."""

import torch

ARCHS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2"]
VOCAB = 37

_COMMON = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3, bos_token_id=1,
               eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
_EXTRA = {
    "qwen3": dict(head_dim=4),
    "mistral": dict(sliding_window=None),
    # A small soft cap so that tanh bends the logits (initializer_range 0.3 makes them of order 1).
    "gemma2": dict(head_dim=4, final_logit_softcapping=1.5, attn_logit_softcapping=5.0, sliding_window=3,
                   query_pre_attn_scalar=4),
}


def tiny_model(arch: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(arch, **_COMMON, **_EXTRA.get(arch, {}))
    attn = "eager" if arch == "gemma2" else "sdpa"  # Gemma 2's soft-capped attention is eager-only
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


def tiny_tokenizer():
    """A word-level tokenizer over the tiny models' vocabulary: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``w3`` .. ``w36``
    (built in memory: nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<pad>")
