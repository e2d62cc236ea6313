"""The Llama-family trunk."""

from foresight.model.config import ModelConfig
from foresight.model.layers import Block, KVCache, RMSNorm
from foresight.model.transformer import Transformer, TrunkOutput

__all__ = ["Block", "KVCache", "ModelConfig", "RMSNorm", "Transformer", "TrunkOutput"]
