"""Self-speculative decoding with a wrapped model's own heads (``foresight.speculative_generate(wrapped, ...)``):
the output equals ``model.generate(do_sample=False)``, the heads' drafts are what a full forward of the heads
predicts, and the KV cache survives every accepted length (oracle drafts)."""

import pytest
import torch

import foresight
from foresight.errors import ForesightError
from foresight.generate.wrapped import speculative_generate_wrapped

from tiny_models import _COMMON, _EXTRA, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Gemma 2: sliding window 3, so prompts of 7 cross it; with 2 layers its last layer is global, with 3
# ("gemma2_sliding") a sliding-window one, whose mask the drafting heads must rebuild.
ARCHS = ["llama", "qwen2", "gemma2", "gemma2_sliding"]


def _model(arch):
    if arch != "gemma2_sliding":
        return tiny_model(arch)
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("gemma2", **{**_COMMON, "num_hidden_layers": 3}, **_EXTRA["gemma2"])
    assert cfg.layer_types[-1] == "sliding_attention"
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
HEADS = {"mtp": {"name": "mtp", "n": 3}, "dsmtp": {"name": "dsmtp", "depth": 2}, "top": {"name": "top", "window": 4}}


def _prompts(b=2, p=7, seed=1):
    return torch.randint(3, 37, (b, p), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", list(HEADS))
def test_equals_greedy_generate(arch, kind):
    model = _model(arch)
    wrapped = foresight.wrap(model, [{"name": "ntp"}, HEADS[kind]])
    ids = _prompts()
    out, stats = foresight.speculative_generate(wrapped, ids, max_new_tokens=12)
    ref = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, ref)
    assert stats.steps > 0 and 1.0 <= stats.tau <= stats.n_draft + 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["mtp", "dsmtp"])
def test_drafts_are_the_heads_full_forward_predictions(arch, kind):
    """The drafting path (no head cache, masks and RoPE rebuilt for the prefix) gives the tokens the training
    path's heads predict on the same prefix."""
    torch.manual_seed(0)
    model = _model(arch)
    wrapped = foresight.wrap(model, [{"name": "ntp"}, HEADS[kind]])
    obj = wrapped.objectives[kind]
    seq = _prompts(b=1, p=8)  # x[0..7]: positions 0..6 committed, x[7] pending
    with torch.no_grad():
        out = wrapped.parts.trunk(seq)  # the training pass over all 8 positions
        committed = {k: getattr(out, k)[:, :7] for k in ("hidden", "last_input", "final")}
        drafts = obj.draft(committed, seq, wrapped.parts, None)
        parts = wrapped.parts
        if kind == "mtp":
            want = [parts.logits(parts.norm(parts.run_layer(h, out.last_input, out.layer_kwargs)))[0, 6].argmax()
                    for h in obj.heads]
        else:  # module 1 over the true sequence: at position 6 it reads x[7] (the pending token) as drafting does
            h = out.hidden if obj.cfg.h0 == "post_norm" else out.final
            h1 = obj._step(1, h, out, None, parts)
            want = [parts.logits(parts.norm(h1))[0, 6].argmax()]
    assert drafts[0, : len(want)].tolist() == [int(w) for w in want]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cached", [False, True], ids=["prefix", "cached"])
@pytest.mark.parametrize("right", [0, 1, 2])
def test_oracle_drafts_keep_the_caches_exact(arch, right, cached, monkeypatch):
    """Drafts with the first ``right`` greedy tokens correct, the rest wrong: every accepted length, hence every
    crop of the model's KV cache (sliding-window layers included) and of the MTP heads' own caches, still gives
    the greedy output, and at every step the heads' cached drafts are those of the heads run over the whole
    committed prefix."""
    model = _model(arch)
    wrapped = foresight.wrap(model, [{"name": "ntp"}, HEADS["mtp"]])
    obj = wrapped.objectives["mtp"]
    ids = _prompts(b=1, p=5)
    ref = model.generate(ids, max_new_tokens=14, do_sample=False)[0]
    seen = []  # the heads' own drafts at each step

    def oracle(n):  # n: the pending token's position
        true = ref[n + 1 : n + 3].tolist()  # MTP-3: two drafts, x[N+1] and x[N+2]
        true += [3] * (2 - len(true))
        return torch.tensor([[t if i < right else (t + 1) % 37 for i, t in enumerate(true)]])

    if cached:
        real = obj.cached_drafter

        class Recording:
            def __init__(self, parts, n_draft):
                self.inner, self.n = real(parts, n_draft), 0

            def observe(self, last_input, layer_kwargs):
                self.inner.observe(last_input, layer_kwargs)
                self.n += last_input.shape[1]

            def crop(self, remove):
                self.inner.crop(remove)
                self.n -= remove

            def propose(self, index):
                seen.append(self.inner.propose(index).tolist())
                return oracle(self.n)

        monkeypatch.setattr(obj, "cached_drafter", Recording)
    else:
        real_draft = obj.draft

        def recording(committed, seq, parts, n_draft):
            seen.append(real_draft(committed, seq, parts, n_draft).tolist())
            return oracle(seq.shape[1] - 1)

        monkeypatch.setattr(obj, "cached_drafter", None)
        monkeypatch.setattr(obj, "draft", recording)
    out, stats = foresight.speculative_generate(wrapped, ids, max_new_tokens=14)
    assert torch.equal(out[0], ref)
    assert stats.tau > 1 if right else stats.tau == 1
    with torch.no_grad():  # the heads over the whole prefix, at the last committed position of each step
        want = []
        n = 5
        for _ in seen:
            full = wrapped.parts.trunk(ref[None, :n])
            committed = {k: getattr(full, k) for k in ("hidden", "last_input", "final")}
            want.append(real_draft(committed, ref[None, : n + 1], wrapped.parts, None).tolist()
                        if not cached else obj.draft(committed, ref[None, : n + 1], wrapped.parts, None).tolist())
            n += 1 + min(right, 2)
    assert seen == want


def test_eos_stops_rows_and_pads_like_generate():
    model = tiny_model("llama")
    wrapped = foresight.wrap(model, [{"name": "ntp"}, HEADS["mtp"]])
    ids = _prompts(b=3, p=4, seed=5)
    free = model.generate(ids, max_new_tokens=10, do_sample=False)
    eos = int(free[0, 6])  # a token row 0 produces early
    ref = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=0)
    out, _ = speculative_generate_wrapped(wrapped, ids, 10, eos_id=eos, pad_id=0)
    assert torch.equal(out, ref)


def test_refusals_are_one_line():
    model = tiny_model("llama")
    with pytest.raises(ForesightError, match="no heads that can draft"):
        foresight.speculative_generate(foresight.wrap(model, [{"name": "ntp"}]), _prompts(), 4)
    wrapped = foresight.wrap(model, [{"name": "ntp"}, HEADS["top"]])
    with pytest.raises(ForesightError, match="no mtp heads to draft with"):
        foresight.speculative_generate(wrapped, _prompts(), 4, drafter="mtp")
    with pytest.raises(ForesightError, match="max_new_tokens"):
        foresight.speculative_generate(wrapped, _prompts(), -1)
