"""On the real SmolLM2-135M (when its GGUF is fetched): warm heads start below chance and below random heads,
and its own warm heads draft for it with the output of greedy ``generate``."""

import math
import os

import pytest
import torch

import foresight

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]

TEXTS = ["The quick brown fox jumps over the lazy dog. The dog did not move, and the fox ran on into the woods.",
         "Paris is the capital of France. Berlin is the capital of Germany. Madrid is the capital of Spain."]


@pytest.fixture(scope="module")
def smollm2():
    from smollm2 import gguf_path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    if not path.is_file():
        if os.environ.get("FORESIGHT_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"SmolLM2 GGUF not found at {path}; run scripts/fetch_smollm2")
        pytest.skip(f"SmolLM2 GGUF not fetched ({path}); run scripts/fetch_smollm2")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok


def test_warm_heads_start_below_chance_and_below_random_ones(smollm2):
    model, tok = smollm2
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    chance = math.log(model.config.vocab_size)
    specs = [{"name": "ntp"}, {"name": "mtp", "n": 2}, {"name": "dsmtp", "depth": 1}, {"name": "top", "window": 8}]
    first = {}
    for init in ("random", "warm"):
        torch.manual_seed(0)
        wrapped = foresight.wrap(model, specs, head_init=init)
        with torch.no_grad():
            out = wrapped(enc.input_ids, attention_mask=enc.attention_mask, labels=labels)
        first[init] = {k: float(v) for k, v in {**out.losses, **out.metrics}.items()}
    for key in ("mtp_head1", "dsmtp_depth1", "top"):
        assert first["warm"][key] < chance, (key, first)
        assert first["warm"][key] < first["random"][key] - 0.5, (key, first)


def test_its_warm_mtp_heads_draft_with_greedy_output(smollm2):
    model, tok = smollm2
    wrapped = foresight.wrap(model, [{"name": "ntp"}, {"name": "mtp", "n": 3}])
    prompt = tok(TEXTS[1], return_tensors="pt").input_ids[:, :10]
    tokens, stats = foresight.speculative_generate(wrapped, prompt, max_new_tokens=16)
    assert torch.equal(tokens, model.generate(prompt, max_new_tokens=16, do_sample=False))
    assert stats.tau >= 1.0
