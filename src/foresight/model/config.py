"""Configuration of the Llama-family trunk."""

from __future__ import annotations

from dataclasses import dataclass

from foresight.errors import ForesightError


@dataclass
class ModelConfig:
    """Shape of the trunk. Field names follow Hugging Face ``LlamaConfig`` where one exists."""

    vocab_size: int = 32000  # number of token ids V
    hidden_size: int = 256  # residual width D
    n_layers: int = 4  # blocks on the next-token path (MTP/DS-MTP heads are extra, owned by objectives)
    n_heads: int = 4  # query heads
    n_kv_heads: int | None = None  # key/value heads for grouped-query attention; None = n_heads
    intermediate_size: int | None = None  # SwiGLU width; None = 8/3·D rounded up to a multiple of 64
    rope_theta: float = 10000.0  # RoPE base
    # RoPE frequency scaling, None or Llama 3.1's {rope_type: llama3, factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings} (as in a Hugging Face config; see layers.llama3_inv_freq)
    rope_scaling: dict | None = None
    norm_eps: float = 1e-6  # RMSNorm epsilon
    tie_embeddings: bool = False  # share the input embedding with the output head
    qkv_bias: bool = False  # bias on q, k, v projections (Qwen2 style)
    init_std: float = 0.02  # std of the normal init of every Linear and Embedding
    max_seq_len: int = 2048  # longest sequence the RoPE cache is built for (grows on demand)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.intermediate_size is None:
            self.intermediate_size = 64 * -(-(8 * self.hidden_size // 3) // 64)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
                     "max_seq_len"):
            if int(getattr(self, name)) < 1:
                raise ForesightError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.n_heads:
            raise ForesightError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.n_heads ({self.n_heads})"
            )
        if self.n_heads % self.n_kv_heads:
            raise ForesightError(
                f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ForesightError(f"head dimension hidden_size/n_heads = {self.head_dim} must be even for RoPE")
        if self.rope_scaling is not None:
            self._validate_rope_scaling()
        if self.init_std <= 0 or self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ForesightError("model.init_std, model.norm_eps and model.rope_theta must be > 0")

    def _validate_rope_scaling(self) -> None:
        scaling = self.rope_scaling
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind != "llama3":
            raise ForesightError(f"model.rope_scaling: rope_type {kind!r} is not implemented; only 'llama3' (or null)")
        missing = [k for k in LLAMA3_KEYS if k not in scaling]
        if missing:
            raise ForesightError(f"model.rope_scaling (llama3) lacks {', '.join(missing)}")
        if not (scaling["factor"] >= 1 and 0 < scaling["low_freq_factor"] < scaling["high_freq_factor"]
                and scaling["original_max_position_embeddings"] >= 1):
            raise ForesightError("model.rope_scaling (llama3) needs factor >= 1, 0 < low_freq_factor < "
                                 f"high_freq_factor and original_max_position_embeddings >= 1; got {scaling}")


LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
