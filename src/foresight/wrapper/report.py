"""What a wrapped model tells its user: parameter counts with the heads' share, training FLOPs with the
objectives' share, and the model card ``save_pretrained`` writes.

Head sizes count each objective's own parameters (those not shared with the model: NTP's output head is the
model's). FLOPs follow transformers' convention (``Trainer.floating_point_ops``: 6 × tokens × non-embedding parameters,
attention scores left out) and add each objective's ``Objective.compute()``: its blocks'
parameters plus one V×D product per extra application of an output head (``train/flops.py`` for the same
accounting on foresight's own models).
"""

from __future__ import annotations

from pathlib import Path

from foresight.io import atomic_write

CARD_MARK = "<!-- written by foresight: ForesightModel.save_pretrained -->"


def _unique_count(params) -> int:
    seen, total = set(), 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def head_parameters(wrapped) -> dict[str, int]:
    """Objective key -> parameters it owns (0 for NTP, whose head is the model's)."""
    shared = {id(p) for p in wrapped.model.parameters()}
    return {key: _unique_count(p for p in obj.parameters() if id(p) not in shared)
            for key, obj in wrapped.objectives.items()}


def _label(wrapped, key: str) -> str:
    return wrapped.objectives[key].draft_heads or f"{key} head"  # "MTP heads", "DS-MTP modules", "TOP head"


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


def parameter_lines(wrapped) -> list[str]:
    """PEFT's ``trainable params: ... || all params: ... || trainable%: ...`` line, then one line per objective
    with heads of its own: its size and its share of the model's (``TOP head 28.3M (+21.0 %)``)."""
    base = _unique_count(wrapped.model.parameters())
    every = list(wrapped.model.parameters()) + list(wrapped.objectives.parameters())
    total = _unique_count(every)
    trainable = _unique_count(p for p in every if p.requires_grad)
    lines = [f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}",
             f"base model {_millions(base)}"]
    for key, n in head_parameters(wrapped).items():
        if n:
            lines.append(f"{_label(wrapped, key)} {_millions(n)} (+{100 * n / base:.1f} %)")
    return lines


def print_trainable_parameters(wrapped) -> None:
    print("\n".join(parameter_lines(wrapped)))


def objective_flops_per_token(wrapped) -> int:
    """Training FLOPs per token the objectives add to the model's own (module doc)."""
    v, d = wrapped.parts.vocab_size, wrapped.parts.hidden_size
    total = 0
    for obj in wrapped.objectives.values():
        c = obj.compute()  # Objective.compute: blocks, projections and extra head applications per token
        total += 6 * (c.block_params + c.head_uses * v * d)
    return total


def floating_point_ops(wrapped, inputs: dict) -> int:
    """FLOPs of one training forward + backward on ``inputs`` (a Trainer batch): the model's own count
    (transformers' ``floating_point_ops``) plus the objectives'."""
    ids = inputs.get("input_ids")
    if ids is None:
        return 0
    model = wrapped.model
    # what Trainer.floating_point_ops counts for a PreTrainedModel: 6 x tokens x non-embedding parameters
    own = 6 * ids.numel() * model.num_parameters(exclude_embeddings=True) if hasattr(model, "num_parameters") else 0
    return int(own) + ids.numel() * objective_flops_per_token(wrapped)


def model_card(wrapped) -> str:
    """README.md for a ``save_pretrained`` folder: the base model, the objectives as written, head sizes, how
    to load it with and without the heads."""
    config = wrapped.model.config
    name = getattr(config, "_name_or_path", "") or "(built from a config)"
    arch = ", ".join(getattr(config, "architectures", None) or [type(wrapped.model).__name__])
    base = _unique_count(wrapped.model.parameters())
    heads = head_parameters(wrapped)
    tags = "".join(f"  - {key}\n" for key in wrapped.objectives)
    rows = "\n".join(f"| `{key}` | `{_spec_text(spec)}` | {_millions(heads[key]) if heads[key] else 'shared'} |"
                     for key, spec in zip(wrapped.objectives, wrapped.specs))
    return (f"---\nlibrary_name: transformers\ntags:\n  - foresight\n{tags}---\n{CARD_MARK}\n\n"
            f"# {type(wrapped.model).__name__} with foresight objectives\n\n"
            f"Base model: `{name}` ({arch}, {_millions(base)} parameters, model type `{config.model_type}`).\n\n"
            f"Trained with these objectives (foresight: next-token prediction and future-aware objectives, TOP, "
            f"MTP, DS-MTP):\n\n| objective | spec | head parameters |\n|---|---|---|\n{rows}\n\n"
            f"The model's weights are in its own format (`AutoModelForCausalLM.from_pretrained` loads it alone, "
            f"without the heads); the heads are in `foresight_heads.safetensors`.\n\n"
            f"```python\nimport foresight\n\n"
            f"wrapped = foresight.ForesightModel.from_pretrained(\"PATH\")  # model and heads\n"
            f"model = wrapped.model  # the plain transformers model\n```\n")


def _spec_text(spec) -> str:
    if isinstance(spec, dict):
        return ", ".join(f"{k}: {v}" for k, v in spec.items())
    return repr(spec)


def user_readme(directory) -> bool:
    """``directory/README.md`` exists and foresight did not write it (the user's own card)."""
    path = Path(directory) / "README.md"
    return path.is_file() and CARD_MARK not in path.read_text(encoding="utf-8", errors="replace")


def write_model_card(wrapped, directory) -> None:
    """Write ``model_card`` to ``directory/README.md``, unless a README there was written by someone else."""
    if user_readme(directory):
        return  # the user's own card: never overwrite it
    atomic_write(Path(directory) / "README.md", model_card(wrapped))
