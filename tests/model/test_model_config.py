"""ModelConfig: defaults, validation messages, and parameter counts of well-known shapes (built on meta)."""

from __future__ import annotations

import pytest
import torch

from foresight.errors import ForesightError
from foresight.model import ModelConfig, Transformer


def test_defaults_are_filled():
    cfg = ModelConfig(vocab_size=100, hidden_size=96, n_heads=6)
    assert cfg.n_kv_heads == 6
    assert cfg.head_dim == 16
    # 8/3 * 96 = 256 exactly -> already a multiple of 64
    assert cfg.intermediate_size == 256


@pytest.mark.parametrize("hidden, heads", [(100, 2), (256, 4), (96, 6), (64, 2), (4096, 32), (2048, 16), (30, 3)])
def test_default_intermediate_size_is_8_thirds_rounded_up_to_64(hidden, heads):
    cfg = ModelConfig(vocab_size=10, hidden_size=hidden, n_heads=heads)
    i = cfg.intermediate_size
    assert i % 64 == 0
    assert i >= (8 * hidden) // 3
    assert i - (8 * hidden) // 3 < 64


def test_explicit_values_are_kept():
    cfg = ModelConfig(vocab_size=10, hidden_size=48, n_heads=6, n_kv_heads=2, intermediate_size=70)
    assert cfg.n_kv_heads == 2
    assert cfg.intermediate_size == 70  # an explicit width is not rounded


@pytest.mark.parametrize(
    "kwargs, fields",
    [
        (dict(hidden_size=50, n_heads=4), ["hidden_size", "n_heads"]),  # 50 % 4 != 0
        (dict(hidden_size=48, n_heads=6, n_kv_heads=4), ["n_heads", "n_kv_heads"]),  # 6 % 4 != 0
        (dict(hidden_size=48, n_heads=4, n_kv_heads=8), ["n_kv_heads"]),  # more kv heads than heads
        (dict(hidden_size=12, n_heads=4), ["hidden_size", "n_heads"]),  # head dim 3 is odd
        (dict(hidden_size=30, n_heads=2), ["hidden_size", "n_heads"]),  # head dim 15 is odd
        (dict(n_layers=0), ["n_layers"]),
        (dict(vocab_size=0), ["vocab_size"]),
        (dict(hidden_size=0), ["hidden_size"]),
        (dict(n_heads=0), ["n_heads"]),
        (dict(n_kv_heads=0), ["n_kv_heads"]),
        (dict(intermediate_size=0), ["intermediate_size"]),
        (dict(max_seq_len=0), ["max_seq_len"]),
        (dict(init_std=0.0), ["init_std"]),
        (dict(norm_eps=-1e-6), ["norm_eps"]),
        (dict(rope_theta=0.0), ["rope_theta"]),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), ["rope_scaling", "yarn"]),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), ["rope_scaling", "low_freq_factor"]),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192}), ["rope_scaling", "low_freq_factor"]),
    ],
)
def test_invalid_configs_raise_naming_the_field(kwargs, fields):
    with pytest.raises(ForesightError) as info:
        ModelConfig(**kwargs)
    message = str(info.value)
    for field in fields:
        assert field in message, f"message {message!r} does not name {field!r}"


def test_odd_head_dim_message_mentions_rope_or_even():
    with pytest.raises(ForesightError, match="even"):
        ModelConfig(hidden_size=12, n_heads=4)


def test_validate_rechecks_after_mutation():
    cfg = ModelConfig(vocab_size=10, hidden_size=32, n_heads=4)
    cfg.n_layers = 0
    with pytest.raises(ForesightError, match="n_layers"):
        cfg.validate()


# ---------------------------------------------------------------------------------------------------------
# Published parameter counts, checked on the meta device (nothing is allocated).


def test_llama2_7b_shape_has_the_published_parameter_count():
    cfg = ModelConfig(vocab_size=32000, hidden_size=4096, n_layers=32, n_heads=32, intermediate_size=11008,
                      max_seq_len=4096)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert model.num_parameters() == 6_738_415_616  # Llama-2-7B
    assert model.num_parameters(exclude_embeddings=True) == 6_738_415_616 - 32000 * 4096


def test_qwen2_0_5b_shape_has_the_published_parameter_count():
    # GQA (14 query heads, 2 kv heads), qkv bias, tied embeddings.
    cfg = ModelConfig(vocab_size=151936, hidden_size=896, n_layers=24, n_heads=14, n_kv_heads=2,
                      intermediate_size=4864, tie_embeddings=True, qkv_bias=True, max_seq_len=64)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.num_parameters() == 494_032_768  # Qwen2-0.5B
