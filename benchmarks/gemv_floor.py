"""Where a plain decoding step's time goes on a CPU: the read rate of one-row matrix products (issue 23, item 1).

A greedy step (batch 1, one new token) multiplies one row by every weight matrix of the model, so it reads every
weight once; its floor is (weight bytes) / (read bandwidth). ``benchmarks/decode_costs.py`` measured SmolLM2-135M's
plain step at 2.7x that floor. This script asks which part is the kernels: for each of SmolLM2's Linear shapes it
streams enough copies of the weight to leave the last-level cache (so every product reads DRAM, as in the model),
and measures GB/s of weight read for

- ``sum``: ``w.sum()``, a plain streaming read (the bandwidth the floor assumes);
- ``mkl``: ``F.linear(x, w)`` with x of shape (1, K), PyTorch's default CPU path (MKL sgemm);
- ``mv``: ``torch.mv(w, x)`` (MKL sgemv: the matrix-vector kernel itself);
- ``onednn``: the oneDNN inner product on a weight pre-packed once (``foresight.generate.packed``);
- ``onednn-bf16``: the same with bf16 weights (half the bytes; not exact, so not the default),

at 1 and 2 threads, interleaved round by round, medians. Then the share of the step that is Linears: the model's
plain step against the sum of its Linears' times at the ``mkl`` rates.

    python benchmarks/gemv_floor.py --out results/decode/gemv-floor-cpu.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_costs import cpu_name  # noqa: E402

from foresight.errors import ForesightError  # noqa: E402
from foresight.generate.packed import mkldnn_linear_available  # noqa: E402

# SmolLM2-135M (hidden 576, 9 heads of 64, 3 kv heads, MLP 1536, vocabulary 49,152, 30 layers): (out, in, per model)
SHAPES = {"q/o 576x576": (576, 576, 60), "k/v 192x576": (192, 576, 60), "gate/up 1536x576": (1536, 576, 60),
          "down 576x1536": (576, 1536, 30), "head 49152x576": (49152, 576, 1)}
KERNELS = ("sum", "mkl", "mv", "onednn", "onednn-bf16")


def copies_for(out: int, inp: int, cache_mib: int) -> int:
    """Enough copies of an (out, inp) fp32 matrix to exceed 4x the last-level cache (every read from DRAM)."""
    return max(2, -(-4 * cache_mib * 2**20 // (out * inp * 4)))


def kernel_fn(name: str, weights: list[torch.Tensor]):
    """A function running kernel ``name`` once over every copy; its bytes are the fp32 (or bf16) weights read."""
    k = weights[0].shape[1]
    x = torch.randn(1, k)
    dtype = torch.bfloat16 if name == "onednn-bf16" else torch.float32
    nbytes = sum(w.numel() for w in weights) * torch.finfo(dtype).bits // 8
    if name == "sum":
        return lambda: [w.sum() for w in weights], nbytes
    if name == "mkl":
        return lambda: [F.linear(x, w) for w in weights], nbytes
    if name == "mv":
        v = x[0]
        return lambda: [torch.mv(w, v) for w in weights], nbytes
    packed = [torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), 1) for w in weights]
    xd = x.to(dtype)
    return lambda: [torch.ops.mkldnn._linear_pointwise(xd, p, None, "none", [], "") for p in packed], nbytes


def measure(threads: list[int], rounds: int, cache_mib: int) -> dict:
    """{(threads, shape, kernel): GB/s median over rounds}, kernels interleaved within each round."""
    rates: dict = {}
    for shape, (out, inp, _) in SHAPES.items():
        weights = [torch.randn(out, inp) for _ in range(copies_for(out, inp, cache_mib))]
        fns = {k: kernel_fn(k, weights) for k in KERNELS if not k.startswith("onednn") or mkldnn_linear_available()}
        for t in threads:
            torch.set_num_threads(t)
            for fn, _ in fns.values():
                fn()  # warm-up
            for _ in range(rounds):
                for k, (fn, nbytes) in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    rates.setdefault((t, shape, k), []).append(nbytes / (time.perf_counter() - t0) / 1e9)
        print(f"{shape}: " + ", ".join(f"{k} {statistics.median(rates[threads[0], shape, k]):.1f}" for k in fns)
              + f" GB/s at {threads[0]} thread(s)", file=sys.stderr, flush=True)
    return {key: statistics.median(v) for key, v in rates.items()}


def model_step(model_dir: Path | None, threads: list[int], rounds: int) -> dict:
    """Plain greedy step of the model (ms, median) per thread count, or {} without a model."""
    if model_dir is None:
        return {}
    from foresight.generate import generate
    from foresight.hf import import_hf

    lm = import_hf(model_dir)[0].eval()
    prompt = torch.randint(0, 1000, (1, 64))
    out = {}
    for t in threads:
        torch.set_num_threads(t)
        generate(lm.model, prompt, 4)
        times = []
        for _ in range(rounds):  # 33 new tokens minus 1: the difference removes the prefill
            t0 = time.perf_counter()
            generate(lm.model, prompt, 1)
            t1 = time.perf_counter()
            generate(lm.model, prompt, 33)
            times.append(((time.perf_counter() - t1) - (t1 - t0)) / 32 * 1e3)
        out[t] = statistics.median(times)
    return out


def report(rates: dict, steps: dict, threads: list[int], argv: list[str]) -> str:
    lines = ["# One-row matrix products on this CPU: GB/s of weights read (issue 23, item 1)", "",
             f"Machine: {cpu_name()}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
             "", "Command:", "", "```bash", "python benchmarks/gemv_floor.py " + " ".join(argv), "```", "",
             "Each cell: GB/s of weight bytes read by one product with a (1, K) input, over enough copies of the "
             "matrix to leave the last-level cache, median over rounds (kernels interleaved). `sum` is a plain "
             "streaming read (the floor's bandwidth); bf16 reads half the bytes (its GB/s counts bf16 bytes).", ""]
    for t in threads:
        lines += [f"### {t} thread{'s' if t > 1 else ''}", "",
                  "| shape (out x in) | " + " | ".join(KERNELS) + " | best product / sum |",
                  "|---|" + "---|" * (len(KERNELS) + 1)]
        for shape in SHAPES:
            r = [rates.get((t, shape, k)) for k in KERNELS]
            best = max(x for k, x in zip(KERNELS, r) if x is not None and k not in ("sum", "onednn-bf16"))
            cells = " | ".join("–" if x is None else f"{x:.1f}" for x in r)
            lines.append(f"| {shape} | {cells} | {best / rates[t, shape, 'sum']:.2f} |")
        # the model's Linears at each kernel's rates: fp32 bytes per step / rate, summed over shapes
        per_kernel = {}
        for k in ("sum", "mkl", "mv", "onednn"):
            if (t, next(iter(SHAPES)), k) not in rates:
                continue  # no oneDNN in this build
            per_kernel[k] = sum(o * i * 4 * n / rates[t, s, k] / 1e6 for s, (o, i, n) in SHAPES.items())
        lines += ["", "SmolLM2-135M's Linears per step (fp32, " +
                  f"{sum(o * i * 4 * n for o, i, n in SHAPES.values()) / 1e6:.0f} MB) at these rates: " +
                  ", ".join(f"{k} {ms:.1f} ms" for k, ms in per_kernel.items()) + "."]
        if t in steps:
            floor, linears = steps[t] / per_kernel["sum"], steps[t] / per_kernel["mkl"]
            lines.append(f"The model's plain greedy step (foresight, fp32, default path): **{steps[t]:.1f} ms** = "
                         f"{floor:.2f}x the streaming floor, {linears:.2f}x its Linears at the mkl rates (the rest: "
                         "attention, norms, the Python loop).")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per kernel (default 7)")
    ap.add_argument("--cache-mib", type=int, default=32, help="last-level cache size in MiB (default 32)")
    ap.add_argument("--model", type=Path, help="an HF folder (SmolLM2-135M) to time its plain step beside the kernels")
    ap.add_argument("--out", type=Path, help="write the markdown here")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise ForesightError(f"--threads: comma-separated whole numbers, e.g. 1,2 (got {args.threads!r})") from None
    if min(threads) < 1 or args.rounds < 1 or args.cache_mib < 1:
        raise ForesightError("--threads, --rounds and --cache-mib must be at least 1")
    steps = model_step(args.model, threads, args.rounds)  # first: a bad --model fails before minutes of kernels
    text = report(measure(threads, args.rounds, args.cache_mib), steps, threads, argv)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    print(text)
    return text


if __name__ == "__main__":
    try:
        main()
    except ForesightError as e:
        print(f"foresight: error: {e}", file=sys.stderr)
        sys.exit(2)
