"""TRELAWNEY (data/trelawney.py) against a written-out per-row reference on odd shapes: the draws, the inserted
rows, the loss masks and horizons; determinism per (seed, example); evaluation stripping; and NTP/TOP + TRELAWNEY
runs through the CLI (star graph and text) at tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from foresight.cli.main import main
from foresight.data.loader import augment
from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
from foresight.data.trelawney import TrelawneyConfig, draw, insert_rows, strip_lookahead, uniforms
from foresight.errors import ForesightError
from foresight.eval.stargraph import evaluate, strip_paths
from foresight.model import ModelConfig
from foresight.objectives.nextlat import nextlat_pairs
from foresight.train.lm import TrainableLM

ROOT = Path(__file__).resolve().parents[2]
OPEN, CLOSE, PAD = 101, 102, 99


def reference_row(row: list[int], d: int, s: int, k: int) -> list[int]:
    """The paper's §3 form, written out: y_1..y_d <T> y_s..y_{s+k-1} </T> y_{d+1}..y_n (0-based indices)."""
    out = []
    for i, tok in enumerate(row):
        out.append(tok)
        if i == d:
            out.append(OPEN)
            out.extend(row[s + j] for j in range(k))
            out.append(CLOSE)
    return out


@pytest.mark.parametrize("n,first,p,lo,hi", [(7, 0, 1.0, 1, 3), (13, 4, 0.5, 2, 5), (5, 1, 0.3, 1, 1)])
def test_draws_and_rows_match_the_reference(n, first, p, lo, hi):
    cfg = TrelawneyConfig(p=p, min_span=lo, max_span=hi, seed=7)
    rows = np.arange(3 * n).reshape(3, n) % 17 + np.arange(3)[:, None] * 20  # (3, n) distinct-ish tokens
    rows = np.repeat(rows, 67, axis=0)  # (201, n): many draws per shape
    draws = draw(uniforms(cfg.seed, np.arange(len(rows))), cfg, first=first, last_end=n)
    width = n + 2 + hi
    out = insert_rows(rows, draws, OPEN, CLOSE, width, PAD)
    for c in range(len(rows)):
        row = rows[c].tolist()
        if draws.on[c]:
            d, s, k = int(draws.at[c]), int(draws.start[c]), int(draws.length[c])
            assert first <= d < s and s + k <= n and lo <= k <= hi  # a span strictly in the future
            want = reference_row(row, d, s, k)
        else:
            want = row
        assert out[c].tolist() == want + [PAD] * (width - len(want))
    assert abs(draws.on.mean() - p) < 0.15  # the fraction augmented is about p (201 draws)
    # each row's draws depend on (seed, index) only: a sub-range drawn alone gives the same numbers
    again = draw(uniforms(cfg.seed, np.arange(50, 60)), cfg, first=first, last_end=n)
    assert (again.on == draws.on[50:60]).all() and (again.at[again.on] == draws.at[50:60][again.on]).all()
    other = draw(uniforms(cfg.seed + 1, np.arange(len(rows))), cfg, first=first, last_end=n)
    assert (other.at != draws.at).any()


def test_to_end_spans_end_at_the_goal():
    spec = StarGraphSpec(2, 4, 10, lookahead=True)
    data = StarGraphData(generate(spec, 30, seed=6), spec, TrelawneyConfig(p=1.0, max_span=2, to_end=True))
    for c in range(len(data)):
        row = data.aug_tokens[c].tolist()
        span = row[row.index(spec.open_id) + 1 : row.index(spec.close_id)]
        assert span == data.paths[c].tolist()[-len(span):]  # v2 g or g: a lookahead that holds the goal


def test_star_graph_rows_masks_and_horizons():
    spec = StarGraphSpec(2, 5, 13, lookahead=True)
    cfg = TrelawneyConfig(p=0.6, min_span=1, max_span=3, seed=3)
    data = StarGraphData(generate(spec, 41, seed=5), spec, cfg)
    p, length = spec.prefix_len, spec.path
    width = p + length + 2 + 3
    assert data.seq_len == width - 1 and spec.vocab_size == 13 + 6
    plain = data.tokens.tolist()
    for c in range(len(data)):
        row = data.aug_tokens[c].tolist()
        if spec.open_id in row:
            d = row.index(spec.open_id) - 1
            e = row.index(spec.close_id)
            span = row[d + 2 : e]
            assert p - 1 <= d and row[: d + 1] == plain[c][: d + 1]  # inserted inside the answer only
            rest = plain[c][d + 1 :]
            assert row[e + 1 : e + 1 + len(rest)] == rest and 1 <= len(span) <= 3
            assert any(rest[i : i + len(span)] == span for i in range(len(rest)))  # a copy of the future
            real = p + length + len(span) + 2
        else:
            d, real = None, p + length
            assert row[:real] == plain[c]
        assert row[real:] == [spec.dollar_id] * (width - real)
        mask = [(p <= t + 1 < real) and t != d for t in range(width - 1)]
        assert data.aug_mask[c].tolist() == mask
        assert data.aug_horizon[c].tolist() == [max(real - 2 - t, 0) for t in range(width - 1)]
    batch = data.batch(1, 8, seed=0)
    assert batch.tokens.shape == (8, width) and batch.horizon.shape == batch.loss_mask.shape == (8, width - 1)
    with pytest.raises(ForesightError, match="min_span=6 exceeds"):
        StarGraphData(generate(spec, 3, seed=5), spec, TrelawneyConfig(min_span=6, max_span=6))
    with pytest.raises(ForesightError, match="lookahead=True"):
        StarGraphData(generate(spec, 3, seed=5), StarGraphSpec(2, 5, 13), cfg)


@pytest.mark.parametrize("specs", [[{"name": "ntp"}, {"name": "top", "window": 5}], [{"name": "mtp", "n": 3}],
                                   [{"name": "dsmtp", "depth": 2}], [{"name": "fsp", "window": 4}]])
def test_padded_plain_rows_give_the_unpadded_losses(specs):
    """p = 0: every row plain but padded; padding masked and ``horizon`` at the row's end must leave each
    objective's loss sum and count exactly those of the unpadded rows (a causal model: padding only follows)."""
    spec = StarGraphSpec(2, 4, 11, lookahead=True)
    examples = generate(spec, 6, seed=4)
    plain = StarGraphData(examples, spec).batch(0, 6, seed=1)
    padded = StarGraphData(examples, spec, TrelawneyConfig(p=0.0, max_span=3)).batch(0, 6, seed=1)
    assert padded.seq_len == plain.seq_len + 5
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=spec.vocab_size, hidden_size=8, n_layers=2, n_heads=2, intermediate_size=16,
                      max_seq_len=64)
    lm = TrainableLM(cfg, specs).double()
    with torch.no_grad():
        a, b = lm(plain), lm(padded)
    for name in a:
        assert int(a[name].count) == int(b[name].count) > 0, name
        torch.testing.assert_close(b[name].loss_sum, a[name].loss_sum, rtol=1e-10, atol=1e-12, msg=name)


def test_nextlat_pairs_stay_on_real_tokens():
    """NextLat's targets are trunk states: in a padded row a pair (t, k) may reach the state at the row's last
    real token (an input now, a label only before), never one at the padding."""
    spec = StarGraphSpec(2, 4, 11, lookahead=True)
    data = StarGraphData(generate(spec, 30, seed=4), spec, TrelawneyConfig(p=0.5, max_span=3))
    batch = data.batch(0, 30, seed=1)
    real = (batch.tokens != spec.dollar_id).sum(1)  # (B,) no '$' in the real tokens of a star graph row
    pairs = nextlat_pairs(batch, 3)  # (K, B, T)
    k, b, t = pairs.nonzero(as_tuple=True)
    assert len(t) > 0 and bool((t + k + 1 <= real[b] - 1).all())


def test_open_loss_trains_the_open_token():
    spec = StarGraphSpec(2, 3, 9, lookahead=True)
    data = StarGraphData(generate(spec, 20, seed=1), spec, TrelawneyConfig(p=1.0, open_loss=True))
    for c in range(len(data)):
        d = data.aug_tokens[c].tolist().index(spec.open_id) - 1
        assert bool(data.aug_mask[c, d])


def test_strip_lookahead_reference():
    assert strip_lookahead([1, 2, OPEN, 5, 6, CLOSE, 3], OPEN, CLOSE) == [1, 2, 3]
    assert strip_lookahead([OPEN, 4, CLOSE, 1, OPEN, CLOSE, 2], OPEN, CLOSE) == [1, 2]
    assert strip_lookahead([1, OPEN, 4, 4], OPEN, CLOSE) == [1]  # unclosed: the rest goes
    assert strip_lookahead([1, CLOSE, 2], OPEN, CLOSE) == [1, 2]  # a stray </T> alone
    spec = StarGraphSpec(2, 3, 9, lookahead=True)
    o, c = spec.open_id, spec.close_id
    out = torch.tensor([[1, o, 7, c, 2, 3, 0], [1, 2, 3, 4, 5, 6, 7], [1, o, 2, 2, 2, 2, 2]])
    assert strip_paths(out, spec, 3).tolist() == [[1, 2, 3], [1, 2, 3], [1, -1, -1]]


class _Scripted(torch.nn.Module):
    """A 'model' whose greedy continuation of any prompt is a fixed script (logits one-hot on it)."""

    def __init__(self, script: list[int], vocab: int, prompt_len: int):
        super().__init__()
        self.script, self.vocab, self.prompt_len = script, vocab, prompt_len

    def forward(self, seq):
        b, t = seq.shape
        logits = torch.zeros(b, t, self.vocab)
        logits[:, -1, self.script[t - self.prompt_len]] = 1.0
        return logits


def test_evaluation_strips_generated_spans():
    spec = StarGraphSpec(2, 3, 9, lookahead=True)
    data = StarGraphData(generate(spec, 1, seed=2), spec)
    path = data.paths[0].tolist()
    cfg = TrelawneyConfig(max_span=2)
    script = [path[0], spec.open_id, path[2], spec.close_id, path[1], path[2], 0]  # 3 + 2 + 2 tokens
    model = _Scripted(script, spec.vocab_size, spec.prefix_len)
    assert evaluate(model, data, trelawney=cfg)["exact_match"] == 1.0
    assert evaluate(model, data)["exact_match"] == 0.0  # unstripped, the span is scored as the path
    # prompt_open: the prompt ends '= <T>', the model writes span, </T>, then the path
    opened = _Scripted([path[2], spec.close_id, *path, 0, 0], spec.vocab_size, spec.prefix_len + 1)
    res = evaluate(opened, data, trelawney=TrelawneyConfig(max_span=2, prompt_open=True))
    assert res["exact_match"] == 1.0 and res["valid_arm"] == 1.0


def test_text_samples_keep_length_and_stay_in_the_document():
    eos = 0
    rows = np.array([[5, 6, 7, 0, 8, 9, 10, 11, 12, 13, 14], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]] * 20)
    ids = np.arange(40) * 3 + 1
    cfg = TrelawneyConfig(p=1.0, min_span=1, max_span=3, seed=2)
    out, mask = augment(rows, ids, 8, cfg, (OPEN, CLOSE), eos)
    assert out.shape == rows.shape and mask.shape == (40, 8)
    for c in range(40):
        row, got = rows[c].tolist(), out[c].tolist()
        if OPEN not in got:
            assert got == row and mask[c].all()
            continue
        d, e = got.index(OPEN) - 1, got.index(CLOSE)
        span = got[d + 2 : e]
        assert eos not in span and 1 <= len(span) <= 3
        s = next(i for i in range(d + 1, 8) if row[i : i + len(span)] == span)
        assert s + len(span) <= 8  # copied from the model's own input
        assert got == reference_row(row, d, s, len(span))[: len(row)]
        assert mask[c].tolist() == [t != d for t in range(8)]
    again, _ = augment(rows[5:9], ids[5:9], 8, cfg, (OPEN, CLOSE), eos)
    assert (again == out[5:9]).all()  # per (seed, sample id)


def test_recipe_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["stargraph", "run", str(ROOT / "configs/stargraph/smoke.yaml"), "--set",
                 "stargraph.trelawney={p: 2}"])
    assert code == 2 and "stargraph.trelawney.p must be in [0, 1]" in capsys.readouterr().err
    code = main(["stargraph", "run", str(ROOT / "configs/stargraph/smoke.yaml"), "--set",
                 "stargraph.trelawney={min_span: 3, max_span: 2}"])
    assert ("stargraph.trelawney.min_span (3) exceeds stargraph.trelawney.max_span (2)"
            in capsys.readouterr().err)
    code = main(["stargraph", "run", str(ROOT / "configs/stargraph/smoke.yaml"), "--set",
                 "stargraph.trelawney={span: 2}"])
    assert code == 2 and "unknown key stargraph.trelawney.span" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
def test_trains_with_ntp_and_top_in_star_graph_and_text_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = yaml.safe_load((ROOT / "configs/stargraph/smoke.yaml").read_text())
    recipe["stargraph"]["trelawney"] = {"p": 0.5, "max_span": 2}
    recipe["runs"] = {"ntp": [{"name": "ntp"}], "top": [{"name": "ntp"}, {"name": "top", "window": 8}]}
    (tmp_path / "sg.yaml").write_text(yaml.safe_dump(recipe))
    code = main(["stargraph", "run", "sg.yaml", "--set", "train.steps=3", "--set", "train.eval_every=3",
                 "--results", "res", "--out", "sg"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "sequence length 21 (TRELAWNEY); runs: ntp, top" in out  # P + l − 1 = 15 + 2, then + 2 + min(2, 3)
    cells = [json.loads(p.read_text()) for p in (tmp_path / "res").glob("*.json")]
    assert len(cells) == 2 and all(0 <= c["final_exact_match"] <= 1 for c in cells)
    assert sorted(c["objective"] for c in cells) == ["NTP + TRELAWNEY", "TOP + TRELAWNEY"]

    (tmp_path / "corpus.txt").write_text("\n\n".join(f"Paragraph {i} about {w} and {w}s; x = {i}"
                                                      for i, w in enumerate(["cats", "dogs", "trees"] * 30)))
    assert main(["tokenizer", "train", "--input", "corpus.txt", "--text-unit", "paragraph", "--vocab-size", "300",
                 "--out", "tok"]) == 0
    assert main(["prepare", "--input", "corpus.txt", "--text-unit", "paragraph", "--tokenizer", "tok", "--out",
                 "data", "--val-fraction", "0.2"]) == 0
    text = {"task": "text", "text": {"data": "data", "seq_len": 16, "val_batches": 1, "vocab_multiple": 1,
                                     "trelawney": {"p": 0.5, "max_span": 4}},
            "model": {"hidden_size": 16, "n_layers": 1, "n_heads": 2, "intermediate_size": 32},
            "train": {"steps": 3, "batch_size": 2, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1, "log_every": 1,
                      "eval_every": 3, "device": "cpu"},
            "runs": {"top": [{"name": "ntp"}, {"name": "top", "window": 8}]}}
    (tmp_path / "text.yaml").write_text(json.dumps(text))
    capsys.readouterr()
    code = main(["train", "text.yaml", "--out", "txt"])
    _, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads((tmp_path / "txt/top/result.json").read_text())
    assert result["final"]["val_loss"] > 0


def test_prompt_benchmark_reads_the_written_span():
    """benchmarks/trelawney_prompt.py: after '= <T>', a span that is a closed piece of the answer with the goal."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import trelawney_prompt
    finally:
        sys.path.pop(0)
    spec = StarGraphSpec(2, 3, 9, lookahead=True)
    data = StarGraphData(generate(spec, 1, seed=2), spec)
    path = data.paths[0].tolist()
    good = _Scripted([path[1], path[2], spec.close_id], spec.vocab_size, spec.prefix_len + 1)
    assert trelawney_prompt.span_quality(good, data, spec, 2) == {
        "span_closed": 1.0, "span_is_answer_piece": 1.0, "span_has_goal": 1.0}
    skipping = _Scripted([path[0], path[2], spec.close_id], spec.vocab_size, spec.prefix_len + 1)  # not contiguous
    assert trelawney_prompt.span_quality(skipping, data, spec, 2) == {
        "span_closed": 1.0, "span_is_answer_piece": 0.0, "span_has_goal": 1.0}
    unclosed = _Scripted([path[1], path[2], path[2]], spec.vocab_size, spec.prefix_len + 1)
    assert trelawney_prompt.span_quality(unclosed, data, spec, 2)["span_closed"] == 0.0
