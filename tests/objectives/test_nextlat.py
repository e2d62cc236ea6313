"""NextLat (next-latent prediction) against a written-out reference: loops over positions and rollout steps."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from foresight.batch import Batch
from foresight.cli.main import main
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.objectives import NextLatConfig, objective_label
from foresight.objectives.base import IGNORE_INDEX
from foresight.train.lm import TrainableLM

ROOT = Path(__file__).resolve().parents[2]


def _lm(objectives, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=11, hidden_size=8, n_layers=2, n_heads=2, intermediate_size=16, max_seq_len=32)
    lm = TrainableLM(cfg, objectives).to(dtype)
    for p in lm.objectives["nextlat"].dynamics.down.parameters():
        torch.nn.init.normal_(p, std=0.3)  # a trained-looking ψ (it starts at zero: ĥ = h)
    return lm


def _reference(lm, batch, horizon, kl_weight):
    """Σ over trained pairs (t, k) of SmoothL1 + kl_weight · KL, and the pair count, by plain loops. The KL reads
    the final norm and head through frozen copies: its gradient must not reach them."""
    out = lm.model.trunk(batch.input_ids)
    psi, model = lm.objectives["nextlat"].dynamics, lm.model
    # the latent: the last block's output over its root mean square (no learned scale)
    h = out.final / (out.final.pow(2).mean(-1, keepdim=True) + psi.hnorm.eps).sqrt()
    norm, head = copy.deepcopy(model.norm).requires_grad_(False), copy.deepcopy(model.lm_head).requires_grad_(False)
    tokens, t_len = batch.tokens, batch.seq_len
    total, count = 0.0, 0

    def real(v):
        return v >= 0 and v != IGNORE_INDEX

    for b in range(tokens.shape[0]):
        for t in range(t_len):
            if batch.loss_mask is not None and not batch.loss_mask[b, t]:
                continue
            pred = h[b, t]
            for k in range(1, horizon + 1):
                if t + k > t_len - 1 or not real(int(tokens[b, t + k])):
                    break
                if k > 1 and batch.horizon is not None and batch.horizon[b, t] < k - 1:
                    break
                pred = psi(pred, model.embed_tokens.weight[tokens[b, t + k]])
                target = h[b, t + k].detach()
                loss = F.smooth_l1_loss(pred, target)
                p = F.log_softmax(head(norm(target)), -1)
                q = F.log_softmax(head(norm(pred)), -1)
                total = total + loss + kl_weight * F.kl_div(q, p, log_target=True, reduction="sum")
                count += 1
    return total, count


@pytest.mark.parametrize("horizon, kl_weight, masked", [(1, 1.0, False), (3, 0.5, True), (2, 0.0, False)])
def test_loss_and_gradients_equal_the_reference(horizon, kl_weight, masked):
    spec = [{"name": "ntp"}, {"name": "nextlat", "horizon": horizon, "kl_weight": kl_weight}]
    a, b = _lm(spec), _lm(spec)
    g = torch.Generator().manual_seed(horizon)
    tokens = torch.randint(0, 11, (2, 10), generator=g)
    mask = torch.rand(2, 9, generator=g) > 0.3 if masked else None
    hz = torch.randint(0, 4, (2, 9), generator=g) if masked else None
    batch = Batch(tokens, 9, loss_mask=mask, horizon=hz)

    got = a.objectives["nextlat"](a.model.trunk(batch.input_ids), batch, a.model)
    ref, count = _reference(b, batch, horizon, kl_weight)
    assert int(got.count) == count == int(a.objectives["nextlat"].count(batch)) and count > 0
    torch.testing.assert_close(got.loss_sum, ref.to(got.loss_sum.dtype), rtol=1e-10, atol=1e-10)
    got.loss_sum.backward()
    ref.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)
    assert a.model.layers[0].mlp.gate_proj.weight.grad.abs().sum() > 0  # it shapes the trunk


def test_the_kl_leaves_the_shared_norm_and_head_alone():
    """NextLat's KL trains ψ and the trunk only: with its gradient on the shared norm and head, the head learnt to
    make every distribution uniform (KL 0) and NTP collapsed to ln V on the star graph (g24_10_d4, seed 20)."""
    lm = _lm([{"name": "ntp"}, {"name": "nextlat", "kl_weight": 1.0}])
    batch = Batch(torch.randint(0, 11, (2, 10), generator=torch.Generator().manual_seed(5)), 9)
    out = lm.objectives["nextlat"](lm.model.trunk(batch.input_ids), batch, lm.model)
    out.loss_sum.backward()
    model = lm.model
    for name, p in [("norm", model.norm.weight), ("head", model.lm_head.weight)]:
        if p is not model.embed_tokens.weight:  # a tied head is also the embedding ψ reads: that gradient is ψ's input
            assert p.grad is None or not p.grad.any(), name
    assert lm.objectives["nextlat"].dynamics.up.weight.grad.abs().sum() > 0
    assert model.layers[0].mlp.gate_proj.weight.grad.abs().sum() > 0


def test_untrained_dynamics_predict_no_change():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=32)
    lm = TrainableLM(cfg, [{"name": "ntp"}, {"name": "nextlat"}])
    h = torch.randn(3, 8)
    assert torch.equal(lm.objectives["nextlat"].dynamics(h, torch.randn(3, 8)), h)


def test_config_label_and_flops():
    assert objective_label([{"name": "ntp"}, {"name": "nextlat"}]) == "NextLat"
    assert objective_label([{"name": "ntp"}, {"name": "nextlat", "horizon": 3}]) == "NextLat-3"
    for bad in ({"horizon": 0}, {"horizon": 65}, {"hidden_mult": True}, {"kl_weight": -1}, {"kl_weight": "x"}):
        with pytest.raises(ForesightError, match="NextLat"):
            NextLatConfig(**bad)
    lm = _lm([{"name": "ntp"}, {"name": "nextlat", "horizon": 2}], dtype=torch.float32)
    c = lm.objectives["nextlat"].compute()
    assert c.block_params == 2 * (2 * 8 + 2 * 8 * 16 + 16 * 8) and c.head_uses == 4


def test_trains_in_a_star_graph_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    recipe = yaml.safe_load((ROOT / "configs/stargraph/smoke.yaml").read_text())
    recipe["runs"] = {"nl": [{"name": "ntp"}, {"name": "nextlat", "horizon": 2}, {"name": "fsp", "window": 4}]}
    (tmp_path / "sg.yaml").write_text(yaml.safe_dump(recipe))
    code = main(["stargraph", "run", "sg.yaml", "--set", "train.steps=3", "--set", "train.eval_every=0",
                 "--set", "train.log_every=1", "--results", "res", "--out", "sg"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(next((tmp_path / "res").glob("*.json")).read_text())["objective"] == "NextLat-2 + FSP-BCE"
    train = [json.loads(x) for x in (tmp_path / "sg/nl/metrics.jsonl").read_text().splitlines()]
    assert all(r["nextlat_loss"] > 0 for r in train if r.get("kind") == "train")


def test_per_objective_backward_equals_one_graph():
    specs = [{"name": "ntp"}, {"name": "nextlat", "horizon": 2}]
    a, b = _lm(specs), _lm(specs)
    tokens = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(5))
    batch = Batch(tokens, 11)
    sum(r.loss_sum / r.count for r in a(batch).values()).backward()
    b.forward_backward(batch, {n: 1.0 / float(b.objectives[n].count(batch)) for n in b.objectives})
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_under_foresight_wrap_equals_the_reference(arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    import foresight

    torch.manual_seed(0)
    extra = dict(head_dim=4, final_logit_softcapping=1.5, query_pre_attn_scalar=4) if arch == "gemma2" else {}
    cfg = AutoConfig.for_model(arch, vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                               initializer_range=0.3, tie_word_embeddings=False, **extra)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval().double()
    wrapped = foresight.wrap(model, [{"name": "ntp"}, {"name": "nextlat", "horizon": 2}])
    psi = wrapped.heads["nextlat"]
    torch.nn.init.normal_(psi.down.weight, std=0.3)
    ids = torch.randint(0, 23, (2, 9), generator=torch.Generator().manual_seed(3))
    out = wrapped(input_ids=ids, labels=ids)

    grabbed = {}  # the last layer's output, before the final norm
    hook = model.model.layers[-1].register_forward_hook(
        lambda m, a, o: grabbed.update(h=o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    h = grabbed["h"]
    h = h / (h.pow(2).mean(-1, keepdim=True) + psi.hnorm.eps).sqrt()  # the latent: unit RMS, no learned scale
    emb = model.get_input_embeddings()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(2):
            for t in range(9):
                pred = h[b, t]
                for k in (1, 2):
                    if t + k > 8:
                        break
                    pred = psi(pred, emb(ids[b, t + k]))
                    target = h[b, t + k]

                    def logp(x):
                        z = model.lm_head(model.model.norm(x))
                        if arch == "gemma2":
                            z = 1.5 * torch.tanh(z / 1.5)
                        return F.log_softmax(z, -1)

                    kl = F.kl_div(logp(pred), logp(target), log_target=True, reduction="sum")
                    total += float(F.smooth_l1_loss(pred, target) + kl)
                    count += 1
    torch.testing.assert_close(out.losses["nextlat"].item(), total / count, rtol=1e-9, atol=1e-12)
