"""benchmarks/authors_vs_foresight.py, the pieces that are ours, on synthetic logs: no network and no authors' code.
Argument checks, the authors' log (the wandb recorder's lines), foresight's metrics.jsonl, the table and its
ratios, and the CPU twin of their TOP target builder against a loop written out by hand."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import authors_vs_foresight as avf  # noqa: E402


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert avf.main(["--work", str(tmp_path), "--steps", "15"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "authors_vs_foresight: error: --steps must be a positive multiple of 10"
    assert avf.main(["--work", str(tmp_path)]) == 2
    assert "--authors DIR is required" in capsys.readouterr().err
    assert avf.main(["--work", str(tmp_path), "--authors", str(tmp_path)]) == 2
    assert "no train.py" in capsys.readouterr().err
    assert avf.main(["--work", str(tmp_path), "--report-only", "--objectives", "ntp,mtp"]) == 2
    assert "unknown mtp" in capsys.readouterr().err
    args = avf.parse_args(["--work", str(tmp_path), "--report-only", "--objectives", "top"])
    assert args.objectives == ["top"] and args.steps == 300


def test_authors_command_uses_their_flags(tmp_path):
    args = avf.parse_args(["--work", str(tmp_path), "--report-only", "--steps", "20", "--batch-size", "8"])
    cmd = avf.authors_command(args, "top", tmp_path / "log.jsonl")
    flags = cmd[cmd.index("--") + 1:]
    assert flags[flags.index("--n_train") + 1] == "160"  # one epoch of steps x batch graphs
    assert "--use_top" in flags and "--no-compile" in flags and "--use_wandb" in flags
    assert "--use_top" not in avf.authors_command(args, "ntp", tmp_path / "log.jsonl")


def write_authors_log(path: Path, step_losses: list[float], accuracies: dict[int, float], final: float) -> None:
    """What the recorder writes for a run whose step k (1-based) has loss step_losses[k-1]."""
    rows = [{"kind": "meta", "params": 1234}]
    t = 0.0
    for s in range(10, len(step_losses) + 1, 10):
        t += 10 * 0.5 + (7.0 if s % 100 == 0 else 0.0)  # 0.5 s a step, 7 s for an evaluation
        row = {"t": t, "train/loss": sum(step_losses[:s]) / s, "train/acc": 0.0, "train/lr": 1e-4}
        if s in accuracies:
            row["test/accuracy"] = accuracies[s]
            row["test/token_1"] = [1.0, 2.0]  # tensors arrive as lists
        rows.append(row)
    rows.append({"t": t + 7.0, "test/accuracy": final, "train/loss": 0.0})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_authors_log_window_means_and_step_time(tmp_path):
    losses = [4.0 - 0.01 * k + (0.3 if k % 3 == 0 else 0.0) for k in range(200)]
    path = tmp_path / "authors-ntp.jsonl"
    write_authors_log(path, losses, {100: 12.0, 200: 50.0}, final=50.0)
    got = avf.parse_authors_log(path, 200)
    assert [s for s, _ in got["loss"]] == list(range(10, 201, 10))
    for s, mean in got["loss"]:
        assert mean == pytest.approx(sum(losses[s - 10:s]) / 10, abs=1e-9)
    assert got["s_per_step"] == pytest.approx(0.5)  # windows with an evaluation left out
    assert got["exact_match"] == pytest.approx(0.5) and got["params"] == 1234
    assert got["exact_match_curve"] == [(100, pytest.approx(0.12)), (200, pytest.approx(0.5))]
    with pytest.raises(ValueError, match="expected 31"):
        avf.parse_authors_log(path, 300)


def write_metrics(path: Path, losses: list[float], batch: int, seq: int, rate: float) -> None:
    rows = [{"kind": "meta", "step": 0, "params": 900, "total_params": 1000}]
    for k, loss in enumerate(losses, 1):
        rows.append({"kind": "train", "step": k, "loss": loss, "tokens": k * batch * seq, "tokens_per_s": rate})
        if k % 100 == 0:
            rows.append({"kind": "eval", "step": k, "exact_match": k / 400, "v1_acc": 0.5, "valid_arm": 1.0})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_foresight_metrics_and_table(tmp_path):
    losses = [3.0 + math.sin(k) for k in range(200)]
    path = tmp_path / "metrics.jsonl"
    write_metrics(path, losses, batch=8, seq=31, rate=8 * 31 / 0.25)
    got = avf.parse_foresight_metrics(path, 8)
    assert got["loss"][-1] == (200, pytest.approx(sum(losses[190:]) / 10))
    assert got["s_per_step"] == pytest.approx(0.25) and got["params"] == 1000
    assert got["exact_match"] == pytest.approx(0.5)

    theirs = {"loss": [(200, 2.0)], "exact_match": 0.25, "s_per_step": 0.5, "params": 2000, "exact_match_curve": []}
    ours = {**got, "loss": [(200, 3.0)]}
    text = avf.table({"top": {"authors": theirs, "foresight": ours}})
    ratio = [line for line in text.splitlines() if "foresight / authors" in line][0]
    assert ratio.split("|")[3:7] == [" 0.50 ", " 0.50 ", " 1.50 ", " 2.00 "]
    assert "| TOP | authors | 2,000 | 0.5000 | 2.0000 | 25.0 % |" in text
    # one side missing: its rows only, no ratio line, no crash
    assert "foresight / authors" not in avf.table({"ntp": {"foresight": ours}})


def test_top_targets_twin_against_a_written_out_loop():
    torch.manual_seed(0)
    bsz, steps, vocab, window = 3, 7, 11, 7
    targets = torch.randint(0, vocab, (bsz, steps))
    targets[:, :3] = -1  # the prefix positions carry no target
    seq = torch.cat((targets, -torch.ones((bsz, window), dtype=torch.long)), 1)  # (B, T + W), as their forward
    got = avf.top_targets(seq, vocab, window, pad_token_id=-1)
    assert got.shape == (bsz, steps, vocab) and got.dtype == torch.float16
    for b in range(bsz):
        for t in range(steps):
            for v in range(vocab):
                later = [u for u in range(t, seq.shape[1]) if seq[b, u] == v]
                d = later[0] - t if later else None
                want = float(window - d) if d is not None and d < window else float("-inf")
                assert got[b, t, v].item() == want, (b, t, v)


def test_check_table_flags_a_mismatch():
    row = {"B": 2, "T": 31, "V": 54, "H": 24, "targets_equal": True, "loss_fused": 5.3548722,
           "loss_twin": 5.3548708, "max_dx_diff": 3.4e-08, "max_dw_diff": 1.3e-07}
    text = avf.check_table([row, {**row, "targets_equal": False}])
    assert "| 2 | 31 | 54 | 24 | yes | 5.354872 | 5.354871 | 3.4e-08 | 1.3e-07 |" in text
    assert "| **no** |" in text


def test_graph_flag_and_data_of_another_graph(tmp_path, capsys):
    """--graph: bad values are one line; at a graph other than theirs the test graphs come from our generator (an
    independent draw, their test file is not needed) and both files hold graphs of that shape."""
    from foresight.data.stargraph import read_examples

    for bad, says in (("2,4", "three integers"), ("2,x,10", "three integers"), ("2,4,5", "too small")):
        assert avf.main(["--work", str(tmp_path), "--report-only", "--graph", bad]) == 2
        assert says in capsys.readouterr().err
    authors = tmp_path / "authors"
    authors.mkdir()
    (authors / "train.py").write_text("")
    assert avf.main(["--work", str(tmp_path), "--authors", str(authors), "--steps", "10"]) == 2  # theirs: no test file
    assert "no train.py or data/datasets/graphs" in capsys.readouterr().err
    args = avf.parse_args(["--work", str(tmp_path / "w"), "--authors", str(authors), "--graph", "2,4,10",
                           "--steps", "20", "--batch-size", "8", "--n-test", "5"])
    assert not args.theirs and (args.graph.deg, args.graph.path, args.graph.nodes) == (2, 4, 10)
    files = avf.prepare(args)
    train, test = read_examples(files["train"]), read_examples(files["test"])
    assert len(train) == 160 and len(test) == 5 and files["test"].name == "deg_2_path_4_nodes_10_test_5.txt"
    assert all(len(ex.path) == 4 and len(ex.edges) == 6 for ex in train + test)
    assert [ex.edges for ex in test] != [ex.edges for ex in train[:5]]
    flags = avf.authors_command(args, "ntp", tmp_path / "log.jsonl")
    assert flags[flags.index("--path_len") + 1] == "4" and flags[flags.index("--num_nodes") + 1] == "10"
    assert avf.foresight_recipe(args, files)["stargraph"]["path"] == 4
