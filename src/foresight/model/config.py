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
    # The feed-forward part of every trunk block (MTP heads and DS-MTP modules stay dense): "dense" (SwiGLU),
    # "moe" (top-k routed SwiGLU experts, model/moe.py) or "ultramem" (SwiGLU + an UltraMemV2 memory layer in
    # parallel, model/ultramem.py). A config without the field is dense, so old recipes and checkpoints load.
    ffn: str = "dense"
    moe_experts: int = 8  # experts per MoE layer
    moe_top_k: int = 2  # experts each token goes to (dropless: every token reaches all k)
    moe_intermediate_size: int | None = None  # SwiGLU width of one expert; None = intermediate_size // moe_top_k
    moe_aux_weight: float = 0.01  # weight of the load-balancing loss (Switch / OLMoE) added to the training loss
    mem_keys: int = 64  # UltraMemV2: keys per grid axis n (a layer's key grid has n² cells, never materialised)
    mem_kdim: int = 32  # query width, split into a row half and a column half (kdim/2 each)
    mem_rank: int = 2  # Tucker rank r of the row/column scores
    mem_cores: int = 2  # Tucker cores C_m (r x r) whose sum scores a (row, column) pair
    mem_knn: int = 16  # values retrieved per token (top-knn rows, columns, and pairs)
    mem_vdim: int = 64  # value width (one linear projection W_o: vdim -> hidden)
    mem_pre_vdim: int = 32  # pre-value width (PEER-style gate <W_pre h, P[idx]>)
    mem_expand: int = 1  # implicit value expansion E: E² grid cells share one value (a layer holds (n/E)² values)
    mem_share_ratio: float = 0.5  # fraction of the shared value table each layer addresses (1 = all layers share all)

    def __post_init__(self) -> None:
        if isinstance(self.hidden_size, bool) or not isinstance(self.hidden_size, int):
            raise ForesightError(f"model.hidden_size must be an integer, got {self.hidden_size!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.intermediate_size is None:
            self.intermediate_size = 64 * -(-(8 * self.hidden_size // 3) // 64)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    def validate(self) -> None:
        from foresight.model.limits import check_model_sizes

        if self.ffn not in FFN_KINDS:
            raise ForesightError(f"model.ffn must be one of {', '.join(FFN_KINDS)}, got {self.ffn!r}")
        check_model_sizes(self)  # before anything below multiplies them, and long before anything is built
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
        if self.ffn == "moe":
            self._validate_moe()
        if self.ffn == "ultramem":
            self._validate_memory()

    @property
    def expert_size(self) -> int:
        """SwiGLU width of one MoE expert."""
        return self.moe_intermediate_size or max(1, self.intermediate_size // self.moe_top_k)

    def _validate_moe(self) -> None:
        if self.moe_experts < 1 or not 1 <= self.moe_top_k <= self.moe_experts:
            raise ForesightError(f"model.moe_top_k ({self.moe_top_k}) must be in 1 .. model.moe_experts "
                                 f"({self.moe_experts})")
        if self.expert_size < 1 or self.moe_aux_weight < 0:
            raise ForesightError("model.moe_intermediate_size must be >= 1 and model.moe_aux_weight >= 0")

    def _validate_memory(self) -> None:
        for name in ("mem_keys", "mem_kdim", "mem_rank", "mem_cores", "mem_knn", "mem_vdim", "mem_pre_vdim",
                     "mem_expand"):
            if int(getattr(self, name)) < 1:
                raise ForesightError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.mem_knn > self.mem_keys:
            raise ForesightError(f"model.mem_knn ({self.mem_knn}) must be <= model.mem_keys ({self.mem_keys}): "
                                 f"the top-knn rows and columns are chosen among mem_keys keys")
        if self.mem_kdim % 2:
            raise ForesightError(f"model.mem_kdim ({self.mem_kdim}) must be even: the query splits into a row "
                                 f"half and a column half")
        if self.mem_keys % self.mem_expand:
            raise ForesightError(f"model.mem_expand ({self.mem_expand}) must divide model.mem_keys "
                                 f"({self.mem_keys}): E x E grid cells share one value")
        if not 0 < self.mem_share_ratio <= 1:
            raise ForesightError(f"model.mem_share_ratio must be in (0, 1], got {self.mem_share_ratio}")

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


FFN_KINDS = ("dense", "moe", "ultramem")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
