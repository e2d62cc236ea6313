"""The Llama-family trunk (RMSNorm, RoPE, grouped-query attention, SwiGLU) and its KV cache for decoding."""

from foresight.model.config import ModelConfig
from foresight.model.layers import Block, KVCache, RMSNorm
from foresight.model.transformer import Transformer, TrunkOutput

__all__ = ["Block", "KVCache", "ModelConfig", "RMSNorm", "Transformer", "TrunkOutput"]
