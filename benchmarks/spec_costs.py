"""What verifying 1 + k tokens costs against a plain decoding step (the floor of a speculative step's cost).

    python benchmarks/spec_costs.py CHECKPOINT --data PREPARED_DIR [--ks 1,2,3,4] [--repeats 30]

After a prefill of a validation-split prompt, times (median of ``--repeats``, batch 1, KV cache): a plain
decoding step (trunk on 1 token + output head + argmax) and a verification step on 1 + k tokens (the same on
a block; the cache is cut back after each). With tau tokens per step the speed-up is at most
tau / (verify_k / plain); drafting costs come on top (``benchmarks/speculative.py`` reports them per step).
Writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from foresight.environment import cpu_name, describe
from foresight.train.lm import TrainableLM

sys.path.insert(0, str(Path(__file__).parent))
from speculative import prompts_from  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--ks", default="1,2,3,4")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm, _ = TrainableLM.from_checkpoint(args.checkpoint)
    model = lm.model
    ids = prompts_from(args.data, 1, args.prompt_len)
    caches = model.new_caches()
    model.trunk(ids, caches)  # prefill
    n = ids.shape[1]
    ks = [int(k) for k in args.ks.split(",")]

    def step(block):
        o = model.trunk(block, caches)
        model.lm_head(o.hidden).argmax(-1)
        for c in caches:
            c.truncate(n)

    plain = median_ms(lambda: step(ids[:, -1:]), args.repeats)
    verify = {k: median_ms(lambda k=k: step(ids[:, -1 - k :]), args.repeats) for k in ks}
    lines = [f"{args.checkpoint}: batch 1, prompt {n} tokens, {cpu_name()}, {args.threads} thread(s), "
             f"median of {args.repeats}", "", f"plain step: {plain:.1f} ms", ""]
    lines += [f"verify 1+{k}: {verify[k]:.1f} ms = {verify[k] / plain:.2f} plain steps; 1.5x needs tau >= "
              f"{1.5 * verify[k] / plain:.2f} before drafting costs (max {k + 1})" for k in ks]
    print("\n".join(lines))
    if args.out:
        record = {"checkpoint": str(args.checkpoint), "plain_ms": plain, "verify_ms": verify,
                  "threads": args.threads, "cpu": cpu_name(), **describe("cpu"),
                  "command": "python " + " ".join(sys.argv)}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
