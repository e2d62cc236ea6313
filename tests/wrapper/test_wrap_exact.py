"""foresight.wrap against the models' own loss and against definitions written here, on six architectures."""

import pytest
import torch
import torch.nn.functional as F

from foresight.errors import ForesightError
from foresight.wrapper import wrap

from tiny_models import ARCHS, VOCAB, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed=1, b=3, t=11):
    """input_ids (B, T), a left-padded row and a right-padded row, labels with padding (and a prompt) at -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    ids[0, 4] = ids[0, 6] = ids[0, 7]  # repeats, so TOP's first-occurrence rule matters
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, -2:] = 0  # right padding
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :2] = -100  # a masked prompt: not a target, still an input
    return ids, mask, labels


def _top_reference(hidden, w_top, labels, mask, window):
    """TOP by its definition (TOP paper §3): for position t, every distinct id among labels[t+1 .. t+window]
    (not -100, not padding) scores -d at its first offset d; target softmax(scores); loss = cross-entropy of
    softmax(h_t W^T) against it. Mean over positions that are not padding and have a target."""
    b, t, _ = hidden.shape
    total, count = 0.0, 0
    for i in range(b):
        for p in range(t):
            if mask[i, p] == 0:
                continue
            first = {}
            for d in range(window):
                q = p + 1 + d
                if q >= t:
                    break
                tok = int(labels[i, q])
                if tok != -100 and mask[i, q] == 1 and tok not in first:
                    first[tok] = d
            if not first:
                continue
            ids = torch.tensor(list(first))
            target = torch.softmax(-torch.tensor(list(first.values()), dtype=torch.float64), 0)
            logp = torch.log_softmax((hidden[i, p] @ w_top.T).double(), 0)
            total = total - (target * logp[ids]).sum()
            count += 1
    return total / count


def _mtp_reference(logits, labels, mask, n):
    """Σ over heads k = 1..n-1 of the cross-entropy of logits (B, T, V) at non-padded t against labels[t+1+k]
    (not padding, not -100), divided by the number of non-padded positions with a next-token label."""
    b, t, _ = logits.shape
    target = labels.masked_fill(mask == 0, -100)
    total, count = 0.0, 0
    for i in range(b):
        for p in range(t - 1):
            if mask[i, p] == 0:
                continue
            count += int(target[i, p + 1] != -100)
            for k in range(1, n):
                if p + 1 + k < t and target[i, p + 1 + k] != -100:
                    total = total + F.cross_entropy(logits[i, p], target[i, p + 1 + k])
    return total / count


@pytest.mark.parametrize("arch", ARCHS)
def test_ntp_top_mtp_equal_references(arch):
    model = tiny_model(arch)
    ids, mask, labels = _batch()
    wrapped = wrap(model, [{"name": "ntp"}, {"name": "top", "window": 5, "weight": 0.5}, {"name": "mtp", "n": 3}])
    # MTP heads that are copies of the last layer compute exactly the model's own final hidden state, so head k's
    # loss is the model's logits scored against the labels k tokens further on.
    for head in wrapped.heads["mtp"]:
        head.load_state_dict(model.base_model.layers[-1].state_dict())
    with torch.no_grad():
        out = wrapped(ids, attention_mask=mask, labels=labels)
        own = model(ids, attention_mask=mask, labels=labels)
        hidden = model.base_model(ids, attention_mask=mask).last_hidden_state  # (B, T, D) after the final norm

    assert wrapped.heads["top"].weight.shape == (VOCAB, 16)
    torch.testing.assert_close(out.logits, own.logits, rtol=0, atol=0)  # the same computation
    torch.testing.assert_close(out.losses["ntp"], own.loss, rtol=1e-6, atol=1e-6)  # soft cap, shift, -100
    top = _top_reference(hidden, wrapped.heads["top"].weight, labels, mask, window=5)
    torch.testing.assert_close(out.losses["top"].double(), top, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses["mtp"], _mtp_reference(own.logits, labels, mask, n=3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.losses["ntp"] + 0.5 * out.losses["top"] + out.losses["mtp"])


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_forward_backward_gives_the_gradients_of_forward(arch):
    """Per-head backward (Meta MTP §2) accumulates the gradients of one backward of the weighted sum."""
    model = tiny_model(arch)
    ids, mask, labels = _batch()
    specs = [{"name": "ntp"}, {"name": "top", "window": 4}, {"name": "mtp", "n": 3, "weight": 0.7},
             {"name": "dsmtp", "depth": 2}]
    wrapped = wrap(model, specs)
    out = wrapped(ids, attention_mask=mask, labels=labels)
    (0.25 * out.loss).backward()
    want = {n: p.grad.clone() for n, p in wrapped.named_parameters() if p.grad is not None}
    wrapped.zero_grad(set_to_none=True)
    got_out = wrapped.forward_backward(ids, labels, mask, scale=0.25)
    got = {n: p.grad for n, p in wrapped.named_parameters() if p.grad is not None}
    assert set(got) == set(want) and any(n.startswith("objectives.dsmtp.layers.1") for n in got)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6, msg=n)
    for k in out.losses:
        torch.testing.assert_close(got_out.losses[k], out.losses[k].detach(), rtol=1e-6, atol=1e-6)


def test_num_items_in_batch_divides_every_objective():
    model = tiny_model("qwen2")
    ids, mask, labels = _batch()
    wrapped = wrap(model, [{"name": "ntp"}, {"name": "top", "window": 3}], return_logits=False)
    with torch.no_grad():
        plain = wrapped(ids, attention_mask=mask, labels=labels)
        own = model(ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(40))
        scaled = wrapped(ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(40))
    assert scaled.logits is None
    torch.testing.assert_close(scaled.losses["ntp"], own.loss, rtol=1e-6, atol=1e-6)
    n_top = wrapped.objectives["top"].count(wrapped._batches(ids, mask, labels)[1])
    torch.testing.assert_close(scaled.losses["top"], plain.losses["top"] * n_top / 40, rtol=1e-6, atol=1e-6)


def test_weight_schedule_follows_set_step():
    wrapped = wrap(tiny_model("llama"),
                   [{"name": "ntp"},
                    {"name": "top", "window": 3, "weight": [[{"frac": 0}, 1.0], [{"frac": 0.5}, 0.1]]}])
    with pytest.raises(ForesightError, match="set_step"):
        wrapped.current_weights()
    wrapped.set_step(4, total_steps=10)
    assert wrapped.current_weights() == {"ntp": 1.0, "top": 1.0}
    wrapped.set_step(5, total_steps=10)
    assert wrapped.current_weights() == {"ntp": 1.0, "top": 0.1}


def test_unsupported_models_get_one_line():
    from transformers import BertConfig, BertForMaskedLM, BertModel

    cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    for model in (BertForMaskedLM(cfg), BertModel(cfg), torch.nn.Linear(2, 2)):
        with pytest.raises(ForesightError) as e:
            wrap(model, [{"name": "top", "window": 4}])
        assert "\n" not in str(e.value) and "Llama" in str(e.value)
    with pytest.raises(ForesightError, match="unknown objective"):
        wrap(tiny_model("llama"), [{"name": "nope"}])
    with pytest.raises(ForesightError, match="non-empty list"):
        wrap(tiny_model("llama"), [])
