"""Bad inputs and faults as a user meets them: each case runs ``foresight`` in a fresh folder and the table shows
its exit status and the last line on stderr (what the user sees), plus whether anything was left behind.

    .venv/bin/python benchmarks/fault_cases.py --out results/faults.md

Disk-full and read-only cases mount a small tmpfs and need root (they are listed as skipped otherwise). The
same cases are asserted in tests/train/test_safe_loading.py, test_run_folder.py and tests/cli/test_faults.py;
this script only shows them side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def seen(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip() and "\r" not in line and "it/s" not in line
             and "step/s" not in line]
    return lines[-1] if lines else "(nothing on stderr)"


def leftovers(root: Path) -> str:
    tmp = [p for p in root.rglob("*") if ".tmp" in p.name]
    return "none" if not tmp else ", ".join(str(p.relative_to(root)) for p in tmp[:3])


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
                ["eval", d / "run", "--perplexity", d / "data"]):
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
    yield "Ctrl-C during training", p.returncode, (p.stderr.read().strip().splitlines() or ["?"])[-1], leftovers(d)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from foresight.environment import describe

    env = describe("cpu")
    head = ["# Fault cases: what the user sees\n",
            f"{env.get('device')}, torch {env.get('torch')}, python {env.get('python')}, "
            f"commit {env.get('git_commit')}, "
            f"{env.get('date')}; command: `python benchmarks/fault_cases.py" + (f" --out {args.out}`" if args.out else
                                                                                  "`") + "\n",
            "| case | exit | what the user sees (last stderr line) | temporaries left |", "|---|---|---|---|"]
    print("\n".join(head), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for case, code, line, left in cases(Path(work)):
            line = line.replace(work, "<tmp>").replace("|", "\\|")
            rows.append(f"| {case} | {code} | {line} | {left} |")
            print(rows[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(head + rows) + "\n")


if __name__ == "__main__":
    main()
