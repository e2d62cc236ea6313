"""What ``foresight.wrap`` checks up front (``foresight.wrapper.checks``): a GGUF-loaded model is made saveable
(or refused in one line) before any training step, and config objects are accepted wherever dicts are."""

import json
import os

import pytest
import torch

import foresight
from foresight.errors import ForesightError
from foresight.hf.heads import HEADS_FILE
from foresight.objectives import as_written, parse_objectives
from foresight.wrapper import ForesightModel, wrap

from tiny_models import VOCAB, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _gguf_model(tmp_path, quant: str = "F32"):
    """A transformers Llama loaded from a tiny GGUF file, as a user loads one: marked quantized with gguf."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from gguf_helpers import hf_model, write_gguf

    write_gguf(tmp_path / "tiny.gguf", hf_model("llama", seed=4), quant=quant)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    assert model.hf_quantizer is not None and not model.hf_quantizer.is_serializable()  # what the check is for
    return model


def _one_step(wrapped, ids):
    opt = torch.optim.SGD(wrapped.parameters(), lr=1e-3)
    wrapped(ids, labels=ids).loss.backward()
    opt.step()


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_gguf_model_is_made_saveable_at_wrap_and_round_trips(tmp_path, quant):
    model = _gguf_model(tmp_path, quant)
    wrapped = wrap(model, [{"name": "ntp"}, {"name": "top", "window": 8}])
    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    ids = torch.randint(0, 260, (2, 12), generator=torch.Generator().manual_seed(0))
    _one_step(wrapped, ids)
    wrapped.save_pretrained(tmp_path / "saved")  # failed with "quantized with gguf and is not serializable"
    back = ForesightModel.from_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    with torch.no_grad():
        a, b = wrapped(ids, labels=ids), back(ids, labels=ids)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(a.losses[k], b.losses[k]) for k in a.losses)


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_from_its_gguf_file_wraps_saves_and_reloads(tmp_path):
    """The case of the issue: SmolLM2-135M loaded with gguf_file= (Q4_1, dequantised by transformers) trained,
    then failed at its first checkpoint. Now wrap makes it saveable, and the saved folder reloads exactly."""
    pytest.importorskip("gguf")
    from smollm2 import gguf_path
    from transformers import AutoModelForCausalLM

    path = gguf_path()
    if not path.is_file():
        if os.environ.get("FORESIGHT_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"SmolLM2 GGUF not found at {path}; run scripts/fetch_smollm2")
        pytest.skip(f"SmolLM2 GGUF not fetched ({path}); run scripts/fetch_smollm2")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    assert not model.hf_quantizer.is_serializable()
    wrapped = wrap(model, [foresight.NTPConfig()])
    ids = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    wrapped.save_pretrained(tmp_path)
    back = ForesightModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(wrapped(ids).logits, back(ids).logits)


def _error_line(excinfo, *fragments):
    text = str(excinfo.value)
    assert "\n" not in text and all(f in text for f in fragments), text


def test_packed_gguf_weights_are_refused_in_one_line_with_the_fix(tmp_path):
    from transformers.integrations.gguf.utils import GgufLinear

    model = _gguf_model(tmp_path, "Q8_0")
    layer = model.model.layers[0].mlp
    layer.up_proj = GgufLinear(layer.up_proj.in_features, layer.up_proj.out_features, ggml_type=8)  # Q8_0 blocks
    with pytest.raises(ForesightError) as e:
        wrap(model, [{"name": "ntp"}])
    _error_line(e, "model.layers.0.mlp.up_proj.weight", "GgufConfig(dequantize=True)")


def test_other_unsaveable_quantization_is_refused_in_one_line():
    class Unsaveable:  # the parts of an HfQuantizer that transformers' save_pretrained reads
        quantization_config = type("Cfg", (), {"quant_method": "fake4bit"})()

        def is_serializable(self):
            return False

    model = tiny_model("llama")
    model.hf_quantizer = Unsaveable()
    with pytest.raises(ForesightError) as e:
        wrap(model, [{"name": "ntp"}])
    _error_line(e, "quantized with fake4bit", "model.dequantize()")


CONFIGS = [foresight.NTPConfig(), foresight.TOPConfig(window=8, weight=0.5), foresight.MTPConfig(n=2),
           foresight.DSMTPConfig(preset="deepseek_v3", depth=1, weight=0.3)]
DICTS = [{"name": "ntp"}, {"name": "top", "window": 8, "weight": 0.5}, {"name": "mtp", "n": 2},
         {"name": "dsmtp", "preset": "deepseek_v3", "depth": 1, "weight": 0.3}]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_config_objects_wrap_like_dicts_and_are_stored_as_json(tmp_path, arch):
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    from_configs = wrap(tiny_model(arch), CONFIGS)
    torch.manual_seed(5)
    from_dicts = wrap(tiny_model(arch), DICTS)
    with torch.no_grad():
        a, b = from_configs(ids, labels=ids), from_dicts(ids, labels=ids)
    assert list(a.losses) == list(b.losses) == ["ntp", "top", "mtp", "dsmtp"]
    assert all(torch.equal(a.losses[k], b.losses[k]) for k in a.losses) and torch.equal(a.loss, b.loss)
    # stored as the written JSON form (every field), which loads back to the same objectives and weights
    assert all(isinstance(s, dict) for s in from_configs.specs)
    assert from_configs.specs[1] == {"name": "top", "weight": 0.5, "window": 8, "scores": "exact",
                                     "normalize": "valid", "ignore_index": -100}
    from_configs.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / HEADS_FILE), "pt") as f:
        assert json.loads(f.metadata()["objectives"]) == from_configs.specs
    back = ForesightModel.from_pretrained(tmp_path)
    with torch.no_grad():
        c = back(ids, labels=ids)
    assert all(torch.equal(a.losses[k], c.losses[k]) for k in a.losses)


def test_parse_and_trainable_lm_accept_config_objects():
    from foresight.model import ModelConfig
    from foresight.train.lm import TrainableLM

    parsed = parse_objectives(CONFIGS)
    assert [p.name for p in parsed] == ["ntp", "top", "mtp", "dsmtp"]
    assert [p.config for p in parsed] == [p.config for p in parse_objectives(DICTS)]
    assert json.loads(json.dumps(as_written(CONFIGS))) == as_written(parsed)  # JSON as checkpoints store it
    assert wrap(tiny_model("llama"), parsed).specs == as_written(parsed)  # parsed entries wrap too
    assert as_written([foresight.DSMTPConfig(depth=2)])[0]["depth"] == 2
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=16, n_layers=2, n_heads=4, intermediate_size=24, max_seq_len=16)
    lm = TrainableLM(cfg, [foresight.NTPConfig(), foresight.TOPConfig(window=4)])
    assert list(lm.objectives) == ["ntp", "top"] and lm.objectives["top"].cfg.window == 4
    for bad in (3, object()):
        with pytest.raises(ForesightError) as e:
            parse_objectives([bad])
        _error_line(e, "a mapping with a 'name'", "TOPConfig", type(bad).__name__)
