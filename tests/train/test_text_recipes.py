"""The text recipes parse, and the paper's models have the paper's sizes (built on the meta device: no memory).

What counts (docs/paper-setups.md): the table gives each size's shapes (hidden, layers, heads,
kv heads, MLP width; V = 32000, untied embeddings) and, as the only parameter counts, the TOP head's "+32.8M /
+65.5M / +131.1M". The size names are nominal: the shapes give 373.9M / 1.775B / 6.806B parameters in all, or
341.1M / 1.710B / 6.674B without the input embedding (340M matches the latter, 1.8B and 7B the former, each
rounded). So we check, within 1 %: every model against the count computed here from the table's shapes; the
TOP head against the table's increments; MTP-4 against NTP (the paper's parameter matching: L - 4 shared blocks
+ 4 head blocks = L blocks); DS-MTP-4 against NTP plus its three 2D -> D projections (with bias) and norms.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foresight.config import from_dict
from foresight.tasks.recipe import complete_model, load_recipe
from foresight.tasks.text import TextTaskConfig
from foresight.train.lm import TrainableLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "text"
V = 32000
# size: (hidden, layers, heads, kv heads, MLP, TOP head params from the table)
TABLE = {
    "340m": (1024, 24, 16, 16, 2816, 32.8e6),
    "1.8b": (2048, 32, 32, 32, 5632, 65.5e6),
    "7b": (4096, 30, 32, 8, 14336, 131.1e6),
}
TOTALS = {"340m": 373_867_520, "1.8b": 1_775_372_288, "7b": 6_805_508_096}  # the formula below, written out


def table_count(d: int, layers: int, heads: int, kv: int, mlp: int) -> int:
    """Llama parameters from the table's shapes: embedding + head (untied), blocks, final norm."""
    kv_dim = kv * d // heads
    block = d * d * 2 + d * kv_dim * 2 + 3 * d * mlp + 2 * d  # q, o; k, v; SwiGLU; two RMSNorms
    return 2 * V * d + layers * block + d


def _models(name: str) -> dict[str, TrainableLM]:
    recipe = load_recipe(str(CONFIGS / f"{name}.yaml"), [])
    text = from_dict(TextTaskConfig, recipe.section, "text")
    models = {}
    for run, specs in recipe.runs.items():
        cfg = complete_model(recipe.run_models[run], max_seq_len=text.seq_len)
        with torch.device("meta"):
            models[run] = TrainableLM(cfg, specs)
    return models


def _total(lm: TrainableLM) -> int:
    return sum(p.numel() for p in lm.parameters())


def test_every_text_recipe_parses_and_builds():
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert names == ["1.8b", "340m", "7b", "continued_smollm2", "memory", "tiny"]
    tiny = load_recipe(str(CONFIGS / "tiny.yaml"), [])
    assert set(tiny.runs) == {"ntp", "top"} and tiny.train.device == "cpu"
    # Continued training of SmolLM2 (issue 14): the last 2 blocks + heads, every objective of the comparison,
    # device auto so the same file runs on a GPU.
    cont = load_recipe(str(CONFIGS / "continued_smollm2.yaml"), [])
    assert cont.section["init_from"] and cont.train.freeze == "trunk" and cont.train.unfreeze_blocks == 2
    assert set(cont.runs) == {"ntp", "top", "top_w0.5", "top_w0.25", "mtp2", "dsmtp1"}
    assert [cont.runs[r][1].written["weight"] for r in ("top", "top_w0.5", "top_w0.25")] == [1.0, 0.5, 0.25]
    assert cont.train.device == "auto"
    for name in names:
        recipe = load_recipe(str(CONFIGS / f"{name}.yaml"), [])
        assert recipe.task == "text"
        from_dict(TextTaskConfig, recipe.section, "text")


def test_memory_recipe_matches_activated_parameters_and_flops():
    """Issue 16: dense, moe and ultramem at matched activated parameters and FLOPs per token (within 3 %), the
    sparse ones with more parameters in all."""
    from foresight.model import ModelConfig
    from foresight.train.flops import activated_parameters, flops_per_token

    recipe = load_recipe(str(CONFIGS / "memory.yaml"), [])
    assert list(recipe.runs) == ["dense", "moe", "ultramem"]
    sizes = {}
    for run, specs in recipe.runs.items():
        cfg = complete_model(recipe.run_models[run], vocab_size=4096, max_seq_len=128)
        assert isinstance(cfg, ModelConfig) and cfg.ffn == run
        with torch.device("meta"):
            lm = TrainableLM(cfg, specs)
        sizes[run] = (lm.model.num_parameters(), activated_parameters(lm.model), flops_per_token(lm, 128))
    _, active, flops = sizes["dense"]
    for run in ("moe", "ultramem"):
        assert sizes[run][0] > active * 1.3
        assert abs(sizes[run][1] / active - 1) < 0.03 and abs(sizes[run][2] / flops - 1) < 0.03, (run, sizes)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_paper_models_match_the_table(name):
    d, layers, heads, kv, mlp, top_head = TABLE[name]
    models = _models(name)
    assert set(models) == {"ntp", "top", "mtp4", "dsmtp4"}
    ntp = _total(models["ntp"])
    assert table_count(d, layers, heads, kv, mlp) == TOTALS[name]
    assert ntp == pytest.approx(TOTALS[name], rel=0.01)
    # TOP: the same inference model, plus one V x D head (the table's "+" row).
    assert models["top"].model.num_parameters() == ntp
    assert _total(models["top"]) - ntp == pytest.approx(top_head, rel=0.01)
    # MTP-4: L - 3 blocks on the NTP path (the last one is head 0) + 3 more head blocks = NTP's size.
    mtp = models["mtp4"]
    assert len(mtp.model.layers) == layers - 3 and len(mtp.objectives["mtp"].heads) == 3
    assert _total(mtp) == pytest.approx(ntp, rel=0.01)
    # DS-MTP-4 (the TOP authors' baseline): L - 3 blocks + 3 sequential modules, each with a 2D -> D projection.
    ds = models["dsmtp4"]
    assert len(ds.model.layers) == layers - 3 and len(ds.objectives["dsmtp"].layers) == 3
    projections = 3 * (2 * d * d + d + 2 * d)  # eh_proj with bias, hnorm, enorm
    assert _total(ds) == pytest.approx(ntp + projections, rel=0.01)
    cfg = models["ntp"].model.cfg
    want = (V, 0.006, 1e-6, 1e4, False)
    assert (cfg.vocab_size, cfg.init_std, cfg.norm_eps, cfg.rope_theta, cfg.tie_embeddings) == want


@pytest.mark.parametrize("name", sorted(TABLE))
def test_paper_training_settings(name):
    recipe = load_recipe(str(CONFIGS / f"{name}.yaml"), [])
    t = recipe.train
    settings = {"340m": (3e-4, 1000, 100_000), "1.8b": (2e-4, 2000, 200_000), "7b": (1.2e-4, 2000, 200_000)}
    lr, warmup, steps = settings[name]
    assert (t.lr, t.warmup_steps, t.steps, t.batch_size) == (lr, warmup, steps, 128)
    assert t.min_lr == pytest.approx(0.1 * lr) and t.eps == 1e-15 and t.betas == [0.9, 0.95]
    assert t.weight_decay == 0.1 and t.decay_all and t.grad_clip == 1.0
    assert recipe.section["seq_len"] == 4096
    assert recipe.runs["top"][1].written == {"name": "top", "window": 4096}
    assert steps * 128 * 4096 == pytest.approx({"340m": 52.4e9, "1.8b": 104.9e9, "7b": 104.9e9}[name], rel=0.01)
