"""FSP-BCE (future summary prediction, bag-of-tokens form) against a written-out dense reference on odd shapes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from foresight.batch import Batch
from foresight.cli.main import main
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.objectives import FSPConfig, objective_label
from foresight.objectives.base import IGNORE_INDEX
from foresight.objectives.fsp import fsp_bags, fsp_bce_rows
from foresight.train.lm import TrainableLM

ROOT = Path(__file__).resolve().parents[2]


def _dense_bags(tokens, seq_len, window, vocab, ignore_index=IGNORE_INDEX, horizon=None):
    """(B, T, V) multi-hot: a[b, t, v] = 1 iff v occurs in tokens[b, t+2 .. t+1+window] (plain loops)."""
    b, length = tokens.shape
    bags = torch.zeros(b, seq_len, vocab)
    for i in range(b):
        for t in range(seq_len):
            for d in range(1, window + 1):
                j = t + 1 + d
                if j >= length:
                    break
                if horizon is not None and d > horizon[i, t]:
                    break
                v = int(tokens[i, j])
                if v >= 0 and v != ignore_index:
                    bags[i, t, v] = 1.0
    return bags


@pytest.mark.parametrize("window", [1, 3, 7])
def test_bags_match_the_dense_multi_hot(window):
    g = torch.Generator().manual_seed(window)
    tokens = torch.randint(0, 5, (3, 13), generator=g)  # small vocabulary: many repeats
    tokens[0, 4] = IGNORE_INDEX
    tokens[2, 9] = -1
    horizon = torch.randint(0, 6, (3, 11), generator=g)
    for h in (None, horizon):
        ids, keep = fsp_bags(tokens, 11, window, horizon=h)
        sparse = torch.zeros(3, 11, 5)
        sparse.scatter_add_(-1, ids, keep.float())
        assert torch.equal(sparse, _dense_bags(tokens, 11, window, 5, horizon=h))  # each id once


def test_bce_rows_equal_torch_bce_summed_over_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    n, d, v, window = 37, 6, 11, 5
    tokens = torch.randint(0, v, (1, n + window + 1), generator=g)
    ids, keep = fsp_bags(tokens, n, window)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, d, generator=g, dtype=torch.float64, requires_grad=True)
    got = fsp_bce_rows(hidden, weight, ids[0], keep[0], chunk=8)  # several chunks, one short
    bags = _dense_bags(tokens, n, window, v)[0].double()
    ref = F.binary_cross_entropy_with_logits(hidden @ weight.t(), bags, reduction="none").sum(-1)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(got.sum(), (hidden, weight))
    g2 = torch.autograd.grad(ref.sum(), (hidden, weight))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _lm(objectives, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=13, hidden_size=8, n_layers=2, n_heads=2, intermediate_size=16, max_seq_len=32)
    return TrainableLM(cfg, objectives)


def test_objective_loss_equals_the_reference_with_a_loss_mask_and_horizon():
    lm = _lm([{"name": "ntp"}, {"name": "fsp", "window": 4}])
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 13, (2, 9 + 5), generator=g)
    mask = torch.rand(2, 9, generator=g) > 0.4
    horizon = torch.randint(0, 5, (2, 9), generator=g)
    batch = Batch(tokens, 9, loss_mask=mask, horizon=horizon)
    out = lm.model.trunk(batch.input_ids)
    result = lm.objectives["fsp"](out, batch, lm.model)

    labels_ok = mask.clone()  # the next token always exists here (the stream is longer than seq_len)
    bags = _dense_bags(tokens, 9, 4, 13, horizon=horizon)
    logits = out.hidden @ lm.objectives["fsp"].head.weight.t()
    ref = F.binary_cross_entropy_with_logits(logits, bags, reduction="none").sum(-1)  # (B, T)
    assert int(result.count) == int(labels_ok.sum())
    torch.testing.assert_close(result.loss_sum, ref[labels_ok].sum(), rtol=1e-5, atol=1e-5)


def test_per_objective_backward_equals_one_graph():
    specs = [{"name": "ntp"}, {"name": "fsp", "window": 3}]
    a, b = _lm(specs), _lm(specs)
    tokens = torch.randint(0, 13, (3, 11 + a.lookahead), generator=torch.Generator().manual_seed(2))
    batch = Batch(tokens, 11)
    loss_a = sum(r.loss_sum / r.count for r in a(batch).values())
    loss_a.backward()
    b.forward_backward(batch, {n: 1.0 / float(b.objectives[n].count(batch)) for n in b.objectives})
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_config_and_label():
    assert objective_label([{"name": "ntp"}, {"name": "fsp"}]) == "FSP-BCE"
    assert _lm([{"name": "ntp"}, {"name": "fsp", "window": 9}]).lookahead == 10
    for bad in (0, 128, True, 2.5):
        with pytest.raises(ForesightError, match="FSP window"):
            FSPConfig(window=bad)


@pytest.mark.parametrize("reduction, per_item", [("sum", 13), ("mean", 1)])
def test_untrained_loss_is_v_log_2_or_log_2(reduction, per_item):
    """A zero head gives softplus(0) = log 2 per vocabulary item, whatever the bag."""
    lm = _lm([{"name": "ntp"}, {"name": "fsp", "window": 4, "reduction": reduction}])
    torch.nn.init.zeros_(lm.objectives["fsp"].head.weight)
    batch = Batch(torch.randint(0, 13, (2, 12)), 7)
    r = lm.objectives["fsp"](lm.model.trunk(batch.input_ids), batch, lm.model)
    assert math.isclose(float(r.loss_sum.detach() / r.count), per_item * math.log(2), rel_tol=1e-6)


def test_trains_in_star_graph_and_text_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    recipe = yaml.safe_load((ROOT / "configs/stargraph/smoke.yaml").read_text())
    recipe["runs"] = {"fsp": [{"name": "ntp"}, {"name": "fsp", "window": 6}, {"name": "top", "window": 8}]}
    (tmp_path / "sg.yaml").write_text(yaml.safe_dump(recipe))
    code = main(["stargraph", "run", "sg.yaml", "--set", "train.steps=3", "--set", "train.eval_every=0",
                 "--set", "train.log_every=1", "--results", "res", "--out", "sg"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(next((tmp_path / "res").glob("*.json")).read_text())["objective"] == "FSP-BCE + TOP"
    train = [json.loads(x) for x in (tmp_path / "sg/fsp/metrics.jsonl").read_text().splitlines()]
    assert all(r["fsp_loss"] > 0 for r in train if r.get("kind") == "train")

    (tmp_path / "corpus.txt").write_text("\n\n".join(f"Paragraph {i} about {w} and {w}s; x = {i}"
                                                      for i, w in enumerate(["cats", "dogs", "trees"] * 30)))
    assert main(["tokenizer", "train", "--input", "corpus.txt", "--text-unit", "paragraph", "--vocab-size", "300",
                 "--out", "tok"]) == 0
    assert main(["prepare", "--input", "corpus.txt", "--text-unit", "paragraph", "--tokenizer", "tok", "--out",
                 "data", "--val-fraction", "0.2"]) == 0
    text = {"task": "text", "text": {"data": "data", "seq_len": 16, "val_batches": 1},
            "model": {"hidden_size": 16, "n_layers": 1, "n_heads": 2, "intermediate_size": 32},
            "train": {"steps": 3, "batch_size": 2, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1, "log_every": 1,
                      "eval_every": 3, "device": "cpu"},
            "runs": {"fsp": [{"name": "ntp"}, {"name": "fsp", "window": 8, "reduction": "mean"}]}}
    (tmp_path / "text.yaml").write_text(json.dumps(text))
    capsys.readouterr()
    code = main(["train", "text.yaml", "--out", "txt"])
    _, err = capsys.readouterr()
    assert code == 0, err
    final = json.loads((tmp_path / "txt/fsp/result.json").read_text())["final"]
    assert final["val_fsp_loss"] > 0 and final["val_loss"] > 0


def test_under_foresight_wrap_equals_the_reference():
    from transformers import AutoConfig, AutoModelForCausalLM

    import foresight

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                               initializer_range=0.3, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    wrapped = foresight.wrap(model, [{"name": "ntp"}, {"name": "fsp", "window": 5}])
    ids = torch.randint(0, 23, (2, 13), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[0, :3] = IGNORE_INDEX  # a masked prompt: those positions are not trained
    out = wrapped(input_ids=ids, labels=labels)

    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]  # (B, T, D), final norm applied
    logits = hidden @ wrapped.heads["fsp"].weight.t()
    stream = labels.clone()
    bags = _dense_bags(stream, 13, 5, 23)  # the window reads labels (masked ids never enter a bag)
    ref = F.binary_cross_entropy_with_logits(logits, bags, reduction="none").sum(-1)  # (B, T)
    trained = torch.zeros(2, 13, dtype=torch.bool)
    trained[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # NTP's positions
    torch.testing.assert_close(out.losses["fsp"], ref[trained].mean(), rtol=1e-5, atol=1e-5)
