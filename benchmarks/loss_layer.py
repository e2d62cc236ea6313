"""Loss-layer benchmark (issue #4): time and memory of one head's forward + backward, ours against baselines.

    python benchmarks/loss_layer.py --out runs/bench/loss_layer.json        # CUDA: the four anchor shapes
    python benchmarks/loss_layer.py --tiny                                  # CPU: a tiny shape, checks the script
    python benchmarks/loss_layer.py --shapes 16384,1024,32000 --kernel workspace_mib=60   # tune the kernels

Methods (each computes a scalar loss from hidden (N, H) and a head (V, H), then dL/dhidden and dL/dW):
  top         ours: TOP targets from the token stream + the fused sparse loss (as ``objectives.top_loss``)
  top_loss    ours: the fused sparse loss alone, targets built outside the timed region
  ntp         ours: ``ops.linear_cross_entropy``
  top_dense   the literal TOP definition: an N×V score tensor (W − d, first occurrence in the window),
              softmax target, ``log_softmax`` of the full logits (shared/reference/objectives.md, TOP)
  torch_ce    plain PyTorch: ``F.cross_entropy((h @ W.T).float(), labels)``
  floor       the three matmuls any implementation must do: Z = H W^T, dH = Z W, dW = Z^T H
Shapes and set-up follow shared/reference/anchors.md (Zipf tokens, window 4096, bf16, medians of 10 runs
after warm-up, CUDA events). Memory: peak allocated above the inputs, less the returned gradients
(``peak``), and the same with them (``peak_raw``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from foresight.objectives.top import top_targets
from foresight.ops import linear_cross_entropy, linear_soft_cross_entropy

ANCHOR_SHAPES = [(16384, 1024, 32000), (16384, 2048, 32000), (8192, 4096, 32000), (8192, 4096, 128256)]
TINY_SHAPE = (512, 64, 1000)
SEQ_LEN = 4096  # T: N = B · T tokens (the anchors' batch 4 × 4096)
TARGETS = {"shape": (16384, 1024, 32000), "ratio": 1.25, "peak_mib": 64.0}  # issue #4, TOP loss layer
MIB = 2**20


def zipf_tokens(b: int, length: int, v: int, device, seed: int = 0) -> torch.Tensor:
    """(b, length) ids with P(rank r) ∝ 1 / r^1.1, ranks shuffled over the vocabulary."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    probs = 1.0 / torch.arange(1, v + 1, dtype=torch.float64) ** 1.1
    ranks = torch.multinomial(probs.float(), b * length, replacement=True, generator=g)
    return torch.randperm(v, generator=g)[ranks].view(b, length).to(device)


def dense_top_scores(tokens: torch.Tensor, seq_len: int, window: int, v: int, chunk: int = 256) -> torch.Tensor:
    """Literal TOP scores (B·T, V) fp32: W − d for the first occurrence at offset d < W, else −inf."""
    b = tokens.shape[0]
    ahead = tokens[:, 1:].unfold(1, window, 1)[:, :seq_len]  # (B, T, W) view: x[t+1 .. t+W]
    scores = torch.full((b * seq_len, v), float("-inf"), device=tokens.device)
    for j0 in range(0, window, chunk):  # the earliest offset has the highest score: amax keeps it
        idx = ahead[:, :, j0 : j0 + chunk].reshape(b * seq_len, -1)
        src = (window - torch.arange(j0, j0 + idx.shape[1], device=tokens.device, dtype=torch.float32)).expand_as(idx)
        scores.scatter_reduce_(1, idx, src, "amax")
    return scores


def make_methods(n: int, h: int, v: int, window: int, dtype, device, impl: str):
    """name -> (description, step) where step() runs forward + backward and returns (loss, grads)."""
    b, t = max(1, n // SEQ_LEN), min(n, SEQ_LEN)
    if b * t != n:
        raise SystemExit(f"N = {n}: use N <= {SEQ_LEN} or a multiple of it (N = batch × {SEQ_LEN} tokens)")
    gen = torch.Generator(device="cpu").manual_seed(1)
    hidden = (torch.randn(b * t, h, generator=gen) * 1.0).to(device, dtype).requires_grad_(True)
    weight = (torch.randn(v, h, generator=gen) * h**-0.5).to(device, dtype).requires_grad_(True)
    tokens = zipf_tokens(b, t + window + 1, v, device)  # enough look-ahead for the dense definition
    labels = tokens[:, 1 : t + 1].reshape(-1)
    ids, w = (x.reshape(b * t, -1) for x in top_targets(tokens, t, window))
    inputs = (hidden, weight)

    def grads(loss):
        return loss, torch.autograd.grad(loss, inputs)

    def top():  # objectives.top.top_loss, with our impl choice
        ids_, w_ = (x.reshape(b * t, -1) for x in top_targets(tokens, t, window))
        rows = linear_soft_cross_entropy(hidden, weight, ids_, w_, impl=impl)
        has_target = (w_ > 0).any(-1)
        return grads((rows * has_target).sum() / has_target.sum().clamp(min=1))

    def top_loss_only():
        rows = linear_soft_cross_entropy(hidden, weight, ids, w, impl=impl)
        return grads(rows.mean())

    def ntp():
        return grads(linear_cross_entropy(hidden, weight, labels, impl=impl).mean())

    def top_dense():
        q = torch.softmax(dense_top_scores(tokens, t, window, v), dim=-1)  # (N, V) fp32
        logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1)
        return grads(-(q * logp).sum(-1).mean())

    def torch_ce():
        return grads(F.cross_entropy((hidden @ weight.T).float(), labels))

    def floor():
        with torch.no_grad():
            z = hidden @ weight.T
            return z.new_zeros(()), (z @ weight, z.T @ hidden)

    methods = {
        "top": ("ours: TOP targets + fused loss", top),
        "top_loss": ("ours: fused TOP loss, targets given", top_loss_only),
        "ntp": ("ours: fused NTP cross-entropy", ntp),
        "top_dense": ("literal dense TOP (N×V target, log_softmax)", top_dense),
        "torch_ce": ("plain PyTorch cross-entropy", torch_ce),
        "floor": ("three-matmul floor", floor),
    }
    return methods


def measure(step, device, warmup: int, repeats: int) -> dict:
    """Median ms of forward + backward, and peak memory above what was allocated before the step."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss, outs = step()
        torch.cuda.synchronize()
        raw = torch.cuda.max_memory_allocated() - base
        out_bytes = sum(o.numel() * o.element_size() for o in outs)
        peak, peak_raw = (raw - out_bytes) / MIB, raw / MIB
    else:  # no allocator statistics on the CPU: time only
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            loss, outs = step()
            times.append((time.perf_counter() - t0) * 1e3)
        peak = peak_raw = None
    return {"ms": statistics.median(times), "ms_all": times, "peak_mib": peak, "peak_raw_mib": peak_raw,
            "loss": float(loss.detach())}


def versions(device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # not installed, or broken
        triton_version = "not installed"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    return {"device": name, "torch": torch.__version__, "triton": triton_version,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help=f"one tiny shape {TINY_SHAPE}, window 64, fp32 (CPU check)")
    ap.add_argument("--shapes", default=None, help="N,H,V;N,H,V;... (default: the four anchor shapes)")
    ap.add_argument("--window", type=int, default=None, help="TOP window W (default 4096; 64 with --tiny)")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--impl", choices=("auto", "torch", "triton"), default="auto", help="impl of our ops")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--kernel", action="append", default=[], metavar="KNOB=VALUE",
                    help="set a Triton kernel knob (ops.kernels.soft_ce_triton.KernelConfig), e.g. workspace_mib=60")
    args = ap.parse_args(argv)
    knobs = {}
    for item in args.kernel:
        from foresight.ops.kernels import soft_ce_triton  # imports Triton

        name, _, value = item.partition("=")
        if not hasattr(soft_ce_triton.CONFIG, name):
            ap.error(f"unknown kernel knob {name!r}")
        knobs[name] = type(getattr(soft_ce_triton.CONFIG, name) or 0)(float(value))
        setattr(soft_ce_triton.CONFIG, name, knobs[name])

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    else:
        shapes = [TINY_SHAPE] if args.tiny or device.type == "cpu" else ANCHOR_SHAPES
    window = args.window or (64 if args.tiny or device.type == "cpu" else 4096)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    meta = {**versions(device), "dtype": str(dtype).replace("torch.", ""), "window": window, "impl": args.impl,
            "kernel_knobs": knobs, "warmup": args.warmup, "repeats": args.repeats}
    if device.type == "cpu":
        meta["note"] = (f"CPU: a check that the script runs. 'ours' runs impl={args.impl} (auto = the PyTorch twin on "
                        "the CPU; triton needs TRITON_INTERPRET=1 and is very slow); no memory statistics; the issue #4 "
                        "targets are GPU numbers.")
    wanted = set(args.methods.split(",")) if args.methods else None

    results = []
    for n, h, v in shapes:
        methods = make_methods(n, h, v, window, dtype, device, args.impl)
        for name, (desc, step) in methods.items():
            if wanted and name not in wanted:
                continue
            try:
                r = measure(step, device, args.warmup, args.repeats)
            except torch.OutOfMemoryError as exc:
                r = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
            results.append({"N": n, "H": h, "V": v, "method": name, "what": desc, **r})
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del methods

    floors = {(r["N"], r["H"], r["V"]): r.get("ms") for r in results if r["method"] == "floor"}
    print(f"# Loss layer, forward + backward — {meta['device']}, torch {meta['torch']}, triton {meta['triton']}, "
          f"{meta['date']}")
    print(f"\n{meta['dtype']}, window {window}, impl={args.impl}, median of {args.repeats} after {args.warmup} warm-up"
          + (f", kernel knobs {knobs}" if knobs else ""))
    if "note" in meta:
        print(f"\nNote: {meta['note']}")
    print("\n| N | H | V | method | ms | × floor | peak MiB | peak incl. grads MiB | loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        floor = floors.get((r["N"], r["H"], r["V"]))
        if "error" in r:
            print(f"| {r['N']} | {r['H']} | {r['V']} | {r['method']} | {r['error']} | | | | |")
            continue
        ratio = r["ms"] / floor if floor else None
        r["x_floor"] = ratio
        print(f"| {r['N']} | {r['H']} | {r['V']} | {r['method']} | {r['ms']:.2f} | {fmt(ratio, '.2f')} | "
              f"{fmt(r['peak_mib'], '.1f')} | {fmt(r['peak_raw_mib'], '.1f')} | {r['loss']:.4f} |")

    target = [r for r in results if (r["N"], r["H"], r["V"]) == TARGETS["shape"] and r["method"] == "top_loss"]
    if target and "error" not in target[0] and target[0].get("peak_mib") is not None:
        r = target[0]
        ok = r["x_floor"] <= TARGETS["ratio"] and r["peak_mib"] <= TARGETS["peak_mib"]
        print(f"\nIssue #4 target at N,H,V = {TARGETS['shape']}: TOP loss ≤ {TARGETS['ratio']}× floor and ≤ "
              f"{TARGETS['peak_mib']:.0f} MiB: {r['x_floor']:.2f}×, {r['peak_mib']:.1f} MiB -> {'MET' if ok else 'NOT MET'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
