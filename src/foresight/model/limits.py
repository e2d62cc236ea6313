"""The largest sizes foresight accepts from a recipe, a checkpoint, a ``config.json`` or the command line.

Every number that decides how much memory is allocated (or how many modules are built) is checked against a
bound here *before* anything is built, so a 300-byte file cannot ask for gigabytes or an hour of module
construction. The bounds are generous: every real model up to ~400B parameters fits (Llama 3.1 405B: vocabulary
128,256, width 16,384, SwiGLU width 53,248, 126 layers, 128 heads; Gemma 3: vocabulary 262,144; Llama 4 Scout:
a 10M context; Kimi K2: 384 experts). What actually gets allocated is then bounded by the data on disk: a
checkpoint's or a model folder's config must match the tensor shapes its files hold (``check_shapes``).
"""

from __future__ import annotations

from foresight.errors import ForesightError

MAX_VOCAB = 1 << 20  # token ids V (1,048,576)
MAX_WIDTH = 1 << 16  # residual width D, SwiGLU and expert widths, memory-layer widths (65,536)
MAX_INTERMEDIATE = 1 << 18  # SwiGLU width (262,144)
MAX_LAYERS = 1024  # trunk blocks
MAX_HEADS = 1024  # query / key-value heads
MAX_SEQ_LEN = 1 << 24  # context length (16,777,216; the RoPE tables are built up to EAGER_ROPE and grow on use)
EAGER_ROPE = 1 << 13  # positions whose RoPE tables a new model builds at once (the rest as sequences reach them)
MAX_EXPERTS = 4096  # MoE experts per layer
MAX_MEM_KEYS = 1 << 12  # UltraMemV2 keys per grid axis n (a layer's fixed permutation holds n² int64 ids) ...
MAX_MEM_CELLS = 1 << 28  # ... and n² x layers over the trunk (2 GB of permutations, built even on the meta device)
MAX_MTP_N = 64  # MTP: tokens predicted per position (heads + 1)
MAX_DSMTP_DEPTH = 64  # DS-MTP: sequential modules D
MAX_TOP_WINDOW = MAX_SEQ_LEN  # TOP: upcoming tokens ranked (K = min(window, 128) slots, so only a sanity bound)
MAX_DRAFTS = 64  # speculative decoding: drafts per step (each is a position in the verification block)
MAX_BATCH = 1 << 20  # sequences per optimiser step / micro-batch / evaluation batch
MAX_EXAMPLES = 1 << 26  # star-graph examples generated in memory (67M)
MAX_STEPS = 1 << 40  # optimiser steps (and step counts stored in a checkpoint)

_MODEL_LIMITS = {  # ModelConfig field -> largest value
    "vocab_size": MAX_VOCAB, "hidden_size": MAX_WIDTH, "intermediate_size": MAX_INTERMEDIATE,
    "n_layers": MAX_LAYERS, "n_heads": MAX_HEADS, "n_kv_heads": MAX_HEADS, "max_seq_len": MAX_SEQ_LEN,
    "moe_experts": MAX_EXPERTS, "moe_top_k": MAX_EXPERTS, "moe_intermediate_size": MAX_INTERMEDIATE,
    "mem_keys": MAX_MEM_KEYS, "mem_kdim": MAX_WIDTH, "mem_rank": MAX_WIDTH, "mem_cores": MAX_WIDTH,
    "mem_knn": MAX_MEM_KEYS, "mem_vdim": MAX_WIDTH, "mem_pre_vdim": MAX_WIDTH, "mem_expand": MAX_MEM_KEYS,
}


def check_int(value, where: str, low: int, high: int) -> int:
    """``value`` if it is an integer (not a bool) in ``low .. high``, else one line naming ``where`` and the
    range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ForesightError(f"{where} must be an integer in {low:,} .. {high:,}, got {value!r}")
    if value < low:
        raise ForesightError(f"{where} must be >= {low:,}, got {value:,}")
    if value > high:
        raise ForesightError(f"{where} must be <= {high:,} (foresight's limit; see foresight/model/limits.py), "
                             f"got {value:,}")
    return value


def check_model_sizes(cfg) -> None:
    """Every size field of a ``ModelConfig`` is an integer within its limit (None allowed where the field has
    a default that derives from others)."""
    for name, high in _MODEL_LIMITS.items():
        value = getattr(cfg, name, None)
        if (name.startswith("moe_") and cfg.ffn != "moe") or (name.startswith("mem_") and cfg.ffn != "ultramem"):
            continue  # (a dense model never reads them)
        if value is None and name == "moe_intermediate_size":
            continue
        check_int(value, f"model.{name}", 1, high)
    if cfg.ffn == "ultramem" and cfg.mem_keys**2 * cfg.n_layers > MAX_MEM_CELLS:
        raise ForesightError(f"model.mem_keys² x model.n_layers = {cfg.mem_keys**2 * cfg.n_layers:,} grid cells is "
                             f"past foresight's limit of {MAX_MEM_CELLS:,} (each layer builds a permutation of its "
                             f"grid); use fewer keys or layers")


def shapes_on_meta(build) -> dict[str, tuple]:
    """The parameter and buffer shapes ``build()`` would give, found by building it on the ``meta`` device
    (nothing allocated); the sizes must have passed ``check_model_sizes`` first (building is still O(modules))."""
    import torch

    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def state_mismatch(expected: dict[str, tuple], saved: dict[str, tuple], limit: int = 3) -> str | None:
    """Where a checkpoint's tensors differ from a model's (names and shapes: ``{key: shape}``); None if they fit."""
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    shapes = [k for k in expected if k in saved and tuple(expected[k]) != tuple(saved[k])]
    parts = []
    if shapes:
        parts.append("shape differs for " + ", ".join(f"{k} (checkpoint {tuple(saved[k])}, model "
                                                      f"{tuple(expected[k])})" for k in shapes[:limit])
                     + (f" and {len(shapes) - limit} more" if len(shapes) > limit else ""))
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing from the checkpoint, e.g. " + ", ".join(missing[:limit]))
    if extra:
        parts.append(f"{len(extra)} tensor(s) the model does not have, e.g. " + ", ".join(extra[:limit]))
    return "; ".join(parts) or None


def check_shapes(expected: dict[str, tuple], stored: dict[str, tuple], where: str, *, extra_ok: bool = False,
                 missing_ok: tuple[str, ...] = ()) -> None:
    """One line if the tensors a config asks for (``expected``: name -> shape) are not the ones a file holds
    (``stored``): checked before the model is built, so a config that asks for more than its files hold is
    refused instead of allocated. ``extra_ok``: stored tensors the model does not have are fine; ``missing_ok``:
    names the file may leave out (a tied output head)."""
    expected = {k: v for k, v in expected.items() if not (k in missing_ok and k not in stored)}
    if extra_ok:
        stored = {k: v for k, v in stored.items() if k in expected}
    if problem := state_mismatch(expected, stored):
        raise ForesightError(f"{where}: its config does not match the tensors it holds: {problem}")


def safetensors_shapes(path) -> dict[str, tuple]:
    """Tensor name -> shape from a safetensors file's header alone (no tensor data read), through the official
    parser (which also checks the header's offsets against the file's size)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
