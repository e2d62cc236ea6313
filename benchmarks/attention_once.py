"""Attention written once (issue 25): the cost of the shared ``layers.attend`` against the three old copies.

    python benchmarks/attention_once.py --baseline c2b4354 --rounds 5

Three loops, 1 thread, each side in its own process (PYTHONPATH = the baseline's ``src/`` from ``git archive``,
or this checkout's), the sides alternated in every round (a shared machine drifts):

- ``decode``: B = 1, 3 blocks (d 64, 4 heads, 2 KV heads), prefill 8 then 128 single-token steps on a KV cache
  (the plain decoding fast path: no mask, no copy but the cache write);
- ``stacked``: ``StackedBlocks`` of 3 heads, B = 1, 128 single-token steps on one cache (MTP drafting);
- ``train``: forward + backward of 3 blocks on (32, 24, 64), plus the last block's ``forward_rows`` on 8 columns.

Prints the median seconds per loop of each side and new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import torch
from foresight.generate.stacked import StackedBlocks
from foresight.model import KVCache, ModelConfig
from foresight.model.layers import Block, Rotary
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = ModelConfig(vocab_size=16, hidden_size=64, n_layers=3, n_heads=4, n_kv_heads=2, intermediate_size=192)
blocks = [Block(cfg) for _ in range(3)]
rope = Rotary(cfg.head_dim, cfg.rope_theta, 512)

def decode():
    caches = [KVCache() for _ in blocks]
    x = torch.randn(1, 8, 64)
    with torch.no_grad():
        for t in [8] + [1] * 128:
            cos, sin = rope(t, x.device, caches[0].offset)
            h = x[:, :t]
            for blk, c in zip(blocks, caches):
                h = blk(h, cos, sin, c)
            x = h[:, -1:]

def stacked():
    s, cache = StackedBlocks(blocks), KVCache()
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        for _ in range(128):
            cos, sin = rope(1, x.device, cache.offset)
            x = s(x, cos, sin, cache)[0]

def train():
    x = torch.randn(32, 24, 64, requires_grad=True)
    cos, sin = rope(24, x.device)
    cols = torch.tensor([3, 5, 8, 11, 15, 19, 22, 23])
    h = x
    for blk in blocks[:-1]:
        h = blk(h, cos, sin)
    loss = blocks[-1](h, cos, sin).square().mean() + blocks[-1](h, cos, sin, cols=cols).square().mean()
    loss.backward()

out = {}
for name, fn in [("decode", decode), ("stacked", stacked), ("train", train)]:
    for _ in range(2):
        fn()
    times = []
    for _ in range(int(sys.argv[1])):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    out[name] = min(times)
print(json.dumps(out))
"""


def export(commit: str, into: Path) -> Path:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def measure(src: Path, reps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(reps)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="c2b4354")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5, help="timed loops per process (the minimum is kept)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"old": export(args.baseline, Path(tmp)), "new": ROOT / "src"}
        runs = {"old": [], "new": []}
        for _ in range(args.rounds):
            for side, src in sides.items():
                runs[side].append(measure(src, args.reps))
    for name in runs["old"][0]:
        old = statistics.median(r[name] for r in runs["old"])
        new = statistics.median(r[name] for r in runs["new"])
        ratios = [n[name] / o[name] for o, n in zip(runs["old"], runs["new"])]
        print(f"{name:8s} old {old * 1e3:8.2f} ms  new {new * 1e3:8.2f} ms"
              f"  new/old median {statistics.median(ratios):.3f}  (rounds {min(ratios):.3f}..{max(ratios):.3f})")


if __name__ == "__main__":
    main()
