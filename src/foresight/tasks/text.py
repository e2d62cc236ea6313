"""Language-model pretraining on prepared text (the TOP paper's language-model setup, §4;
docs/paper-setups.md): every run of a recipe trains from the same initialisation on the same
packed sequences in the same order, is validated on the same fixed held-out windows, and the runs are
compared in one table and one figure.

Validation reports ``val_loss`` (next-token loss of the inference model, nats per token), ``val_ppl`` =
exp(val_loss), and ``val_<objective>_loss`` for every objective of the run on the same windows.

Under torchrun (``foresight.train.distributed``) every rank builds the same model and batches; the trainer
gives each rank its rows, validation shares the batches out and sums over ranks, and rank 0 alone prints and
writes files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from foresight.data.loader import PackedLoader, eval_windows, make_batch
from foresight.data.shards import PreparedData
from foresight.errors import ForesightError
from foresight.eval.validation import validate
from foresight.io import note_written, write_json
from foresight.model import ModelConfig
from foresight.tasks.pool import run_all
from foresight.tasks.recipe import Recipe, RunModel, complete_model
from foresight.tasks.run import RunHooks, result_record, total_parameters, train_run
from foresight.tasks.stargraph import parse_trelawney
from foresight.train import distributed
from foresight.train.flops import activated_parameters, flops_per_token
from foresight.train.lm import TrainableLM
from foresight.train.metrics import read_metrics, training_tokens_per_s

FULL_VERIFY_BYTES = 1 << 30  # "auto" hashes every shard of data up to this size (about a second per GiB)


@dataclass
class TextTaskConfig:
    """The ``text:`` section of a recipe."""

    data: str = "data/demo"  # a folder written by `foresight prepare`
    seq_len: int = 256  # T: tokens the model reads per sequence; the objectives' look-ahead comes on top
    cross_documents: bool = True  # TOP/MTP/DS-MTP targets run on into the next document (the paper); false: stop at EOS
    shuffle: bool = True  # seeded shuffle of the packed sequences (seed: train.seed); false: stream order
    val_batches: int = 8  # fixed validation batches (the same windows for every run); 0 = no validation
    val_batch_size: int | None = None  # sequences per validation batch; None = train.micro_batch_size
    vocab_multiple: int = 64  # model.vocab_size = tokenizer vocabulary rounded up to this (faster matmuls); 1 = exact
    verify_data: str = "auto"  # "size": shard sizes vs meta.json; "full": also hashes, id range, EOS count; "auto"
    init_from: str | None = None  # continued training: a Hugging Face Llama/Qwen2 folder or a foresight checkpoint;
    # its shape replaces the model section, its weights initialise the trunk (and any heads it carries)
    trelawney: dict | None = None  # TRELAWNEY lookahead spans in the training samples (data/trelawney.py); None = off

    # fields a resumed run may change (foresight.train.fingerprint): validation and checks only; the data itself
    # is checked by its fingerprint (the folder may move)
    RESUME_EXEMPT: ClassVar[tuple] = ("data", "val_batches", "val_batch_size", "verify_data")

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.val_batches < 0 or self.vocab_multiple < 1:
            raise ForesightError("text.seq_len and text.vocab_multiple must be >= 1, text.val_batches >= 0")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ForesightError("text.val_batch_size must be >= 1")
        if self.verify_data not in ("auto", "size", "full"):
            raise ForesightError(f"text.verify_data must be auto, size or full, got {self.verify_data!r}")
        from foresight.model.limits import MAX_BATCH, MAX_SEQ_LEN, MAX_STEPS, check_int

        check_int(self.seq_len, "text.seq_len", 1, MAX_SEQ_LEN)
        check_int(self.val_batches, "text.val_batches", 0, MAX_STEPS)
        check_int(self.vocab_multiple, "text.vocab_multiple", 1, 1 << 16)
        if self.val_batch_size is not None:
            check_int(self.val_batch_size, "text.val_batch_size", 1, MAX_BATCH)
        self.lookahead = parse_trelawney(self.trelawney, "text.trelawney")  # a TrelawneyConfig or None
        if self.lookahead is not None and self.lookahead.prompt_open:
            raise ForesightError("text.trelawney.prompt_open applies to the star graph only; remove it")


def vocab_needed(data: PreparedData, cfg: TextTaskConfig) -> int:
    """The tokenizer's vocabulary, plus TRELAWNEY's <T> and </T> (ids V and V + 1, past every tokenizer id)."""
    return data.vocab_size + (2 if cfg.lookahead is not None else 0)


def open_data(cfg: TextTaskConfig) -> PreparedData:
    folder = Path(cfg.data)
    if not (folder / "meta.json").is_file():
        raise ForesightError(f"text.data={cfg.data}: no prepared data there; create it with foresight prepare "
                             f"(for the demo: foresight prepare --demo --tokenizer data/tokenizer --out {cfg.data})")
    verify = cfg.verify_data
    if verify == "auto":
        size = sum(p.stat().st_size for p in folder.glob("*.bin"))
        verify = "full" if size <= FULL_VERIFY_BYTES else "size"
    return PreparedData.open(folder, verify=verify)


def check_data_fits(data: PreparedData, cfg: TextTaskConfig, train_cfg) -> None:
    """Limits that depend on the data, checked before any model is built (a huge ``seq_len`` would otherwise
    first allocate its RoPE tables and activations): one training sequence and, with validation, one window
    must fit their splits (``RESERVE`` look-ahead tokens on top, as the loader keeps)."""
    from foresight.data.loader import RESERVE

    for split, stream, fix in [("training", data.train, "lower text.seq_len or prepare more text"),
                               ("validation", data.val if cfg.val_batches else None,
                                "lower text.seq_len, prepare with a larger --val-fraction, or set text.val_batches=0")]:
        if stream is not None and len(stream) < cfg.seq_len + RESERVE:
            raise ForesightError(f"text.seq_len={cfg.seq_len:,}: the {split} split of {data.folder} holds "
                                 f"{len(stream):,} tokens, fewer than one sequence of {cfg.seq_len:,} + {RESERVE} "
                                 f"look-ahead tokens; {fix}")


def model_config(model: RunModel, data: PreparedData, cfg: TextTaskConfig) -> ModelConfig:
    """The run's ModelConfig: ``vocab_size`` from the tokenizer (rounded up to ``vocab_multiple``) unless the
    recipe sets one, which must then hold every id of the data."""
    need = vocab_needed(data, cfg)
    if "vocab_size" in model.written:
        if model.config.vocab_size < need:
            extra = ", TRELAWNEY's two ids included" if cfg.lookahead is not None else ""
            raise ForesightError(f"model.vocab_size={model.config.vocab_size} is smaller than the data's tokenizer "
                                 f"vocabulary ({need}{extra}); remove it to use the tokenizer's")
        return complete_model(model, max_seq_len=cfg.seq_len)
    return complete_model(model, vocab_size=-(-need // cfg.vocab_multiple) * cfg.vocab_multiple,
                          max_seq_len=cfg.seq_len)


@torch.no_grad()
def pretrained_config(path: str, data: PreparedData, cfg: TextTaskConfig | None = None) -> ModelConfig:
    """The shape of a pretrained model to continue training (the TOP paper's continued-training setting).

    The data must be tokenized with that model's tokenizer: every id must fit its vocabulary."""
    from foresight.hf import pretrained_model_config

    model_cfg = pretrained_model_config(Path(path))
    if data.vocab_size > model_cfg.vocab_size:
        raise ForesightError(f"text.init_from={path}: its vocabulary ({model_cfg.vocab_size}) is smaller than the "
                             f"data's tokenizer ({data.vocab_size}); prepare the data with that model's tokenizer")
    if cfg is not None and vocab_needed(data, cfg) > model_cfg.vocab_size:
        raise ForesightError(f"text.init_from={path}: its vocabulary ({model_cfg.vocab_size}) has no room for "
                             f"TRELAWNEY's <T> and </T> (ids {data.vocab_size} and {data.vocab_size + 1})")
    return model_cfg


def size_table(runs: dict[str, list[dict]], model_cfgs: dict[str, ModelConfig], seq_len: int) -> str:
    """Total and activated parameters and training FLOPs per token of every run (models built on the meta
    device: no memory, no initialisation cost), so sparse trunks can be matched against dense ones (issue 16)."""
    lines = ["| run | ffn | total params | activated params | FLOPs/token |", "|---|---|---:|---:|---:|"]
    for name, specs in runs.items():
        with torch.device("meta"):
            size = size_fields(TrainableLM(model_cfgs[name], specs), seq_len)
        lines.append(f"| {name} | {size['ffn']} | {size['total_params']:,} | {size['activated_params']:,} | "
                     f"{size['flops_per_token'] / 1e6:,.2f}M |")
    return "\n".join(lines)


def size_fields(lm: TrainableLM, seq_len: int) -> dict:
    """Total and activated parameters (objective heads all count as active) and training FLOPs per token: the
    size table's columns and the same fields of ``result.json``."""
    total = total_parameters(lm)
    return {"ffn": lm.model.cfg.ffn, "total_params": total,
            "activated_params": activated_parameters(lm.model) + total - lm.model.num_parameters(),
            "flops_per_token": flops_per_token(lm, seq_len)}


def _describe(data: PreparedData, cfg: TextTaskConfig, vocab: int) -> str:
    tr, va = data.meta["splits"]["train"], data.meta["splits"]["val"]
    return (f"text: {data.folder}: {tr['tokens']:,} train tokens ({tr['documents']:,} documents), {va['tokens']:,} "
            f"validation tokens; tokenizer vocabulary {data.vocab_size:,} (model {vocab:,}); T = {cfg.seq_len}, "
            f"targets {'cross' if cfg.cross_documents else 'stop at'} document boundaries")


def _rate(run_dir: Path) -> float | None:
    """Training tokens/s of a run from its metrics (``training_tokens_per_s``: evaluation excluded, as the
    compare table and star-graph results report it); the wall-clock rate is ``tokens_per_s_wall``."""
    path = run_dir / "metrics.jsonl"
    rate = training_tokens_per_s(read_metrics(path)) if path.is_file() else None
    return None if rate is None else round(rate, 1)


def run_text(recipe: Recipe, runs: dict[str, list[dict]], out_dir: Path, resume: bool = False, *,
             allow_changes: bool = False) -> list[dict]:
    from foresight.compare import write_comparison

    cfg = recipe.task_config  # a TextTaskConfig, parsed at load
    train_cfg = recipe.train
    distributed.init(train_cfg)  # under torchrun: join the job (the CLI has already)
    main = distributed.is_main()
    say = print if main else (lambda *args, **kwargs: None)
    data = open_data(cfg)
    check_data_fits(data, cfg, train_cfg)
    if cfg.init_from:
        model_cfgs = {name: pretrained_config(cfg.init_from, data, cfg) for name in runs}
    else:
        model_cfgs = {name: model_config(recipe.run_models[name], data, cfg) for name in runs}
    val_bs = cfg.val_batch_size or train_cfg.micro_batch_size
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:
        write_json(out_dir / "recipe.json", recipe.raw)
    first = next(iter(model_cfgs.values()))
    say(_describe(data, cfg, first.vocab_size))
    say(f"runs: {', '.join(runs)} -> {out_dir}")
    say(size_table(runs, model_cfgs, cfg.seq_len))
    data_record = {"folder": str(data.folder), "fingerprint": data.fingerprint, "tokenizer": data.meta["tokenizer"]}

    def train_one(name: str, *, should_stop, progress: bool = True) -> tuple[dict, None]:
        """One run, through the one run loop; its result.json. (The pool's work function: no FLOPs counted.)"""
        specs = runs[name]
        model_cfg = model_cfgs[name]
        run_dir = out_dir / name

        def init(lm, name=name):  # continued training: the pretrained weights (rank 0 only)
            from foresight.hf import load_pretrained_into

            say(f"{name}: init from {load_pretrained_into(lm, Path(cfg.init_from)).summary()}")

        def setup(lm, name=name, model_cfg=model_cfg, run_dir=run_dir) -> RunHooks:
            loader = PackedLoader(data.train, cfg.seq_len, lm.lookahead, train_cfg.batch_size, train_cfg.seed,
                                  eos_id=data.eos_id, cross_documents=cfg.cross_documents, shuffle=cfg.shuffle,
                                  vocab_size=model_cfg.vocab_size, fingerprint=data.fingerprint,
                                  trelawney=cfg.lookahead, lookahead_ids=(data.vocab_size, data.vocab_size + 1))
            evaluate = None
            if cfg.val_batches:
                windows = eval_windows(data.val, cfg.seq_len, lm.lookahead, val_bs, cfg.val_batches)
                if not windows:
                    raise ForesightError(f"the validation split of {data.folder} holds {len(data.val):,} tokens, too "
                                         f"few for one window of {cfg.seq_len} (+128) tokens; prepare with a larger "
                                         f"--val-fraction, or set text.val_batches=0")
                val = [make_batch(torch.from_numpy(w), cfg.seq_len, model_cfg.vocab_size, data.eos_id,
                                  cfg.cross_documents) for w in windows]

                def evaluate(lm):
                    return validate(lm, val)
            run_dir.mkdir(parents=True, exist_ok=True)
            if main:
                note_written(run_dir / "tokenizer", "tree")
                shutil.copytree(data.folder / "tokenizer", run_dir / "tokenizer", dirs_exist_ok=True)
            params, total = lm.model.num_parameters(), total_parameters(lm)
            steps_tokens = train_cfg.steps * train_cfg.batch_size * cfg.seq_len
            say(f"{name}: {params / 1e6:.2f}M parameters ({total / 1e6:.2f}M with objective heads), look-ahead "
                f"{lm.lookahead}; {train_cfg.steps} steps x {train_cfg.batch_size} x {cfg.seq_len} = "
                f"{steps_tokens:,} tokens = {steps_tokens / loader.tokens_per_epoch:.2f} epochs")
            return RunHooks(batch_fn=loader.batch, evaluate=evaluate, data_state=loader.state,
                            run_config={"task": "text", "seq_len": cfg.seq_len, "tokenizer": "tokenizer",
                                        "data": data_record})

        run = train_run(name, specs, model_cfg, train_cfg, run_dir, raw=recipe.raw,
                        tokens_per_step=train_cfg.batch_size * cfg.seq_len, setup=setup, resume=resume,
                        init=init if cfg.init_from else None, task=("text", cfg), allow_changes=allow_changes,
                        should_stop=should_stop, progress=progress)
        best = min(run.evals, key=lambda e: e["val_loss"]) if run.evals else {}
        result = {**result_record(run), **size_fields(run.lm, cfg.seq_len),  # sparse trunks: activated params
                  "tokens": run.trainer.step * train_cfg.batch_size * cfg.seq_len,  # resumed runs: every step's
                  "tokens_per_s": _rate(run_dir), "final": run.evals[-1] if run.evals else {},
                  "best_val_loss": best.get("val_loss"), "best_step": best.get("step"), "data": data_record,
                  "partial": run.trainer.partial}  # stopped (SIGTERM, Ctrl-C) before the schedule's end
        if main:
            write_json(run_dir / "result.json", result)
        return result, None

    # in turn, in this process (the runs share the open data); SIGTERM / Ctrl-C end the running run gracefully
    results, not_done = run_all(list(runs), train_one, {}, print_=say)
    if not_done:
        say("not run (stopped): " + ", ".join(not_done))
    if main and results:
        table, table_path, png_path = write_comparison([out_dir], out_dir)
        print()
        print(table)
        print(f"wrote {table_path} and {png_path}")
    return results
