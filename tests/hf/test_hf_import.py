"""Import: models written by transformers itself (tiny, random, no downloads) become foresight models with the
same logits; unsupported configs fail with one line naming what is supported; the checkpoint loads back."""

from __future__ import annotations

import json

import pytest
import torch

from foresight.errors import ForesightError
from foresight.hf import import_hf, load_pretrained_into, pretrained_model_config, save_imported
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM

from helpers import perturb_norms_and_biases

transformers = pytest.importorskip("transformers")
TOL = 1e-4
IDS = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(7))


def _hf_model(kind: str, folder, seed: int = 0, shard: str | None = None, dtype=None, **kw):
    """Build, randomise (O(1) activations) and save a transformers model; return it in fp32."""
    base = dict(vocab_size=61, hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.3)
    base.update(kw)
    torch.manual_seed(seed)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**base))
    perturb_norms_and_biases(model)
    model.eval()
    kwargs = {"max_shard_size": shard} if shard else {}
    if dtype is None:
        model.save_pretrained(str(folder), **kwargs)
        return model
    # Reload in fp32 rather than casting back: a cast would also round the RoPE buffers transformers keeps.
    model.to(dtype).save_pretrained(str(folder), **kwargs)
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _check_same_logits(model, lm):
    with torch.no_grad():
        theirs = model(input_ids=IDS).logits
        ours = lm.model(IDS)
    assert (ours - theirs).abs().max().item() <= TOL


@pytest.mark.parametrize("kind, kw", [
    ("llama", dict()),
    ("llama", dict(tie_word_embeddings=True, rope_theta=300.0)),
    ("qwen2", dict(tie_word_embeddings=True)),
    ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=4)),
])
def test_import_gives_the_same_logits(tmp_path, kind, kw):
    model = _hf_model(kind, tmp_path / "hf", **kw)
    lm, specs, report = import_hf(tmp_path / "hf")
    assert specs == [{"name": "ntp"}] and report.trunk_tensors > 0
    assert lm.model.cfg.qkv_bias == (kind == "qwen2")
    assert lm.model.cfg.tie_embeddings == kw.get("tie_word_embeddings", False)
    _check_same_logits(model, lm)


# Llama 3.1 RoPE scaling with a short original context, so that the head dim's 5 frequencies fall in all three
# bands: kept (wavelength 2π < 16/4), blended (2π·6.3), divided by the factor (the rest).
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


def test_llama3_rope_scaling_imports_and_exports_losslessly(tmp_path):
    model = _hf_model("llama", tmp_path / "hf", rope_scaling=dict(LLAMA3_ROPE), rope_theta=10000.0)
    lm, _, _ = import_hf(tmp_path / "hf")
    assert lm.model.cfg.rope_scaling == LLAMA3_ROPE
    _check_same_logits(model, lm)
    # The scaling matters here: the same weights with plain RoPE give other logits.
    plain = TrainableLM(ModelConfig(**{**lm.model.cfg.__dict__, "rope_scaling": None}), [{"name": "ntp"}])
    plain.load_state_dict(lm.state_dict())
    with torch.no_grad():
        assert (plain.model(IDS) - lm.model(IDS)).abs().max().item() > 1e-2
    # Export writes the scaling back: plain transformers reloads the same function.
    from foresight.hf import export_lm
    export_lm(lm, [{"name": "ntp"}], tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    _check_same_logits(again, lm)
    # An incomplete llama3 entry is one line naming what is missing.
    folder = _write_config(tmp_path / "m", **dict(LLAMA, rope_scaling={"rope_type": "llama3", "factor": 8.0}))
    with pytest.raises(ForesightError, match="llama3 RoPE scaling lacks low_freq_factor"):
        import_hf(folder)


def test_sharded_bf16_checkpoint_imports_losslessly(tmp_path):
    model = _hf_model("llama", tmp_path / "hf", shard="20KB", dtype=torch.bfloat16)
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    lm, _, _ = import_hf(tmp_path / "hf")
    assert lm.model.embed_tokens.weight.dtype == torch.float32  # bf16 -> fp32 is exact
    _check_same_logits(model, lm)


def test_import_with_new_objectives_then_checkpoint_round_trip(tmp_path):
    model = _hf_model("qwen2", tmp_path / "hf", seed=1)
    specs = [{"name": "ntp"}, {"name": "top", "window": 16}, {"name": "mtp", "n": 3}]
    lm, got_specs, report = import_hf(tmp_path / "hf", specs)
    assert got_specs == specs and report.objectives == {"top": "fresh", "mtp": "fresh"}
    path = save_imported(lm, specs, tmp_path / "imported", tmp_path / "hf")
    back, state = TrainableLM.from_checkpoint(tmp_path / "imported")
    assert state["step"] == 0 and state["config"]["objectives"] == specs
    _check_same_logits(model, back)
    assert path.name == "step_00000000.safetensors" and not (tmp_path / "imported" / "checkpoints").exists()


def test_load_pretrained_into_a_recipe_model(tmp_path):
    model = _hf_model("llama", tmp_path / "hf", seed=2, tie_word_embeddings=True)
    cfg = ModelConfig(vocab_size=61, hidden_size=40, intermediate_size=72, n_layers=2, n_heads=4, n_kv_heads=2,
                      norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=True, max_seq_len=128)
    # A recipe with init_from takes the model shape from the source.
    source_cfg = pretrained_model_config(tmp_path / "hf")
    shape = ("vocab_size", "hidden_size", "n_layers", "n_kv_heads", "tie_embeddings")
    assert {f: getattr(source_cfg, f) for f in shape} == {f: getattr(cfg, f) for f in shape}
    lm = TrainableLM(cfg, [{"name": "ntp"}, {"name": "top", "window": 8}])
    top_before = lm.objectives["top"].head.weight.clone()
    report = load_pretrained_into(lm, tmp_path / "hf")
    assert report.objectives == {"top": "fresh"}
    assert torch.equal(lm.objectives["top"].head.weight, top_before)
    _check_same_logits(model, lm.eval())
    # From a foresight checkpoint too, heads included when they fit.
    save_imported(lm, [{"name": "ntp"}, {"name": "top", "window": 8}], tmp_path / "ck", tmp_path / "hf")
    other = TrainableLM(cfg, [{"name": "ntp"}, {"name": "top", "window": 8}])
    assert load_pretrained_into(other, tmp_path / "ck").objectives == {"top": "loaded"}
    assert torch.equal(other.objectives["top"].head.weight, top_before)
    assert pretrained_model_config(tmp_path / "ck") == lm.model.cfg
    # A model of another shape: one line naming the fields.
    wrong = TrainableLM(ModelConfig(**{**cfg.__dict__, "hidden_size": 48, "intermediate_size": 72}), [{"name": "ntp"}])
    with pytest.raises(ForesightError, match="hidden_size 48 vs 40"):
        load_pretrained_into(wrong, tmp_path / "hf")


def _write_config(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=61, hidden_size=40,
             intermediate_size=72, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("config, message", [
    (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "model_type 'gpt2' .*GPT2LMHeadModel.* not supported"),
    (dict(LLAMA, rope_scaling={"rope_type": "dynamic", "factor": 8.0}), "RoPE scaling 'dynamic'"),
    (dict(LLAMA, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "RoPE scaling 'yarn'"),
    (dict(LLAMA, model_type="qwen2", architectures=["Qwen2ForCausalLM"], use_sliding_window=True), "sliding-window"),
    (dict(LLAMA, attention_bias=True), "attention_bias"),
    (dict(LLAMA, hidden_act="gelu"), "activation 'gelu'"),
    (dict(LLAMA, head_dim=16), "head_dim 16"),
])
def test_unsupported_configs_fail_with_one_line_naming_what_is_supported(tmp_path, config, message):
    folder = _write_config(tmp_path / "m", **config)
    with pytest.raises(ForesightError, match=message) as exc:
        import_hf(folder)
    assert "Llama (LlamaForCausalLM) and Qwen2 (Qwen2ForCausalLM)" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_folder_config_and_weights(tmp_path):
    with pytest.raises(ForesightError, match="not found"):
        import_hf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForesightError, match="no config.json"):
        import_hf(tmp_path / "empty")
    folder = _write_config(tmp_path / "noweights", **LLAMA)
    with pytest.raises(ForesightError, match="no weights"):
        import_hf(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ForesightError, match="cannot read weights"):
        import_hf(folder)
