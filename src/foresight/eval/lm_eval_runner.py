"""Run lm-evaluation-harness on a foresight checkpoint and write a results table.

Two backends:
* ``foresight`` (default): ``foresight.eval.lm_eval_model.ForesightLM`` scores the checkpoint directly with its
  own tokenizer.
* ``hf``: export the checkpoint as a plain ``LlamaForCausalLM`` folder (``foresight.hf``), then lm-eval's own
  ``hf`` model (needs ``accelerate``). Both give the same numbers up to float rounding; ``hf`` is the route any
  other lab would take, so it doubles as a check of the export.

Tasks: names or the ``paper`` preset — the TOP paper's benchmark list (docs/paper-setups.md).
Offline use: ``offline=True`` stops datasets / huggingface_hub from reaching the hub, so tasks must be in
the local datasets cache or be local task YAMLs (``include_path``) reading local files (``dataset_path: json``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from foresight.errors import ForesightError
from foresight.io import write_text

PAPER_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq", "social_iqa", "winogrande",
               "lambada_openai", "copa", "nq_open", "triviaqa")
# The metric reported per task in the main table (flash-linear-attention's evaluation convention, which the
# TOP authors' training code comes from: acc_norm where answer lengths differ a lot, exact match for QA).
HEADLINE = {"arc_easy": "acc", "arc_challenge": "acc_norm", "hellaswag": "acc_norm", "piqa": "acc", "sciq": "acc",
            "social_iqa": "acc", "winogrande": "acc", "lambada_openai": "acc", "copa": "acc",
            "nq_open": "exact_match", "triviaqa": "exact_match"}
PRESETS = {"paper": PAPER_TASKS}
BACKENDS = ("foresight", "hf")


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """``"paper"`` or ``"arc_easy,piqa"`` (presets may be mixed in) -> task names, in order, without repeats."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for name in (n.strip() for n in names):
        for task in PRESETS.get(name, (name,) if name else ()):
            if task not in out:
                out.append(task)
    if not out:
        raise ForesightError("--tasks is empty; give task names (comma-separated) or the preset 'paper'")
    return out


def force_offline() -> None:
    """No hub access from datasets / huggingface_hub, also when they were imported already."""
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def task_manager(tasks: list[str], include_path: str | Path | None):
    """A TaskManager that knows every task; lm-eval's built-in index is scanned only when needed (it is slow)."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).exists():
            raise ForesightError(f"--include-path {include_path} does not exist")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ForesightError(f"unknown lm-eval task(s): {', '.join(unknown)}; use lm-eval task names, the preset "
                             f"'paper', or task YAMLs in a folder given with --include-path")
    return manager


def hf_model_folder(path: Path) -> bool:
    """Whether ``path`` is a Hugging Face model folder (``config.json``, e.g. from ``save_pretrained`` or
    ``foresight export``) rather than a foresight run folder or checkpoint."""
    from foresight.train.checkpoint import is_sharded, list_checkpoints

    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file() or is_sharded(path):
        return False
    return not list_checkpoints(path / "checkpoints") and not list_checkpoints(path)


def hf_tokenizer(path: Path):
    """A transformers tokenizer from ``--tokenizer`` (a folder or a ``tokenizer.json``, foresight's or anyone's):
    the files are copied to a temporary folder with a ``tokenizer_config.json`` naming the special tokens
    (``foresight.hf.tokenizer.copy_tokenizer``, what ``foresight export`` writes), then loaded from there, so
    the user's folder is never written to."""
    import tempfile

    from transformers import AutoTokenizer

    from foresight.hf.tokenizer import copy_tokenizer
    from foresight.paths import NO_REMOTE_CODE

    with tempfile.TemporaryDirectory(prefix="foresight-tokenizer-") as tmp:
        copy_tokenizer(Path(path), Path(tmp))  # one line if there are no tokenizer files
        try:
            return AutoTokenizer.from_pretrained(tmp, **NO_REMOTE_CODE)
        except (OSError, ValueError) as e:
            raise ForesightError(f"--tokenizer {path}: transformers cannot load it "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def build_model(checkpoint: Path, backend: str, *, tokenizer=None, device: str = "cpu", batch_size: int = 8,
                hf_dir: Path | None = None):
    """The lm-eval model for ``backend``: a ForesightLM, or lm-eval's HFLM over an exported folder or a Hugging
    Face model folder given as it is (``save_pretrained``), with ``tokenizer`` (when given) instead of the
    folder's own."""
    if backend not in BACKENDS:
        raise ForesightError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    checkpoint = Path(checkpoint)
    if backend == "foresight":
        from foresight.eval.lm_eval_model import ForesightLM

        return ForesightLM(pretrained=checkpoint, tokenizer=tokenizer, device=device, batch_size=batch_size)
    try:
        import accelerate  # noqa: F401  (lm-eval's hf model imports it)
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ForesightError("--backend hf needs accelerate (pip install 'lm_eval[hf]'); "
                             "or use the default --backend foresight") from None
    hf_tok = None
    if hf_model_folder(checkpoint):
        from foresight.hf.heads import check_complete

        check_complete(checkpoint)  # a foresight export is read only when whole (its completion record)
        folder = checkpoint  # already a Hugging Face folder
        if tokenizer is not None:
            hf_tok = hf_tokenizer(tokenizer)  # the user's tokenizer, never written into their folder
    else:
        from foresight.hf import export_checkpoint

        run = checkpoint if checkpoint.is_dir() else checkpoint.parent
        folder = Path(hf_dir) if hf_dir else run / "hf_export"
        export_checkpoint(checkpoint, folder, tokenizer=tokenizer, force=True)
    if hf_tok is None and not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        raise ForesightError(f"{folder} has no tokenizer files; pass --tokenizer PATH")
    from foresight.paths import NO_REMOTE_CODE, confine_folder, refuse_remote_code

    confine_folder(folder)  # HFLM reads whatever model and tokenizer files it finds there
    extra = {} if hf_tok is None else {"tokenizer": hf_tok}
    try:
        return HFLM(pretrained=str(folder), device=device, batch_size=batch_size, dtype="float32", **extra,
                    **NO_REMOTE_CODE)
    except Exception:  # transformers' refusal of auto_map code, said as what to do instead
        refuse_remote_code(folder, "export the model with foresight export (plain Llama / Qwen2) and evaluate that")
        raise


def _data_error(e: Exception) -> bool:
    """Whether an exception looks like missing data or hub access (not a bug in a task or a model)."""
    module = type(e).__module__.split(".")[0]
    return isinstance(e, (OSError, ConnectionError)) or module in ("datasets", "huggingface_hub", "requests", "urllib3")


def run_lm_eval(model, tasks: list[str], *, include_path=None, num_fewshot: int | None = None,
                limit: float | None = None, seed: int = 0, offline: bool = False, log_samples: bool = False,
                output_path: str | Path | None = None, manager=None) -> dict:
    """lm-eval's ``simple_evaluate`` on ``model`` (an lm-eval LM), one task at a time; returns the merged results
    dict, with ``results["failed"]`` = {task: one-line reason} for tasks that raised: a bad document fails its
    own task, not the others. With ``output_path`` the results (and with ``log_samples`` the per-document samples)
    are also written in lm-eval's own format, as ``lm_eval --output_path`` writes them."""
    if offline:
        force_offline()
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    if manager is None:  # the command line checks the task names (task_manager) before it exports anything
        manager = task_manager(tasks, include_path)
    tracker = EvaluationTracker(output_path=str(output_path)) if output_path else None
    merged: dict = {}
    failed: dict[str, str] = {}
    for task in tasks:
        try:
            results = lm_eval.simple_evaluate(model=model, tasks=[task], num_fewshot=num_fewshot, limit=limit,
                                              task_manager=manager, log_samples=log_samples or tracker is not None,
                                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                              fewshot_random_seed=seed, bootstrap_iters=1000,
                                              evaluation_tracker=tracker)
        except ForesightError as e:
            failed[task] = str(e)
            continue
        except Exception as e:  # lm-eval / datasets failures: one line, with the likely cause when offline
            hint = " (offline: is the task's data in the local datasets cache?)" if offline and _data_error(e) else ""
            first = str(e).splitlines()[0][:200] if str(e) else ""
            failed[task] = f"{type(e).__name__}: {first}{hint}"
            continue
        if results is None:
            failed[task] = "lm-eval returned no results"
            continue
        for key, value in results.items():  # per-task sections merge; run-wide ones keep the first task's
            if isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged.setdefault(key, value)
    if not merged:
        task, reason = next(iter(failed.items()))
        raise ForesightError(f"lm-eval failed on every task; {task}: {reason}")
    if tracker is not None:
        samples = merged.pop("samples", {})
        tracker.save_results_aggregated(results=dict(merged), samples=samples if log_samples else None)
        if log_samples:
            for task in merged.get("configs", {}):
                tracker.save_results_samples(task_name=task, samples=samples[task])
        merged["samples"] = samples
    merged["failed"] = failed
    return merged


def result_rows(results: dict) -> list[dict]:
    """One row per (task, metric): ``{"task", "metric", "value", "stderr", "headline", "n"}``."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        n = (results.get("n-samples") or {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "metric": metric if filt == "none" else f"{metric} ({filt})",
                         "value": float(value), "stderr": stderr if isinstance(stderr, (int, float)) else None,
                         "headline": HEADLINE.get(task) == metric, "n": n})
    return rows


def results_table(rows: list[dict], title: str) -> str:
    lines = [title, "", "| task | metric | value | ± stderr | examples |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["task"], not r["headline"], r["metric"])):
        metric = f"**{r['metric']}**" if r["headline"] else r["metric"]
        stderr = f"{r['stderr']:.4f}" if r["stderr"] is not None else ""
        n = r["n"] if r["n"] is not None else ""
        lines.append(f"| {r['task']} | {metric} | {r['value']:.4f} | {stderr} | {n} |")
    lines += ["", "Bold: the metric the TOP paper's tables use for that task."]
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], out: Path, meta: dict, extra: dict | None = None) -> tuple[Path, Path]:
    """``out/results.md`` (the table) and ``out/results.json`` (rows, run settings, perplexity if any)."""
    out.mkdir(parents=True, exist_ok=True)
    title = f"lm-evaluation-harness on {meta.get('checkpoint')} (backend {meta.get('backend')}, " \
            f"{time.strftime('%Y-%m-%d')})"
    text = results_table(rows, title) if rows else f"{title}\n"
    if extra and "perplexity" in extra:
        p = extra["perplexity"]
        text += (f"\nPerplexity on {p['data']} ({p['split']} split, {p['tokens']:,} tokens, T = {p['seq_len']}): "
                 f"loss {p['loss']:.4f} nats/token, ppl {p['ppl']:.3f}\n")
    md, js = out / "results.md", out / "results.json"
    write_text(md, text)
    write_text(js, json.dumps({"meta": meta, "rows": rows, **(extra or {})}, indent=2, default=str) + "\n")
    return md, js
