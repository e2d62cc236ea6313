"""Bad inputs and faults as a user meets them: each case runs ``foresight`` in a fresh folder and the table shows
its exit status and the last line on stderr (what the user sees), plus whether anything was left behind.

    .venv/bin/python benchmarks/fault_cases.py --out results/faults.md
    .venv/bin/python benchmarks/fault_cases.py --only silent      # only the cases whose class or name matches

Issue 21's classes follow the earlier cases, each case named with its class (code runs, reads outside, data lost,
memory / hang, silent, traceback): every case prints its outcome, whatever it is. Cases that could allocate
gigabytes or hang run under a memory limit (``ulimit -v``) and a timeout, and say which of the two stopped them.

Disk-full and read-only cases mount a small tmpfs and need root (they are listed as skipped otherwise). The
same cases are asserted in tests/train/test_safe_loading.py, test_run_folder.py and tests/cli/test_faults.py;
this script only shows them side by side.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fault_table import (  # (beside this script, whose folder Python puts first on sys.path)
    COLUMNS,
    leftovers,
    run_table,
    seen,
)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["stargraph", "run", "smoke", "--runs", "ntp", "--set", "train.steps=4", "--set", "train.eval_every=0",
         "--set", "train.ckpt_every=2"]


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def foresight(*args, cwd: Path, wait: bool = True):
    cmd = [sys.executable, "-m", "foresight", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


class _Stopped:
    """What ``limited`` returns when the limit, not the program, ended the run."""

    def __init__(self, why: str, stderr: str = "") -> None:
        self.returncode, self.stderr, self.stdout = why, stderr, ""


def limited(*args, cwd: Path, stdin: str | None = None, mem_gb: float = 6, timeout: float = 120, python=None):
    """``foresight ARGS`` (or ``python -c CODE`` with ``python=CODE``) under an address-space limit and a
    timeout, stdin fed with ``stdin`` (a "y" answers transformers' trust_remote_code prompt)."""
    import resource

    def cap():
        limit = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    if python:  # a library call: the ForesightError it raises is what a Python caller sees, shown as its one line
        python = ("import sys\nfrom foresight.errors import ForesightError\ntry:\n    exec(" + repr(python) +
                  ")\nexcept ForesightError as e:\n    print(f'foresight: error: {e}', file=sys.stderr)\n"
                  "    sys.exit(2)\n")
    cmd = [sys.executable, "-c", python] if python else [sys.executable, "-m", "foresight", *map(str, args)]
    try:
        return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
                              input=stdin if stdin is not None else "", preexec_fn=cap)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return _Stopped(f"timeout {timeout:g} s", err)


def verdict(done) -> str:
    """The last stderr line, with what stopped it when it was the memory limit or the timeout."""
    line = seen(done)
    if isinstance(done.returncode, str):
        return f"[STOPPED: {done.returncode}] {line}"
    if "MemoryError" in done.stderr or "std::bad_alloc" in done.stderr or "DefaultCPUAllocator" in done.stderr:
        return f"[MEMORY LIMIT {line[:80]}]"
    if "Traceback" in done.stderr:
        return f"[TRACEBACK] {line}"
    return line


def mount_tmpfs(point: Path, opts: str) -> bool:
    point.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
                                                capture_output=True).returncode == 0


def cases(work: Path):
    """Yields (case, exit status, what the user sees, temporaries left)."""
    import torch

    def fresh(name: str) -> Path:
        d = work / name
        d.mkdir()
        return d

    trained = fresh("trained")
    base = foresight(*SMOKE, "--out", trained / "run", cwd=trained)
    assert base.returncode == 0, base.stderr
    ckpt = trained / "run" / "ntp"

    d = fresh("evil")
    marker = d / "ran"
    (d / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"lm": {"w": _Payload(str(marker))}, "config": {}}, d / "run" / "checkpoints" / "step_00000002.pt")
    for cmd in (["export", d / "run", "--out", d / "hf"], ["generate", d / "run", "--prompt-ids", "1 2"],
                ["eval", d / "run", "--tasks", "arc_easy", "--offline"]):
        done = foresight(*cmd, cwd=d)
        yield f"crafted .pt checkpoint: {cmd[0]}", done.returncode, seen(done) + (
            " [CODE RAN]" if marker.exists() else " [nothing ran]"), leftovers(d)
    (d / "out" / "ntp" / "checkpoints").mkdir(parents=True)
    (d / "out" / "ntp" / "checkpoints" / "step_00000002.pt").write_bytes(
        (d / "run" / "checkpoints" / "step_00000002.pt").read_bytes())
    done = foresight(*SMOKE, "--out", d / "out", "--resume", cwd=d)
    yield "crafted .pt checkpoint: stargraph run --resume", done.returncode, seen(done) + (
        " [CODE RAN]" if marker.exists() else " [nothing ran]"), leftovers(d)
    sharded = d / "sh" / "step_00000002"
    sharded.mkdir(parents=True)
    (sharded / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    (sharded / "trainer.safetensors").write_bytes((ckpt / "checkpoints" / "step_00000004.safetensors").read_bytes())
    done = foresight("generate", sharded, "--prompt-ids", "1 2", cwd=d)
    yield "crafted DCP .metadata: generate", done.returncode, seen(done) + (
        " [CODE RAN]" if marker.exists() else " [nothing ran]"), leftovers(d)
    hf = d / "hfidx"
    hf.mkdir()
    assert foresight("export", ckpt, "--out", hf, cwd=d).returncode == 0
    (hf / "model.safetensors").rename(hf / "a.safetensors")
    (hf / "foresight_complete.json").unlink()  # as a plain transformers folder: no completion record to check
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../../../../etc/passwd"}}))
    done = foresight("import", hf, "--out", d / "imp", cwd=d)
    yield "HF index shard ../../../../etc/passwd: import", done.returncode, seen(done), leftovers(d)

    d = fresh("used")
    assert foresight(*SMOKE, "--out", d / "run", cwd=d).returncode == 0
    done = foresight(*SMOKE, "--out", d / "run", cwd=d)
    yield "fresh run into a used folder", done.returncode, seen(done), leftovers(d)
    (d / "run" / "mine.txt").write_text("keep")
    done = foresight(*SMOKE, "--out", d / "run", "--overwrite", cwd=d)
    kept = (d / "run" / "mine.txt").exists()
    yield "--overwrite with a user file in the folder", done.returncode, f"exit 0; user file kept: {kept}", leftovers(d)
    done = foresight(*SMOKE, "--out", d / "typo", "--resume", cwd=d)
    yield "--resume on a mistyped folder", done.returncode, seen(done), leftovers(d)

    d = fresh("two")
    procs = [foresight(*SMOKE[:-2], "--set", "train.steps=40", "--out", d / "run", cwd=d, wait=False) for _ in range(2)]
    outs = [(p.wait(), p.stderr.read()) for p in procs]
    loser = next((err for code, err in outs if code != 0), "")
    yield "two runs started into one --out", sorted(c for c, _ in outs), (loser.strip().splitlines() or ["?"])[-1], \
        leftovers(d)

    d = fresh("kill")
    p = foresight(*SMOKE[:-4], "--set", "train.steps=400", "--set", "train.ckpt_every=20", "--out", d / "run",
                  cwd=d, wait=False)
    folder = d / "run" / "ntp" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(folder.glob("step_*")):
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = foresight(*SMOKE[:-4], "--set", "train.steps=400", "--set", "train.ckpt_every=20", "--out", d / "run",
                     "--resume", cwd=d)
    notes = [line for line in done.stderr.splitlines() if "stale lock" in line]
    yield "kill -9 mid-run, then --resume", done.returncode, (notes[0] if notes else "no note") + " (then trains on)", \
        leftovers(d)

    d = fresh("sigint")
    p = foresight(*SMOKE[:-4], "--set", "train.steps=4000", "--out", d / "run", cwd=d, wait=False)
    time.sleep(8)
    p.send_signal(signal.SIGINT)
    p.wait()
    said = [line for line in p.stderr.read().splitlines() if "SIGINT" in line or "stopped at" in line]
    yield "Ctrl-C during a star-graph run (a graceful stop)", p.returncode, " / ".join(said) or "?", leftovers(d)

    d = fresh("broken")
    assert foresight(*SMOKE, "--out", d / "run", cwd=d).returncode == 0
    newest = d / "run" / "ntp" / "checkpoints" / "step_00000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:500])
    done = foresight(*SMOKE, "--out", d / "run", "--resume", cwd=d)
    warn = [line for line in done.stderr.splitlines() if "broken" in line]
    yield "truncated newest checkpoint, --resume", done.returncode, (warn[0][:160] + " ...") if warn else seen(done), \
        leftovers(d)
    done = foresight(*SMOKE, "--out", d / "run", "--resume", "--set", "model.intermediate_size=48", cwd=d)
    yield "--resume with a different model shape", done.returncode, seen(done), leftovers(d)

    d = fresh("inputs")
    (d / "notes.yaml").write_text("mine")
    for case, cmd in [
        ("prepare --overwrite --out notes.yaml", ["prepare", "--demo", "--tokenizer", d / "tok", "--out",
                                                   d / "notes.yaml", "--overwrite"]),
        ("train.lr=1e6", [*SMOKE, "--set", "train.lr=1e6", "--out", d / "o"]),
        ("train.lr=.inf", [*SMOKE, "--set", "train.lr=.inf", "--out", d / "o"]),
        ("train.lr=1e300", [*SMOKE, "--set", "train.lr=1.0e+300", "--out", d / "o"]),
        ("stargraph.eval_batch_size=0", [*SMOKE, "--set", "stargraph.eval_batch_size=0", "--out", d / "o"]),
        ("--out is an existing file", [*SMOKE, "--out", d / "notes.yaml"]),
        ("--out below a file (ENOTDIR)", [*SMOKE, "--out", d / "notes.yaml" / "run"]),
        ("--out name too long", [*SMOKE, "--out", d / ("x" * 300)]),
        ("stargraph generate --out a folder (EISDIR)", ["stargraph", "generate", "--deg", "2", "--path", "3",
                                                        "--nodes", "10", "--count", "2", "--out", d]),
        ("generate --max-new-tokens 1000000000", ["generate", ckpt, "--prompt-ids", "1 2", "--max-new-tokens",
                                                  "1000000000"]),
        ("generate past the context (200 tokens)", ["generate", ckpt, "--prompt-ids", "1 2", "--max-new-tokens",
                                                    "200"]),
        ("generate --temperature -1", ["generate", ckpt, "--prompt-ids", "1 2", "--temperature", "-1"]),
    ]:
        done = foresight(*cmd, cwd=d)
        yield case, done.returncode, seen(done), leftovers(d)
    (d / "binary.yaml").write_bytes(bytes(range(128, 256)) * 4)
    done = foresight("train", d / "binary.yaml", cwd=d)
    yield "binary recipe file", done.returncode, seen(done), leftovers(d)

    d = fresh("disk")
    if mount_tmpfs(d / "small", "size=200k"):
        try:
            done = foresight(*SMOKE, "--out", d / "small" / "run", cwd=d)
            yield "disk full while checkpointing (200 kB tmpfs)", done.returncode, seen(done), leftovers(d / "small")
        finally:
            subprocess.run(["umount", "-l", str(d / "small")])
        if mount_tmpfs(d / "ro", "size=1m,ro"):
            try:
                done = foresight(*SMOKE, "--out", d / "ro" / "run", cwd=d)
                yield "read-only --out (tmpfs ro)", done.returncode, seen(done), leftovers(d)
            finally:
                subprocess.run(["umount", "-l", str(d / "ro")])
    else:
        yield "disk full / read-only", "-", "skipped: mounting a tmpfs needs root", "-"

    done = foresight("export", ckpt, "--out", d / "hf", cwd=d)
    modes = sorted({oct(p.stat().st_mode & 0o777) for p in (d / "hf").iterdir()})
    yield f"export file modes (umask {oct(os.umask(os.umask(0)))})", done.returncode, f"modes {modes}", leftovers(d)


# ------------------------------------------------------------------------------------------------- issue 21
TOP_RUN = ["stargraph", "run", "smoke", "--runs", "top", "--set", "train.steps=2", "--set", "train.eval_every=0",
           "--set", "stargraph.test_size=8"]
REMOTE_CODE = ("import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"
               "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
               "class EvilConfig(LlamaConfig):\n    model_type = 'evilmodel'\n"
               "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
               "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")


def _json_edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


class _Fixtures:
    """What several issue-21 cases start from, built once on first use."""

    def __init__(self, work: Path) -> None:
        self.work, self._cache = work, {}

    def _once(self, name, build):
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    def top_run(self) -> Path:  # a star-graph run with a TOP head, one checkpoint
        def build():
            d = self.work / "f-top"
            done = foresight(*TOP_RUN, "--out", d, cwd=self.work)
            assert done.returncode == 0, done.stderr
            return d
        return self._once("top", build)

    def hf(self) -> Path:  # its export, heads included
        def build():
            d = self.work / "f-hf"
            done = foresight("export", self.top_run() / "top", "--out", d, "--with-heads", cwd=self.work)
            assert done.returncode == 0, done.stderr
            return d
        return self._once("hf", build)

    def text(self) -> tuple[Path, Path]:  # a tokenizer folder and prepared data from it
        def build():
            from foresight.data.prepare import PrepareConfig, prepare
            from foresight.data.sources import Documents, expand_inputs
            from foresight.data.tokenizer import train_tokenizer

            d = self.work / "f-text"
            d.mkdir()
            texts = ["alpha beta gamma delta " * 5, "one two three four five " * 5, "print('hello world')\n" * 5]
            files = []
            for i in range(8):
                files.append(d / f"doc{i}.txt")
                files[-1].write_text(texts[i % 3] * 8)
            tok = train_tokenizer(texts, 300)
            tok.save(d / "tok")
            prepare(Documents(expand_inputs([str(f) for f in files])), tok, d / "data",
                    PrepareConfig(val_fraction=0.25), progress=False)
            return d / "tok", d / "data"
        return self._once("text", build)

    def text_recipe(self, data: Path, folder: Path, **text) -> Path:
        recipe = folder / "r.yaml"
        recipe.write_text(json.dumps({
            "task": "text", "text": {"data": str(data), "seq_len": 8, "val_batches": 0, **text},
            "model": {"hidden_size": 8, "n_layers": 1, "n_heads": 2, "intermediate_size": 16},
            "train": {"steps": 2, "batch_size": 2, "device": "cpu", "eval_every": 0},
            "runs": {"ntp": [{"name": "ntp"}]}}))
        return recipe


def _code_runs(fx: _Fixtures, fresh):
    """A folder whose config has ``auto_map`` and a .py file: does anything run when stdin says "y"?"""
    def remote_folder(d: Path, kind: str) -> Path:
        marker = d / "ran"
        folder = d / kind
        if kind == "tok":
            shutil.copytree(fx.text()[0], folder)
            (folder / "tokenizer.json").unlink()  # no fast file: transformers builds the class auto_map names
            _json_edit(folder / "tokenizer_config.json", tokenizer_class="EvilTokenizer",
                       auto_map={"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]})
        else:
            shutil.copytree(fx.hf(), folder)
            # a model type transformers does not know: only the folder's code can name its classes
            _json_edit(folder / "config.json", model_type="evilmodel",
                       auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
        (folder / "evil.py").write_text(REMOTE_CODE.format(marker=str(marker)))
        return folder

    def ran(d: Path) -> str:
        return " [CODE RAN]" if (d / "ran").exists() else " [nothing ran]"

    d = fresh("21-code-tok-info")
    done = limited("tokenizer", "info", remote_folder(d, "tok"), cwd=d, stdin="y\n")
    yield "code runs: tokenizer info on an auto_map tokenizer, y on stdin", done.returncode, verdict(done) + ran(d), \
        leftovers(d)
    d = fresh("21-code-prepare")
    done = limited("prepare", "--input", fx.text()[1].parent / "doc0.txt", "--tokenizer", remote_folder(d, "tok"),
                   "--out", d / "data", cwd=d, stdin="y\n")
    yield "code runs: prepare --tokenizer auto_map folder, y on stdin", done.returncode, verdict(done) + ran(d), \
        leftovers(d)
    d = fresh("21-code-wrapper")
    folder = remote_folder(d, "hf")
    done = limited(cwd=d, stdin="y\n", python=f"from foresight import ForesightModel; "
                                                f"ForesightModel.from_pretrained({str(folder)!r})")
    yield "code runs: ForesightModel.from_pretrained auto_map folder, y on stdin", done.returncode, \
        verdict(done) + ran(d), leftovers(d)


def _reads_outside(fx: _Fixtures, fresh):
    d = fresh("21-out-wrapper-index")
    secret = d / "secret.safetensors"
    shutil.copy(fx.hf() / "model.safetensors", secret)
    folder = d / "w"
    shutil.copytree(fx.hf(), folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../secret.safetensors"}}))
    done = limited(cwd=d, python="from transformers import AutoModelForCausalLM; from foresight import wrap; "
                                 "from foresight.wrapper.io import load_into; "
                                 f"m = wrap(AutoModelForCausalLM.from_pretrained({str(fx.hf())!r}), "
                                 "[{'name': 'ntp'}, {'name': 'top', 'window': 8}]); "
                                 f"load_into(m, {str(folder)!r}); print('loaded')")
    yield "reads outside: wrapper load_into, index shard ../secret", done.returncode, verdict(done) + \
        (" [loaded the file outside]" if "loaded" in done.stdout else ""), leftovers(d)

    d = fresh("21-out-tokmodel")
    folder = d / "hf"
    shutil.copytree(fx.hf(), folder)
    private = d / "private.model"
    private.write_bytes(b"not for sharing")
    private.chmod(0o600)
    (folder / "tokenizer.model").symlink_to(private)
    done = limited("import", folder, "--out", d / "imp", cwd=d)
    copied = [p for p in (d / "imp").rglob("tokenizer.model")] if (d / "imp").exists() else []
    mode = oct(copied[0].stat().st_mode & 0o777) if copied else "not copied"
    yield "reads outside: import with tokenizer.model -> a 0600 file elsewhere", done.returncode, \
        f"{verdict(done)} [copy: {mode}]", leftovers(d)

    for name, target in [("../x", "../x_00000.bin"), ("an absolute path", None)]:
        d = fresh(f"21-out-meta-{len(name)}")
        data = d / "data"
        shutil.copytree(fx.text()[1], data)
        outside = d / "x_00000.bin"
        shutil.copy(data / "train_00000.bin", outside)
        meta = json.loads((data / "meta.json").read_text())
        meta["splits"]["train"]["shards"][0]["file"] = target or str(outside)
        (data / "meta.json").write_text(json.dumps(meta))
        done = limited("train", fx.text_recipe(data, d), "--out", d / "run", cwd=d)
        yield f"reads outside: meta.json shard named {name}, train", done.returncode, verdict(done), leftovers(d)



def _data_lost(fx: _Fixtures, fresh):
    d = fresh("21-lost-symlink")
    other = d / "other"
    assert foresight(*SMOKE, "--out", other, cwd=d).returncode == 0
    assert foresight(*SMOKE, "--out", d / "run", cwd=d).returncode == 0
    shutil.rmtree(d / "run" / "ntp")
    (d / "run" / "ntp").symlink_to(other / "ntp")
    done = limited(*SMOKE, "--out", d / "run", "--overwrite", cwd=d)
    kept = (other / "ntp" / "checkpoints" / "step_00000004.safetensors").exists()
    yield "data lost: --overwrite with run/ntp a symlink to another run", done.returncode, \
        f"{verdict(done)} [other run's checkpoints kept: {kept}]", leftovers(d)

    d = fresh("21-lost-names")
    assert foresight(*SMOKE, "--out", d / "run", cwd=d).returncode == 0
    (d / "run" / "mine").mkdir()
    for name in ("mine/metrics.jsonl", "compare.md", ".draft.tmp"):
        (d / "run" / name).write_text("the user's")
    done = limited(*SMOKE, "--out", d / "run", "--overwrite", cwd=d)
    kept = [n for n in ("mine/metrics.jsonl", "compare.md", ".draft.tmp") if (d / "run" / n).exists()]
    yield "data lost: --overwrite beside user files named like foresight's", done.returncode, \
        f"{verdict(done)} [kept: {', '.join(kept) or 'none'}]", leftovers(d)

    d = fresh("21-lost-eacces")
    assert foresight(*SMOKE, "--out", d / "run", cwd=d).returncode == 0
    newest = d / "run" / "ntp" / "checkpoints" / "step_00000004.safetensors"
    before = newest.read_bytes()
    newest.chmod(0)
    args = [*SMOKE, "--set", "train.steps=6", "--out", d / "run", "--resume", "--allow-changes"]
    if os.geteuid() == 0:  # root reads a 0000 file: resume as the unprivileged user nobody, who cannot
        for p in [d, *d.parents]:
            if p == Path("/"):
                break
            p.chmod(p.stat().st_mode | 0o055)  # (the temporary folders are 0700: let nobody in)
        subprocess.run(["chown", "-R", "65534:65534", str(d)], check=True)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "foresight",
               *map(str, args)]
        done = subprocess.run(cmd, cwd=d, env={**_env(), "HOME": str(d)}, capture_output=True, text=True,
                              timeout=300)
    else:
        done = limited(*args, cwd=d)
    newest.chmod(0o644)
    kept = newest.read_bytes() == before
    yield "data lost: EACCES on the newest checkpoint, --resume", done.returncode, \
        f"{verdict(done)} [unreadable checkpoint unchanged: {kept}]", leftovers(d)

    for what, args in [("export", ["export", fx.top_run() / "top", "--out"]),
                       ("prepare --overwrite", ["prepare", "--input", fx.text()[1].parent / "doc0.txt", "--tokenizer",
                                                fx.text()[0], "--overwrite", "--out"])]:
        d = fresh(f"21-lost-kill-{what.split()[0]}")
        out = d / "out"
        if what.startswith("prepare"):
            shutil.copytree(fx.text()[1], out)
        p = subprocess.Popen([sys.executable, "-m", "foresight", *map(str, args), str(out)], cwd=d, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None and not any(d.rglob("*.tmp*")):
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if what == "export":
            done = limited("import", out, "--out", d / "imp", cwd=d)
            yield "data lost: kill -9 during export, then import", done.returncode, verdict(done), leftovers(d)
        else:
            meta = (out / "meta.json").is_file()
            yield "data lost: kill -9 during prepare --overwrite", p.returncode, \
                f"meta.json afterwards: {meta}; files: {len(list(out.glob('*'))) if out.exists() else 0}", leftovers(d)

    d = fresh("21-lost-force")
    plain = d / "plain"
    assert foresight(*SMOKE, "--out", plain, cwd=d).returncode == 0
    hf = d / "hf"
    shutil.copytree(fx.hf(), hf)
    done = limited("export", plain / "ntp", "--out", hf, "--force", cwd=d)
    imported = limited("import", hf, "--out", d / "imp", cwd=d)
    said = (imported.stdout.strip().splitlines() or [""])[-1][-80:]  # import's summary: which heads it loaded
    yield "data lost: export --force (no heads) over an export with heads, import", imported.returncode, \
        f"heads file left: {(hf / 'foresight_heads.safetensors').exists()}; import: {verdict(imported)[:80]}; " \
        f"{said}", leftovers(d)

    d = fresh("21-lost-import-into")
    (d / "imp" / "tokenizer").mkdir(parents=True)
    (d / "imp" / "tokenizer" / "stale.json").write_text("old")
    (d / "imp" / "notes.txt").write_text("mine")
    done = limited("import", fx.hf(), "--out", d / "imp", cwd=d)
    yield "data lost: import into an existing folder", done.returncode, \
        f"{verdict(done)} [notes kept: {(d / 'imp' / 'notes.txt').exists()}; stale tokenizer file: " \
        f"{(d / 'imp' / 'tokenizer' / 'stale.json').exists()}]", leftovers(d)

    d = fresh("21-lost-eval-typo")
    run = d / "run"
    shutil.copytree(fx.top_run(), run)
    (run / "top" / "hf_export").mkdir()
    (run / "top" / "hf_export" / "mine.txt").write_text("mine")
    done = limited("eval", run / "top", "--backend", "hf", "--tasks", "no_such_task_xyz", "--offline", cwd=d,
                   timeout=180)
    yield "data lost: eval --backend hf with a mistyped --tasks", done.returncode, \
        f"{verdict(done)} [hf_export/mine.txt kept: {(run / 'top' / 'hf_export' / 'mine.txt').exists()}]", \
        leftovers(d)


def _memory_hang(fx: _Fixtures, fresh):
    d = fresh("21-mem-config")
    folder = d / "hf"
    shutil.copytree(fx.hf(), folder)
    _json_edit(folder / "config.json", vocab_size=2_000_000, hidden_size=4096, head_dim=2048)
    done = limited("import", folder, "--out", d / "imp", cwd=d, mem_gb=6, timeout=120)
    yield "memory: config.json vocab 2e6 x width 4096 (import, 6 GB limit)", done.returncode, verdict(done), \
        leftovers(d)

    d = fresh("21-mem-ckpt")
    from foresight.train.state_file import save_state

    cfg = {"model": {"vocab_size": 2_000_000, "hidden_size": 4096, "n_layers": 1, "n_heads": 32,
                     "intermediate_size": 64, "max_seq_len": 16}, "objectives": [{"name": "ntp"}]}
    save_state({"lm": {}, "config": cfg, "step": 1}, d / "step_00000001.safetensors")
    size = (d / "step_00000001.safetensors").stat().st_size
    done = limited("generate", d / "step_00000001.safetensors", "--prompt-ids", "1 2", cwd=d, mem_gb=6)
    yield f"memory: a {size}-byte checkpoint asking for 2e6 x 4096 (generate, 6 GB limit)", done.returncode, \
        verdict(done), leftovers(d)

    d = fresh("21-mem-yaml")
    # seven levels of ten-fold aliases (10^7 leaves) inside a value the recipe keeps (an objective's weight)
    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
                                                       for i in range(1, 7)]
    lines = ["task: stargraph", "stargraph: {test_size: 8, train_size: 64}", "train: {steps: 1, eval_every: 0}",
             "model: {hidden_size: 16, n_layers: 1, n_heads: 2, intermediate_size: 32}",
             "runs: {ntp: [{name: ntp}, {name: top, weight: [" + ", ".join(levels) + "]}]}"]
    (d / "bomb.yaml").write_text("\n".join(lines) + "\n")
    done = limited("stargraph", "run", d / "bomb.yaml", "--out", d / "run", cwd=d, mem_gb=4, timeout=120)
    yield f"memory: a {len(chr(10).join(lines))}-byte recipe of nested YAML aliases", done.returncode, verdict(done), \
        leftovers(d)

    d = fresh("21-hang-mtp")
    from foresight.train.state_file import load_state

    state = load_state(next((fx.top_run() / "top" / "checkpoints").glob("step_*")))
    state["config"]["objectives"] = [{"name": "ntp"}, {"name": "mtp", "n": 1000000}]
    save_state({"lm": state["lm"], "config": state["config"], "step": state["step"]}, d / "step_00000002.safetensors")
    done = limited("generate", d / "step_00000002.safetensors", "--prompt-ids", "1 2", cwd=d, mem_gb=6, timeout=90)
    yield "hang: checkpoint config with MTP n: 1000000 (generate, 90 s limit)", done.returncode, verdict(done), \
        leftovers(d)

    d = fresh("21-mem-drafts")
    done = limited("generate", fx.top_run() / "top", "--prompt-ids", "1 2", "--max-new-tokens", "4", "--speculative",
                   "auto", "--drafts", "1000000000", cwd=d, mem_gb=6)
    yield "memory: generate --drafts 1000000000 (6 GB limit)", done.returncode, verdict(done), leftovers(d)


def _silent(fx: _Fixtures, fresh):
    from safetensors.torch import load_file, save_file

    d = fresh("21-silent-heads")
    folder = d / "hf"
    shutil.copytree(fx.hf(), folder)
    heads_path = folder / "foresight_heads.safetensors"
    from safetensors import safe_open

    with safe_open(str(heads_path), framework="pt") as f:
        metadata = f.metadata()
    heads = load_file(str(heads_path))
    heads = {k: v[:, : v.shape[1] // 2].contiguous() for k, v in heads.items()}  # saved for a narrower model
    save_file(heads, str(heads_path), metadata=metadata)
    done = limited("import", folder, "--out", d / "imp", cwd=d)
    yield "silent: heads file of the wrong shapes, import", done.returncode, verdict(done) + \
        (" [fresh heads]" if "fresh" in done.stdout else ""), leftovers(d)

    for what, override in [("TOP window", None), ("data seed", "stargraph.seed=3"), ("lr", "train.lr=0.002")]:
        d = fresh(f"21-silent-resume-{what.split()[-1]}")
        shutil.copytree(fx.top_run(), d / "run")
        if override is None:
            recipe = json.loads((d / "run" / "recipe.json").read_text())
            recipe["runs"]["top"][1]["window"] = 16
            (d / "r.yaml").write_text(json.dumps(recipe))
            done = limited("stargraph", "run", d / "r.yaml", "--runs", "top", "--out", d / "run", "--resume", cwd=d)
        else:
            done = limited(*TOP_RUN, "--set", override, "--out", d / "run", "--resume", cwd=d)
        yield f"silent: star-graph --resume with a changed {what}", done.returncode, verdict(done), leftovers(d)


def _tracebacks(fx: _Fixtures, fresh):
    for key, value in [("vocab_size", "x"), ("hidden_size", None), ("num_attention_heads", 0),
                       ("rms_norm_eps", float("nan")), ("architectures", 5)]:
        d = fresh(f"21-tb-config-{key}")
        folder = d / "hf"
        shutil.copytree(fx.hf(), folder)
        _json_edit(folder / "config.json", **{key: value})
        done = limited("import", folder, "--out", d / "imp", cwd=d)
        yield f"traceback: config.json {key}={json.dumps(value)}, import", done.returncode, verdict(done), leftovers(d)
    for text in ["[]", '{"weight_map": ["model.safetensors"]}', '{"weight_map": {"x": ["a"]}}']:
        d = fresh(f"21-tb-index-{len(text)}")
        folder = d / "hf"
        shutil.copytree(fx.hf(), folder)
        (folder / "model.safetensors.index.json").write_text(text)
        done = limited("import", folder, "--out", d / "imp", cwd=d)
        yield f"traceback: index file {text}, import", done.returncode, verdict(done), leftovers(d)
    for name, raw in [("tokenizer.json", b"\xff\xfe"), ("tokenizer_config.json", b"\xff{}"),
                      ("tokenizer_config.json", b"[1]")]:
        d = fresh(f"21-tb-tok-{len(raw)}-{name[:12]}")
        shutil.copytree(fx.text()[0], d / "tok")
        (d / "tok" / name).write_bytes(raw)
        done = limited("tokenizer", "info", d / "tok", cwd=d)
        yield f"traceback: {name} = {raw!r}, tokenizer info", done.returncode, verdict(done), leftovers(d)
    for what, change in [("tokenizer a list", lambda m: m.update(tokenizer=[1])),
                         ("shards[0] a string", lambda m: m["splits"]["train"]["shards"].__setitem__(0, "x")),
                         ("tokens a string", lambda m: m["splits"]["train"].update(tokens="5")),
                         ("dtype a list", lambda m: m.update(dtype=["uint16"]))]:
        d = fresh(f"21-tb-meta-{what.split()[0]}-{len(what)}")
        shutil.copytree(fx.text()[1], d / "data")
        meta = json.loads((d / "data" / "meta.json").read_text())
        change(meta)
        (d / "data" / "meta.json").write_text(json.dumps(meta))
        done = limited("train", fx.text_recipe(d / "data", d), "--out", d / "run", cwd=d)
        yield f"traceback: meta.json {what}, train", done.returncode, verdict(done), leftovers(d)
    for line in ['{"kind": "train", "step": "x"}', "[1]", '{"kind": "meta", "step": 0, "params": "many"}']:
        d = fresh(f"21-tb-metrics-{len(line)}")
        shutil.copytree(fx.top_run(), d / "run")
        with open(d / "run" / "top" / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
        done = limited(*TOP_RUN, "--out", d / "run", "--resume", cwd=d)
        yield f"traceback: metrics.jsonl line {line}, --resume", done.returncode, verdict(done), leftovers(d)
        done = limited("compare", d / "run", "--out", d / "cmp", cwd=d)
        yield f"traceback: metrics.jsonl line {line}, compare", done.returncode, verdict(done), leftovers(d)
    d = fresh("21-tb-micro")
    done = limited(*SMOKE, "--set", "train.micro_batch_size=0", "--out", d / "run", cwd=d)
    yield "traceback: train.micro_batch_size=0", done.returncode, verdict(done), leftovers(d)
    d = fresh("21-tb-lock")
    (d / "run").mkdir()
    (d / "run" / ".foresight.lock").write_text(json.dumps({"pid": 10**30, "host": socket.gethostname(),
                                                           "token": "x"}))
    done = limited(*SMOKE, "--out", d / "run", cwd=d)
    yield "traceback: a lock file whose pid does not fit an int", done.returncode, verdict(done), leftovers(d)
    d = fresh("21-tb-prompt")
    done = limited("generate", fx.top_run() / "top", "--prompt-ids", "1 999999", cwd=d)
    yield "traceback: a prompt id beyond the vocabulary", done.returncode, verdict(done), leftovers(d)
    d = fresh("21-tb-ppl")
    done = limited("eval", fx.top_run() / "top", "--perplexity", fx.text()[1], "--seq-len", "8", cwd=d)
    yield "traceback: eval --perplexity on data with a larger vocabulary", done.returncode, verdict(done), leftovers(d)


# (the classes a group's case names start with, the group): --only picks groups by these labels
def _paths(fx: _Fixtures, fresh):
    """More code-runs and reads-outside cases, one per reader (benchmarks/fault_cases_paths.py), y on stdin."""
    import fault_cases_paths  # (beside this file)

    for case, code, line, left in fault_cases_paths.cases(fresh("paths")):
        yield f"paths: {case}", code, line, left


ISSUE21 = [("code runs", _code_runs), ("reads outside", _reads_outside), ("data lost", _data_lost),
           ("memory / hang", _memory_hang), ("silent", _silent), ("traceback", _tracebacks), ("paths", _paths)]


def issue21_cases(work: Path, only: str | None):
    """Issue 21's classes. ``only``: the groups whose label holds it (or that it starts with); anything else runs
    every group and shows the cases whose name holds it (a group's cases run one after the other, whole)."""
    fx = _Fixtures(work)
    numbers = itertools.count()

    def fresh(name: str) -> Path:
        d = work / f"{name}-{next(numbers)}"  # one new folder per case, whatever its name
        d.mkdir()
        return d

    def runs(label: str) -> bool:
        if only is not None and only in "earlier":
            return False
        if only is None or only in label or label in only:  # "silent", "traceback: config.json"
            return True
        return not any(only in x or x in only for x, _ in ISSUE21)  # a case name: every group runs, matches show

    for label, group in ISSUE21:
        if not runs(label):
            continue
        for case in group(fx, fresh):
            if only is None or only in case[0] or only in label:
                yield case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--only", metavar="SUBSTRING",
                        help="run only the cases whose class or name holds SUBSTRING (a class: code runs, reads "
                             "outside, data lost, memory, hang, silent, traceback; 'earlier' for the cases before "
                             "issue 21)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # fault_cases_paths
    from foresight.environment import describe

    env = describe("cpu")
    head = ["# Fault cases: what the user sees\n",
            f"{env.get('device')}, torch {env.get('torch')}, python {env.get('python')}, "
            f"commit {env.get('git_commit')}, "
            f"{env.get('date')}; command: `python benchmarks/fault_cases.py" + (f" --out {args.out}`" if args.out else
                                                                                  "`") + "\n",
            *COLUMNS]

    def all_cases(work: Path):
        earlier = cases(work) if args.only is None or args.only in "earlier" else iter(())
        return itertools.chain(earlier, issue21_cases(work, args.only))

    run_table(head, all_cases, args.out)

if __name__ == "__main__":
    main()
