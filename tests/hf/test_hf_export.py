"""Export: a foresight checkpoint -> a plain transformers folder with the same logits, and its heads layout.

Every model is tiny, random and built here (no downloads). Weights are drawn with O(1) activations so that
a wrong mapping (a transposed matrix, a swapped half, a missing bias) shows up far above the tolerance.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from foresight.hf import export_lm, import_hf
from foresight.hf.heads import HEADS_FILE
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM

from helpers import randomize_weights

transformers = pytest.importorskip("transformers")
TOL = 1e-4  # the bound on max |logits difference| in fp32; we observe 0 to ~1e-6


def _lm(specs, seed=0, **kw) -> TrainableLM:
    base = dict(vocab_size=53, hidden_size=48, n_layers=3, n_heads=6, n_kv_heads=2, intermediate_size=80,
                rope_theta=500.0, norm_eps=1e-5, max_seq_len=32)
    base.update(kw)
    torch.manual_seed(seed)
    lm = TrainableLM(ModelConfig(**base), specs)
    randomize_weights(lm, seed + 1)
    return lm.eval()


def _hf_logits(folder, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).float().eval()
    with torch.no_grad():
        return model, model(input_ids=ids).logits


IDS = torch.randint(0, 53, (2, 13), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kw, arch", [
    (dict(), "LlamaForCausalLM"),
    (dict(tie_embeddings=True), "LlamaForCausalLM"),
    (dict(qkv_bias=True, tie_embeddings=True), "Qwen2ForCausalLM"),
    (dict(n_kv_heads=6, rope_theta=10000.0), "LlamaForCausalLM"),
])
def test_plain_transformers_load_gives_the_same_logits(tmp_path, kw, arch):
    lm = _lm([{"name": "ntp"}], **kw)
    report = export_lm(lm, [{"name": "ntp"}], tmp_path / "hf")
    assert report.architecture == arch
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [arch] and "auto_map" not in config  # no custom code
    assert (tmp_path / "hf" / "generation_config.json").is_file()
    model, theirs = _hf_logits(tmp_path / "hf", IDS)
    assert type(model).__name__ == arch
    with torch.no_grad():
        ours = lm.model(IDS)
    assert (ours - theirs).abs().max().item() <= TOL
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not lm.model.cfg.tie_embeddings)


def test_transformers_greedy_generation_matches_ours(tmp_path):
    from foresight.generate import generate

    lm = _lm([{"name": "ntp"}], seed=3)
    export_lm(lm, [{"name": "ntp"}], tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).float().eval()
    prompt = IDS[:1, :5]
    with torch.no_grad():
        theirs = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=9, do_sample=False,
                                pad_token_id=0, eos_token_id=None)
    assert torch.equal(generate(lm.model, prompt, 9), theirs)


def test_mtp_model_exports_head_zero_only_and_heads_round_trip(tmp_path):
    specs = [{"name": "ntp"}, {"name": "top", "window": 8}, {"name": "mtp", "n": 3}, {"name": "dsmtp", "depth": 2}]
    lm = _lm(specs, seed=1)
    report = export_lm(lm, specs, tmp_path / "hf", with_heads=True)
    assert set(report.heads) == {"top", "mtp", "dsmtp"}
    # The trunk still loads as a 3-layer Llama with the same logits (the extra layers are ignored).
    _, theirs = _hf_logits(tmp_path / "hf", IDS)
    with torch.no_grad():
        assert (lm.model(IDS) - theirs).abs().max().item() <= TOL
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["num_nextn_predict_layers"] == 2
    assert config["foresight_dsmtp"]["trained_concat"] == "hidden_first"
    with safe_open(str(tmp_path / "hf" / HEADS_FILE), framework="pt") as f:
        assert json.loads(f.metadata()["objectives"]) == specs
        assert "top.head.weight" in f.keys() and "mtp.heads.1.mlp.down_proj.weight" in f.keys()
    # Import restores every head bit for bit.
    back, back_specs, load = import_hf(tmp_path / "hf")
    assert back_specs == specs and set(load.objectives.values()) == {"loaded"}
    ours, theirs = lm.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


@pytest.mark.parametrize("preset", ["top_paper", "deepseek_v3"])
def test_dsmtp_deepseek_layout_means_what_deepseek_means(tmp_path, preset):
    """Recompute module 1 from the exported tensors with DeepSeek-V3's formula (§2.2):
    h' = eh_proj([enorm(emb(x[t+1])); hnorm(h)]) -> block -> shared_head.norm -> shared_head.head."""
    specs = [{"name": "ntp"}, {"name": "dsmtp", "preset": preset, "depth": 1}]
    lm = _lm(specs, seed=2)
    export_lm(lm, specs, tmp_path / "hf", with_heads=True)
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    p, cfg = "model.layers.3.", lm.model.cfg
    assert {p + n for n in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                            "shared_head.head.weight", "embed_tokens.weight", "self_attn.q_proj.weight")} <= set(t)
    ids = IDS[:, :8]
    with torch.no_grad():
        out = lm.model.trunk(ids)
        module = lm.objectives["dsmtp"].layers[0]
        h = out.hidden if lm.objectives["dsmtp"].cfg.h0 == "post_norm" else out.final  # (B, T, D)

        def rms(x, w):
            return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)

        nxt = torch.roll(ids, -1, dims=1)  # x[t+1] (the last column is not compared)
        emb = t[p + "embed_tokens.weight"][nxt]
        joined = torch.cat([rms(emb, t[p + "enorm.weight"]), rms(h, t[p + "hnorm.weight"])], dim=-1)
        x = joined @ t[p + "eh_proj.weight"].T + (t[p + "eh_proj.bias"] if p + "eh_proj.bias" in t else 0)
        x = module.block(x, out.cos, out.sin)  # the block's own weights were checked by the round trip
        want = rms(x, t[p + "shared_head.norm.weight"]) @ t[p + "shared_head.head.weight"].T
        # Foresight's own computation of the same module.
        own = module(h, lm.model.embed_tokens(nxt), out.cos, out.sin)
        norm = module.norm if module.norm is not None else lm.model.norm
        got = lm.model.lm_head(norm(own))
    assert (want[:, :-1] - got[:, :-1]).abs().max().item() < 1e-4


def test_export_refuses_to_overwrite_and_checks_dtype(tmp_path):
    from foresight.errors import ForesightError

    lm = _lm([{"name": "ntp"}])
    export_lm(lm, [{"name": "ntp"}], tmp_path / "hf")
    with pytest.raises(ForesightError, match="--force"):
        export_lm(lm, [{"name": "ntp"}], tmp_path / "hf")
    with pytest.raises(ForesightError, match="--dtype"):
        export_lm(lm, [{"name": "ntp"}], tmp_path / "hf2", dtype="int8")
    report = export_lm(lm, [{"name": "ntp"}], tmp_path / "hf", force=True, dtype="bfloat16")
    assert any("tokenizer" in w for w in report.warnings)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"


def test_tokenizer_files_travel_and_load_with_autotokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("the cat sat on a mat".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    src = tmp_path / "tok"
    src.mkdir()
    tok.save(str(src / "tokenizer.json"))
    lm = _lm([{"name": "ntp"}], vocab_size=len(vocab))
    report = export_lm(lm, [{"name": "ntp"}], tmp_path / "hf", tokenizer=src)
    assert "tokenizer.json" in report.files and not report.warnings
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok("the cat sat", add_special_tokens=False)["input_ids"] == [3, 4, 5]
    assert hf_tok.eos_token_id == 2
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1
