"""MuToR (register tokens) against written-out references on odd shapes: the layout from plain loops, the masked
trunk against a transformer written out in loops, the loss against each register run on its own explicit
sequence, the regular tokens against a plain forward."""

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
from foresight.objectives import MuToRConfig, build_on_parts, objective_label
from foresight.objectives.base import IGNORE_INDEX
from foresight.objectives.mutor import register_labels, register_mask, register_positions, register_slots
from foresight.train.flops import flops_per_token
from foresight.train.lm import TrainableLM

ROOT = Path(__file__).resolve().parents[2]
V = 13


def _lm(objectives, seed=0, n_kv_heads=2, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, hidden_size=12, n_layers=2, n_heads=2, n_kv_heads=n_kv_heads,
                      intermediate_size=20, max_seq_len=32)
    return TrainableLM(cfg, objectives).to(dtype)


def _batch(b=3, t=7, look=4, seed=1, masked=True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (b, t + look), generator=g)
    tokens[1, t + 1] = -1  # a negative id in the look-ahead: never a label
    mask = torch.rand(b, t, generator=g) > 0.3 if masked else None
    horizon = torch.randint(0, 4, (b, t), generator=g) if masked else None
    return Batch(tokens, t, loss_mask=mask, horizon=horizon)


# ---- the layout, from plain loops ------------------------------------------------------------------------------

def test_layout_matches_plain_loops():
    batch = _batch()
    t_len = batch.seq_len
    after, valid = register_slots(batch)
    offsets = torch.tensor([1, 3, 2])
    mask, pos = register_mask(after, t_len), register_positions(after, offsets, t_len)
    labels = register_labels(batch, offsets)
    k = max(int(batch.loss_mask[b].sum()) for b in range(3))
    assert after.shape == (3, k) and mask.shape == (3, 1, t_len + k, t_len + k)
    for b in range(3):
        trained = [t for t in range(t_len) if batch.loss_mask[b, t]]  # every next token is a real id here
        slots = trained + [None] * (k - len(trained))
        assert valid[b].tolist() == [s is not None for s in slots]
        assert [int(a) for a, ok in zip(after[b], valid[b]) if ok] == trained
        d = int(offsets[b])
        want_pos = list(range(t_len)) + [(s if s is not None else 0) + d - 1 for s in slots]
        assert pos[b].tolist() == want_pos
        for i in range(t_len + k):
            for j in range(t_len + k):
                if i < t_len:  # a token: causal over tokens, no register
                    allowed = j < t_len and j <= i
                else:  # a register: tokens up to the one it follows, and itself
                    follows = slots[i - t_len] if slots[i - t_len] is not None else 0
                    allowed = (j < t_len and j <= follows) or i == j
                assert bool(mask[b, 0, i, j]) == allowed, (b, i, j)
        for s in range(t_len):
            y = int(batch.tokens[b, s + d])
            ok = bool(batch.loss_mask[b, s]) and y >= 0 and (d == 1 or int(batch.horizon[b, s]) >= d - 1)
            assert int(labels[b, s]) == (y if ok else IGNORE_INDEX), (b, s)
    # without a loss mask: a register after every token, one (T + K, T + K) mask shared by the rows
    plain = _batch(masked=False)
    after, valid = register_slots(plain)
    assert valid.all() and torch.equal(after, torch.arange(t_len).expand(3, t_len))
    assert register_mask(after, t_len).shape == (2 * t_len, 2 * t_len)


# ---- the masked trunk against a transformer written out in loops -------------------------------------------------

def _rms(x, w, eps):
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def _rope(x, pos, theta):
    """x (Dh,) rotated to position pos, 'rotate half' layout, written out."""
    dh = x.shape[0]
    half = dh // 2
    out = x.clone()
    for i in range(half):
        angle = pos / theta ** (2 * i / dh)
        c, s = math.cos(angle), math.sin(angle)
        out[i] = x[i] * c - x[i + half] * s
        out[i + half] = x[i + half] * c + x[i] * s
    return out


def _reference_trunk(model, x, mask, positions):
    """Final normed hidden states (S, D) of one row: x (S, D) inputs, mask (S, S) bool, positions (S,) ints."""
    cfg = model.cfg
    h_heads, g_heads, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    s = x.shape[0]
    for layer in model.layers:
        att = layer.self_attn
        a = _rms(x, layer.input_layernorm.weight, cfg.norm_eps)
        q, k, v = att.q_proj(a), att.k_proj(a), att.v_proj(a)
        out = torch.zeros(s, h_heads * dh, dtype=x.dtype)
        for head in range(h_heads):
            kv = head // (h_heads // g_heads)
            qs = [_rope(q[i, head * dh:(head + 1) * dh], positions[i], cfg.rope_theta) for i in range(s)]
            ks = [_rope(k[j, kv * dh:(kv + 1) * dh], positions[j], cfg.rope_theta) for j in range(s)]
            for i in range(s):
                keys = [j for j in range(s) if mask[i, j]]
                scores = torch.stack([qs[i] @ ks[j] / math.sqrt(dh) for j in keys])
                w = torch.softmax(scores, 0)
                out[i, head * dh:(head + 1) * dh] = sum(w[n] * v[j, kv * dh:(kv + 1) * dh] for n, j in enumerate(keys))
        x = x + att.o_proj(out)
        m = _rms(x, layer.post_attention_layernorm.weight, cfg.norm_eps)
        x = x + layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(m)) * layer.mlp.up_proj(m))
    return _rms(x, model.norm.weight, cfg.norm_eps)


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_masked_trunk_equals_the_written_out_transformer(n_kv_heads):
    model = _lm([{"name": "ntp"}], n_kv_heads=n_kv_heads).model
    g = torch.Generator().manual_seed(3)
    b, s = 2, 7
    x = torch.randn(b, s, 12, generator=g, dtype=torch.float64)
    mask = torch.rand(b, 1, s, s, generator=g) > 0.5
    mask |= torch.eye(s, dtype=torch.bool)  # every query sees at least itself
    positions = torch.randint(0, 40, (b, s), generator=g)  # past max_seq_len too: the tables grow
    with torch.no_grad():
        got = model.trunk_embeds(x, mask, positions).hidden
        for row in range(b):
            ref = _reference_trunk(model, x[row], mask[row, 0], positions[row].tolist())
            torch.testing.assert_close(got[row], ref, rtol=1e-10, atol=1e-10)
        # one (S, S) mask for every row
        got2 = model.trunk_embeds(x, mask[0, 0], positions).hidden
        ref2 = _reference_trunk(model, x[1], mask[0, 0], positions[1].tolist())
        torch.testing.assert_close(got2[1], ref2, rtol=1e-10, atol=1e-10)


def test_trunk_defaults_unchanged_and_bad_masks_refused():
    model = _lm([{"name": "ntp"}]).model
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        plain = model.trunk(ids).hidden
        causal = torch.ones(9, 9, dtype=torch.bool).tril()
        same = model.trunk(ids, mask=causal, positions=torch.arange(9).expand(2, 9)).hidden
        assert torch.allclose(plain, same, rtol=1e-12, atol=1e-12)
        assert torch.equal(model.trunk_embeds(model.embed_tokens(ids)).hidden, plain)
    with pytest.raises(ValueError, match="mask must be bool"):
        model.trunk(ids, mask=causal.float())
    with pytest.raises(ValueError, match="positions must be"):
        model.trunk(ids, positions=torch.arange(9))
    with pytest.raises(ValueError, match="without caches"):
        model.trunk(ids, caches=model.new_caches(), mask=causal)


def test_masked_trunk_same_under_activation_checkpointing():
    """The training path (``Block.checkpointing``) carries the mask: same outputs and gradients as eager."""
    a, b = _lm([{"name": "ntp"}]).model, _lm([{"name": "ntp"}]).model
    for layer in b.layers:
        layer.checkpointing = True
    offsets = torch.tensor([2, 1])
    after = torch.tensor([[0, 2, 4], [1, 3, 0]])
    x = torch.randn(2, 8, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    outs = [m.trunk_embeds(x, register_mask(after, 5), register_positions(after, offsets, 5)).hidden for m in (a, b)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for h in outs:
        h.square().sum().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10)


# ---- the objective ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("embeddings", ["shared", "per_offset"])
def test_loss_and_register_gradient_equal_explicit_sequences(embeddings):
    """Each register run on its own: the sequence x_0 .. x_t, r with positions 0 .. t, t+d-1 under a plain causal
    mask (a register sees exactly those tokens), its last state through the head: the objective's loss sum."""
    lm = _lm([{"name": "ntp"}, {"name": "mutor", "d_max": 3, "embeddings": embeddings}])
    obj, model = lm.objectives["mutor"], lm.model
    batch = _batch(look=3)
    offsets = torch.tensor([1, 3, 2])
    result = obj(None, batch, model, offsets=offsets)
    ref = torch.zeros((), dtype=torch.float64)
    n = 0
    for b in range(3):
        d = int(offsets[b])
        reg = obj.registers[d - 1 if embeddings == "per_offset" else 0]
        for t in range(batch.seq_len):
            y = int(batch.tokens[b, t + d])
            if not (batch.loss_mask[b, t] and y >= 0 and (d == 1 or batch.horizon[b, t] >= d - 1)):
                continue
            x = torch.cat([model.embed_tokens(batch.tokens[b, : t + 1]), reg[None]])  # (t + 2, D)
            pos = torch.tensor([list(range(t + 1)) + [t + d - 1]])
            h = model.trunk_embeds(x[None], None, pos).hidden[0, -1]  # causal: the register sees x_0 .. x_t
            ref = ref + F.cross_entropy(model.lm_head(h)[None], torch.tensor([y]), reduction="sum")
            n += 1
    assert n > 3
    torch.testing.assert_close(result.loss_sum, ref, rtol=1e-10, atol=1e-10)
    assert int(result.count) == int((batch.loss_mask).sum())  # registers of NTP's trained positions
    g1 = torch.autograd.grad(result.loss_sum, [obj.registers, model.embed_tokens.weight])
    g2 = torch.autograd.grad(ref, [obj.registers, model.embed_tokens.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_loss_equals_the_papers_interleaved_sequence():
    """The paper's literal layout, built with loops: (x_0, r, x_1, r, ..., x_{T-1}, r) with its (2T, 2T) mask and
    position ids, run through the trunk; the loss of its scored registers is the objective's (registers appended,
    only at trained positions)."""
    lm = _lm([{"name": "ntp"}, {"name": "mutor", "d_max": 4}])
    obj, model = lm.objectives["mutor"], lm.model
    batch = _batch(b=3, t=6, look=4, seed=7)
    offsets = torch.tensor([2, 4, 1])
    got = obj(None, batch, model, offsets=offsets).loss_sum
    ref = torch.zeros((), dtype=torch.float64)
    for b in range(3):
        d, t_len = int(offsets[b]), batch.seq_len
        inputs, pos, is_reg, follows = [], [], [], []
        for t in range(t_len):
            inputs += [model.embed_tokens.weight[batch.tokens[b, t]], obj.registers[0]]
            pos += [t, t + d - 1]
            is_reg += [False, True]
            follows += [t, t]
        s = 2 * t_len
        mask = torch.zeros(s, s, dtype=torch.bool)
        for i in range(s):
            for j in range(s):
                mask[i, j] = (not is_reg[j] and follows[j] <= follows[i]) or i == j
        h = model.trunk_embeds(torch.stack(inputs)[None], mask, torch.tensor([pos])).hidden[0]  # (2T, D)
        for t in range(t_len):
            y = int(batch.tokens[b, t + d])
            if batch.loss_mask[b, t] and y >= 0 and (d == 1 or batch.horizon[b, t] >= d - 1):
                ref = ref + F.cross_entropy(model.lm_head(h[2 * t + 1])[None], torch.tensor([y]), reduction="sum")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("masked", [False, True])
def test_regular_tokens_equal_a_plain_forward(masked):
    """Regular tokens never see a register: their states in the interleaved pass are the plain pass's, so NTP's
    loss read from either is the same (we keep NTP on the plain pass)."""
    lm = _lm([{"name": "ntp"}, {"name": "mutor", "d_max": 4}])
    obj, model = lm.objectives["mutor"], lm.model
    batch = _batch(b=2, t=9, look=4, masked=masked)
    offsets = torch.tensor([4, 2])
    after, _ = register_slots(batch)
    with torch.no_grad():
        x = obj.inputs(model, batch.input_ids, offsets, after.shape[1])
        inter = model.trunk_embeds(x, register_mask(after, 9), register_positions(after, offsets, 9))
        plain = model.trunk(batch.input_ids)
        torch.testing.assert_close(inter.hidden[:, :9], plain.hidden, rtol=1e-12, atol=1e-12)
        ntp = lm.objectives["ntp"]
        from_plain = ntp(plain, batch, model).loss_sum
        regular = type(plain)(hidden=inter.hidden[:, :9], final=inter.final[:, :9], last_input=plain.last_input,
                              cos=plain.cos, sin=plain.sin)
        torch.testing.assert_close(ntp(regular, batch, model).loss_sum, from_plain, rtol=1e-12, atol=1e-12)
        # inference is the plain model: registers are dropped (generation never calls the objective)
        torch.testing.assert_close(model(batch.input_ids), model.lm_head(plain.hidden))


def test_per_objective_backward_equals_one_graph():
    specs = [{"name": "ntp", "weight": 0.7}, {"name": "mutor", "weight": 0.3, "d_max": 3}]
    a, b = _lm(specs, dtype=torch.float32), _lm(specs, dtype=torch.float32)
    batch = _batch(b=4, t=8, look=3, seed=4)
    torch.manual_seed(9)  # the same d per row in both passes
    (sum(r.loss_sum / r.count for r in a(batch).values())).backward()
    torch.manual_seed(9)
    b.forward_backward(batch, {n: 1.0 / float(b.objectives[n].count(batch)) for n in b.objectives})
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert b.objectives["mutor"].registers.grad.abs().sum() > 0


def test_a_batch_without_trained_positions_gives_zero():
    lm = _lm([{"name": "ntp"}, {"name": "mutor", "d_max": 3}], dtype=torch.float32)
    batch = Batch(torch.randint(0, V, (2, 10)), 7, loss_mask=torch.zeros(2, 7, dtype=torch.bool))
    result = lm.forward_backward(batch, {"ntp": 0.0, "mutor": 0.0})["mutor"]
    assert float(result.loss_sum) == 0.0 and int(result.count) == 0


def test_offsets_are_uniform_per_sequence():
    lm = _lm([{"name": "ntp"}, {"name": "mutor", "d_max": 3}])
    torch.manual_seed(0)
    d = lm.objectives["mutor"].sample_offsets(Batch(torch.zeros(3000, 5, dtype=torch.long), 2))
    counts = torch.bincount(d, minlength=4)
    assert counts[0] == 0 and all(900 < int(c) < 1100 for c in counts[1:])


def test_config_label_lookahead_and_flops():
    assert objective_label([{"name": "ntp"}, {"name": "mutor"}]) == "MuToR-4"
    assert objective_label([{"name": "ntp"}, {"name": "mutor", "d_max": 2}]) == "MuToR-2"
    lm = _lm([{"name": "ntp"}, {"name": "mutor", "d_max": 5}])
    assert lm.lookahead == 5
    assert MuToRConfig().weight == 0.3 and MuToRConfig().d_max == 4
    base = flops_per_token(_lm([{"name": "ntp"}]), 16)
    assert flops_per_token(lm, 16) > 2 * base - 6 * V * 12  # a second pass over two inputs per token
    for bad in (0, 129, True, 1.5):
        with pytest.raises(ForesightError, match="MuToR d_max"):
            MuToRConfig(d_max=bad)
    with pytest.raises(ForesightError, match="MuToR embeddings"):
        MuToRConfig(embeddings="many")
    with pytest.raises(ForesightError, match="'mutor' does not support foresight.wrap"):
        build_on_parts({"name": "mutor"}, None)  # needs a 4-D mask and position ids through any HF model: one line


@pytest.mark.slow
def test_trains_in_star_graph_and_text_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    recipe = yaml.safe_load((ROOT / "configs/stargraph/smoke.yaml").read_text())
    recipe["runs"] = {"mutor": [{"name": "ntp", "weight": 0.7}, {"name": "mutor", "weight": 0.3, "d_max": 3}]}
    (tmp_path / "sg.yaml").write_text(yaml.safe_dump(recipe))
    code = main(["stargraph", "run", "sg.yaml", "--set", "train.steps=3", "--set", "train.eval_every=0",
                 "--set", "train.log_every=1", "--results", "res", "--out", "sg"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(next((tmp_path / "res").glob("*.json")).read_text())["objective"] == "MuToR-3"
    train = [json.loads(x) for x in (tmp_path / "sg/mutor/metrics.jsonl").read_text().splitlines()]
    assert all(r["mutor_loss"] > 0 for r in train if r.get("kind") == "train")

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
            "runs": {"mutor": [{"name": "ntp"}, {"name": "mutor", "d_max": 4}]}}
    (tmp_path / "text.yaml").write_text(json.dumps(text))
    capsys.readouterr()
    code = main(["train", "text.yaml", "--out", "txt"])
    _, err = capsys.readouterr()
    assert code == 0, err
    final = json.loads((tmp_path / "txt/mutor/result.json").read_text())["final"]
    assert final["val_mutor_loss"] > 0 and final["val_loss"] > 0
