"""Import accepts Mistral without a sliding window (it is then a Llama) and refuses the rest with one line."""

import pytest
import torch

from foresight.errors import ForesightError
from foresight.hf import import_hf

transformers = pytest.importorskip("transformers")
BASE = dict(vocab_size=53, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3)


def _save(cls, cfg_cls, folder, **kw):
    torch.manual_seed(0)
    model = cls(cfg_cls(**{**BASE, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


def test_mistral_without_sliding_window_imports_with_the_same_logits(tmp_path):
    model = _save(transformers.MistralForCausalLM, transformers.MistralConfig, tmp_path, sliding_window=None)
    lm, specs, _ = import_hf(tmp_path, [{"name": "ntp"}, {"name": "top", "window": 8}])
    ids = torch.randint(0, 53, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (lm.model(ids) - model(ids).logits).abs().max().item() <= 1e-4


def test_mistral_with_sliding_window_and_qwen3_are_refused_with_the_reason(tmp_path):
    _save(transformers.MistralForCausalLM, transformers.MistralConfig, tmp_path / "m", sliding_window=8)
    with pytest.raises(ForesightError, match="sliding-window attention .sliding_window = 8; null is a Llama"):
        import_hf(tmp_path / "m")
    _save(transformers.Qwen3ForCausalLM, transformers.Qwen3Config, tmp_path / "q", head_dim=6)
    with pytest.raises(ForesightError, match="q_norm/k_norm.*foresight.wrap") as e:
        import_hf(tmp_path / "q")
    assert "\n" not in str(e.value)
