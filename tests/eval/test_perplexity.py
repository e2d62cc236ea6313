"""perplexity(): the next-token loss on fixed windows, for foresight models and any logits-returning model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from foresight.errors import ForesightError
from foresight.eval.perplexity import perplexity
from foresight.model import ModelConfig, Transformer
from foresight.train.lm import TrainableLM

CFG = ModelConfig(vocab_size=50, hidden_size=16, n_layers=2, n_heads=2, intermediate_size=32)
IDS = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(0))


def _reference(model: Transformer, ids: torch.Tensor, t: int, n: int) -> float:
    rows = torch.stack([ids[i * t : i * t + t + 1] for i in range(n)])  # consecutive windows of T + 1
    logits = model(rows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, 50), rows[:, 1:].reshape(-1)).item()


def test_matches_plain_cross_entropy_and_every_model_kind():
    torch.manual_seed(0)
    model = Transformer(CFG)
    got = perplexity(model, IDS, seq_len=20, batch_size=3, max_batches=4)
    ref = _reference(model, IDS, 20, 12)
    assert got["loss"] == pytest.approx(ref, rel=1e-5) and got["ppl"] == pytest.approx(math.exp(ref), rel=1e-5)
    assert got["tokens"] == 12 * 20 and got["batches"] == 4

    class HFLike(torch.nn.Module):  # returns an object with .logits, as transformers models do
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return SimpleNamespace(logits=self.inner(input_ids))

    assert perplexity(HFLike(model), IDS.tolist(), 20, 3, 4)["loss"] == pytest.approx(ref, rel=1e-5)
    lm = TrainableLM(CFG, [{"name": "ntp"}, {"name": "top", "window": 8}])
    lm.model.load_state_dict(model.state_dict())
    assert perplexity(lm, IDS.numpy(), 20, 3, 4)["loss"] == pytest.approx(ref, rel=1e-5)
    assert model.training  # restored


def test_every_window_by_default_and_too_little_data():
    model = Transformer(CFG)
    assert perplexity(model, IDS, 100, 4)["tokens"] == (1000 - 128) // 100 * 100
    with pytest.raises(ForesightError, match="too few"):
        perplexity(model, IDS[:100], 100, 4)
    with pytest.raises(ForesightError, match="cannot read tokens"):
        perplexity(model, {"not": "data"}, 10, 4)
