"""The text workflow on the command line: tokenizer -> prepare -> train -> compare, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from foresight.cli.main import main
from foresight.data.demo_corpus import demo_files, stdlib_root

PARAGRAPHS = [f"Paragraph {i} talks about {w} and more {w}s; def f{i}(x): return x * {i}\n"
              for i, w in enumerate(["cats", "dogs", "trees", "rivers", "stars", "code", "words"] * 12)]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits (and on a busy machine, for long)
    yield
    torch.set_num_threads(before)


def _run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("cmd", [["tokenizer", "--help"], ["tokenizer", "train", "--help"],
                                 ["tokenizer", "info", "--help"], ["prepare", "--help"], ["compare", "--help"]])
def test_new_commands_have_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main(cmd)
    assert exc.value.code == 0 and "usage:" in capsys.readouterr().out


def test_text_workflow_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("\n\n".join(PARAGRAPHS[:40]))
    (tmp_path / "corpus" / "b.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in PARAGRAPHS[40:]))

    code, out, err = _run(["tokenizer", "train", "--input", "corpus", "--text-unit", "paragraph", "--vocab-size", 320,
                           "--out", "tok"], capsys)
    assert code == 0, err
    assert "byte-level BPE of 320 tokens on 84 documents" in out and (tmp_path / "tok" / "tokenizer.json").is_file()
    code, out, err = _run(["tokenizer", "info", "tok"], capsys)
    assert code == 0 and "vocabulary 320, end of document <|endoftext|> = 0" in out

    code, out, err = _run(["prepare", "--input", "corpus", "--text-unit", "paragraph", "--tokenizer", "tok",
                           "--out", "data", "--val-fraction", 0.25], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["documents"] == 84 and meta["splits"]["val"]["documents"] > 10
    assert f"prepared {meta['splits']['train']['tokens']:,} train tokens" in out and "skipped: nothing" in out

    recipe = {"task": "text", "text": {"data": "data", "seq_len": 16, "val_batches": 2},
              "model": {"hidden_size": 16, "n_layers": 1, "n_heads": 2, "intermediate_size": 32},
              "train": {"steps": 4, "batch_size": 2, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1, "log_every": 1,
                        "eval_every": 2, "device": "cpu"},
              "runs": {"ntp": [{"name": "ntp"}], "top": [{"name": "ntp"}, {"name": "top", "window": 16}]}}
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    code, out, err = _run(["train", "r.yaml", "--out", "runs/t"], capsys)
    assert code == 0, err
    assert "| ntp |" in out and "| top |" in out and "val loss" in out
    results = json.loads((tmp_path / "runs" / "t" / "top" / "result.json").read_text())
    assert results["steps"] == 4 and set(results["final"]) >= {"val_loss", "val_ppl", "val_top_loss"}
    # the same provenance as a star-graph cell (tasks.run.result_record): device, versions, commit, date
    assert {"device", "device_name", "torch", "cuda", "triton", "python", "foresight", "git_commit", "date",
            "total_params", "skipped_steps", "tokens_per_s_wall"} <= set(results) and results["date"][:2] == "20"

    code, out, err = _run(["compare", "runs/t/ntp", "runs/t/top", "--out", "cmp", "--x", "tokens"], capsys)
    assert code == 0, err
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table in out
    header = table.splitlines()[0]
    assert "train ntp" in header and "train top" in header and "val ppl" in header
    rows = [line for line in table.splitlines() if line.startswith("| ntp") or line.startswith("| top")]
    assert len(rows) == 2 and rows[0].split("|")[6].strip() == "—"  # NTP has no TOP loss
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = _run(["compare", "runs/t"], capsys)  # a folder of runs, written next to them
    assert code == 0, err
    assert (tmp_path / "runs" / "t" / "compare.png").is_file()


def test_demo_corpus_is_deterministic_and_offline(tmp_path, capsys):
    files = demo_files(max_bytes=300_000)
    assert files == demo_files(max_bytes=300_000)
    assert files == sorted(files, key=lambda p: p.relative_to(stdlib_root()).as_posix())
    assert sum(p.stat().st_size for p in files) <= 300_000
    assert not any({"test", "tests", "site-packages"} & set(p.relative_to(stdlib_root()).parts) for p in files)
    code, out, err = _run(["tokenizer", "train", "--demo", "--demo-mb", 0.3, "--vocab-size", 400,
                           "--out", tmp_path / "tok"], capsys)
    assert code == 0, err
    code, out, err = _run(["prepare", "--demo", "--demo-mb", 0.3, "--tokenizer", tmp_path / "tok",
                           "--out", tmp_path / "demo"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "demo" / "meta.json").read_text())
    assert meta["input"]["corpus"] == "python-stdlib" and meta["settings"]["val_fraction"] == 0.05
    assert all(s["path"].startswith("stdlib/") for s in meta["sources"])


@pytest.mark.parametrize("args, needle", [
    (["tokenizer", "train", "--vocab-size", "300", "--out", "t"], "exactly one of --input or --demo"),
    (["tokenizer", "train", "--demo", "--input", "x", "--vocab-size", "300", "--out", "t"], "exactly one of"),
    (["tokenizer", "train", "--input", "corpus.txt", "--vocab-size", "10", "--out", "t"], "at least 257"),
    (["tokenizer", "train", "--input", "missing.txt", "--vocab-size", "300", "--out", "t"], "no such file"),
    (["tokenizer", "info", "nowhere"], "tokenizer not found"),
    (["prepare", "--input", "corpus.txt", "--tokenizer", "nowhere", "--out", "d"], "tokenizer not found"),
    (["prepare", "--input", "empty.txt", "--tokenizer", "tok", "--out", "d"], "no documents"),
    (["prepare", "--input", "bad.txt", "--tokenizer", "tok", "--out", "d"], "invalid UTF-8"),
    (["prepare", "--input", "corpus.txt", "--tokenizer", "tok", "--out", "d", "--val-fraction", "1.5"], "[0, 1)"),
    (["compare", "no-such-run"], "no such run folder"),
    (["compare", "."], "holds none"),
    (["train", "text/tiny", "--set", "text.data=nowhere"], "foresight prepare --demo"),
    (["train", "text/tiny", "--set", "text.seq_len=0"], "text.seq_len"),
    (["train", "text/tiny", "--set", "text.verify_data=maybe"], "text.verify_data"),
    (["train", "text/tiny", "--set", "text.colour=red"], "unknown key text.colour"),
    (["train", "text/tiny", "--set", "runs.top={objectives: [{name: ntp}], modle: {}}"], "unknown key 'modle'"),
    (["train", "text/nope"], "text/tiny"),
])
def test_bad_input_is_one_clear_line(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("some text " * 50)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    if "tok" in args:
        main(["tokenizer", "train", "--input", "corpus.txt", "--vocab-size", "300", "--out", "tok"])
        capsys.readouterr()
    code, _, err = _run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("foresight: error:"), err
    assert needle in lines[0]
