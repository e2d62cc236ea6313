"""Loss-layer benchmark (issue #4): time and memory of one head's forward + backward, ours against baselines.

    python benchmarks/loss_layer.py --out runs/bench/loss_layer.json        # CUDA: the four anchor shapes
    python benchmarks/loss_layer.py --tiny                                  # CPU: a tiny shape, checks the script
    python benchmarks/loss_layer.py --shapes 16384,1024,32000 --kernel workspace_mib=60   # tune the kernels

Methods (each computes a scalar loss from hidden (N, H) and a head (V, H), then dL/dhidden and dL/dW):
  top         ours: TOP targets from the token stream + the fused sparse loss (as ``objectives.top_loss``)
  top_loss    ours: the fused sparse loss alone, targets built outside the timed region
  ntp         ours: ``ops.linear_cross_entropy``
  top_dense   the literal TOP definition: an N×V score tensor (W − d, first occurrence in the window),
              softmax target, ``log_softmax`` of the full logits (docs/objectives.md, TOP)
  torch_ce    plain PyTorch: ``F.cross_entropy((h @ W.T).float(), labels)``
  floor       the three matmuls any implementation must do: Z = H W^T, dH = Z W, dW = Z^T H
  liger_ce    Liger-Kernel's LigerFusedLinearCrossEntropyLoss (only when ``liger_kernel`` imports)
  cce         cut-cross-entropy's ``linear_cross_entropy`` (only when ``cut_cross_entropy`` imports)
  targets_torch   TOP target construction alone, our PyTorch builder (``top_targets(impl="torch")``)
  targets_triton  the same, our Triton kernel (``top_targets(impl="triton")``; CUDA, or TRITON_INTERPRET=1)
  targets_dense   the reference's kind of builder, written literally: an N×V fp16 tensor of W − d (first
                  occurrence in the window), −inf elsewhere — the anchors' "ref. target" column
Shapes and set-up follow docs/baselines.md (Zipf tokens, window 4096, bf16, medians of 10 runs
after warm-up, CUDA events). Memory: peak allocated above the inputs, less the returned gradients
(``peak``), and the same with them (``peak_raw``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from foresight.environment import describe
from foresight.errors import ForesightError
from foresight.objectives.top import top_targets
from foresight.ops import linear_cross_entropy, linear_soft_cross_entropy
from foresight.ops.kernels import INDEX_DTYPES, resolve_impl

METHODS = ("top", "top_loss", "ntp", "liger_ce", "cce", "top_dense", "torch_ce", "floor", "targets_torch",
           "targets_triton", "targets_dense")
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


def dense_top_scores(tokens: torch.Tensor, seq_len: int, window: int, v: int, chunk: int = 256,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Literal TOP scores (B·T, V): W − d for the first occurrence at offset d < W, else −inf.

    With ``dtype=torch.float16`` this is what the reference's target builder hands its loss: an N×V fp16
    tensor (W − d rounded to fp16, so d = 0 and 1 tie at W = 4096).
    """
    b = tokens.shape[0]
    ahead = tokens[:, 1:].unfold(1, window, 1)[:, :seq_len]  # (B, T, W) view: x[t+1 .. t+W]
    scores = torch.full((b * seq_len, v), float("-inf"), device=tokens.device, dtype=dtype)
    for j0 in range(0, window, chunk):  # the earliest offset has the highest score: amax keeps it
        idx = ahead[:, :, j0 : j0 + chunk].reshape(b * seq_len, -1)
        src = (window - torch.arange(j0, j0 + idx.shape[1], device=tokens.device, dtype=torch.float32)).to(dtype)
        scores.scatter_reduce_(1, idx, src.expand_as(idx), "amax")
    return scores


def optional_fused_ce():
    """name -> (description, loss(hidden, weight, labels) or the reason it is unavailable): the fused linear
    cross-entropies of other libraries, when installed (not dependencies of foresight)."""
    out = {}
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()  # mean over non-ignored rows
        out["liger_ce"] = ("Liger-Kernel fused linear CE", lambda h, w, y: liger(w, h, y))
    except Exception as exc:  # not installed, or broken against this torch / triton
        out["liger_ce"] = ("Liger-Kernel fused linear CE", f"liger_kernel unavailable ({type(exc).__name__}: {exc})")
    try:
        from cut_cross_entropy import linear_cross_entropy as cce_loss

        out["cce"] = ("cut-cross-entropy linear_cross_entropy", lambda h, w, y: cce_loss(h, w, y))
    except Exception as exc:
        out["cce"] = ("cut-cross-entropy linear_cross_entropy",
                      f"cut_cross_entropy unavailable ({type(exc).__name__}: {exc})")
    return out


def make_methods(n: int, h: int, v: int, window: int, dtype, device, impl: str, kernel=None):
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
        ids_, w_ = (x.reshape(b * t, -1) for x in top_targets(tokens, t, window, impl=impl))
        rows = linear_soft_cross_entropy(hidden, weight, ids_, w_, impl=impl, kernel=kernel)
        has_target = (w_ > 0).any(-1)
        return grads((rows * has_target).sum() / has_target.sum().clamp(min=1))

    def top_loss_only():
        rows = linear_soft_cross_entropy(hidden, weight, ids, w, impl=impl, kernel=kernel)
        return grads(rows.mean())

    def ntp():
        return grads(linear_cross_entropy(hidden, weight, labels, impl=impl, kernel=kernel).mean())

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

    # Target builders: no backward. The "loss" column shows a check computed after timing: the number of
    # positions with a target (sparse: total weight; dense: rows with a finite score) — all three agree.
    def targets(target_impl):
        def step():
            ids_, w_ = top_targets(tokens, t, window, impl=target_impl)
            return (lambda: w_.sum()), (ids_, w_)
        return step

    def targets_dense():
        scores = dense_top_scores(tokens, t, window, v, dtype=torch.float16)  # (N, V) fp16, as the reference
        return (lambda: torch.isfinite(scores).any(-1).sum()), (scores,)

    try:
        resolve_impl("triton", tokens, dtypes=INDEX_DTYPES)
        targets_triton = targets("triton")
    except ForesightError as exc:
        targets_triton = f"not runnable here: {exc}"

    methods = {
        "top": ("ours: TOP targets + fused loss", top),
        "top_loss": ("ours: fused TOP loss, targets given", top_loss_only),
        "ntp": ("ours: fused NTP cross-entropy", ntp),
        **{name: (desc, loss if isinstance(loss, str) else (lambda loss=loss: grads(loss(hidden, weight, labels))))
           for name, (desc, loss) in optional_fused_ce().items()},
        "top_dense": ("literal dense TOP (N×V target, log_softmax)", top_dense),
        "torch_ce": ("plain PyTorch cross-entropy", torch_ce),
        "floor": ("three-matmul floor", floor),
        "targets_torch": ("ours: TOP targets, PyTorch builder", targets("torch")),
        "targets_triton": ("ours: TOP targets, Triton kernel", targets_triton),
        "targets_dense": ("dense N×V fp16 target (the reference's form)", targets_dense),
    }
    assert tuple(methods) == METHODS
    return methods


def check_targets(tokens: torch.Tensor, seq_len: int, window: int) -> dict | None:
    """Triton vs PyTorch target builder on the benchmark's own stream (both score modes): None when the
    kernel cannot run here, else whether the ids agree and the largest weight difference."""
    try:
        resolve_impl("triton", tokens, dtypes=INDEX_DTYPES)
    except ForesightError:
        return None
    result = {}
    for scores in ("exact", "paper"):
        ref = top_targets(tokens, seq_len, window, scores=scores, impl="torch")
        got = top_targets(tokens, seq_len, window, scores=scores, impl="triton")
        result[scores] = {"ids_equal": bool(torch.equal(ref[0], got[0])),
                          "max_weight_diff": float((ref[1] - got[1]).abs().max())}
    return result


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
    if callable(loss):  # a check computed after timing (target builders)
        loss = loss()
    return {"ms": statistics.median(times), "ms_all": times, "peak_mib": peak, "peak_raw_mib": peak_raw,
            "loss": float(loss.detach())}


def fmt(x, spec: str) -> str:
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
    knobs, kernel = {}, None
    for item in args.kernel:
        from foresight.ops.kernels import soft_ce_triton  # imports Triton

        name, _, value = item.partition("=")
        if not hasattr(soft_ce_triton.DEFAULT_CONFIG, name):
            ap.error(f"unknown kernel knob {name!r}")
        knobs[name] = type(getattr(soft_ce_triton.DEFAULT_CONFIG, name) or 0)(float(value))
        kernel = soft_ce_triton.KernelConfig(**knobs)  # passed with every call of our ops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    else:
        shapes = [TINY_SHAPE] if args.tiny or device.type == "cpu" else ANCHOR_SHAPES
    window = args.window or (64 if args.tiny or device.type == "cpu" else 4096)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    meta = {**describe(device), "dtype": str(dtype).replace("torch.", ""), "window": window, "impl": args.impl,
            "kernel_knobs": knobs, "warmup": args.warmup, "repeats": args.repeats}
    if device.type == "cpu":
        meta["note"] = (f"CPU: a check that the script runs. 'ours' runs impl={args.impl} (auto = the PyTorch twin on "
                        "the CPU; triton needs TRITON_INTERPRET=1 and is very slow); no memory statistics; the issue "
                        "#4 targets are GPU numbers.")
    wanted = set(args.methods.split(",")) if args.methods else None
    if wanted and wanted - set(METHODS):
        ap.error(f"unknown method(s) {', '.join(sorted(wanted - set(METHODS)))}; known: {', '.join(METHODS)}")

    results, notes = [], {}
    for n, h, v in shapes:
        methods = make_methods(n, h, v, window, dtype, device, args.impl, kernel)
        if not wanted or wanted & {"targets_torch", "targets_triton"}:
            b, t = max(1, n // SEQ_LEN), min(n, SEQ_LEN)
            check = check_targets(zipf_tokens(b, t + window + 1, v, device), t, window)
            if check is not None:
                meta.setdefault("targets_check", {})[f"{n},{h},{v}"] = check
        for name, (desc, step) in methods.items():
            if wanted and name not in wanted:
                continue
            if isinstance(step, str):  # an optional method that cannot run here
                notes[name] = step
                continue
            try:
                r = measure(step, device, args.warmup, args.repeats)
            except torch.OutOfMemoryError as exc:
                r = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
            except Exception as exc:  # report and go on: one command measures everything it can
                r = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                traceback.print_exc()
            results.append({"N": n, "H": h, "V": v, "method": name, "what": desc, **r})
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del methods
    meta["skipped"] = notes

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

    for name, reason in notes.items():
        print(f"\nSkipped {name}: {reason}")
    for shape, check in meta.get("targets_check", {}).items():
        print(f"\nTOP targets, Triton vs PyTorch at N,H,V = {shape}: "
              + "; ".join(f"{mode}: ids {'equal' if c['ids_equal'] else 'DIFFER'}, "
                          f"max weight diff {c['max_weight_diff']:.1e}"
                          for mode, c in check.items()))
    target = [r for r in results if (r["N"], r["H"], r["V"]) == TARGETS["shape"] and r["method"] == "top_loss"]
    if target and "error" not in target[0] and target[0].get("peak_mib") is not None:
        r = target[0]
        ok = r["x_floor"] <= TARGETS["ratio"] and r["peak_mib"] <= TARGETS["peak_mib"]
        print(f"\nIssue #4 target at N,H,V = {TARGETS['shape']}: TOP loss ≤ {TARGETS['ratio']}× floor and ≤ "
              f"{TARGETS['peak_mib']:.0f} MiB: {r['x_floor']:.2f}×, {r['peak_mib']:.1f} MiB -> "
              f"{'MET' if ok else 'NOT MET'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"\nwrote {args.out}")
    ours_failed = [r["method"] for r in results if "error" in r and r["method"] not in ("liger_ce", "cce")]
    if ours_failed:  # other libraries' failures are theirs; ours make the run fail (after writing the table)
        print(f"\nfailed: {', '.join(ours_failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
