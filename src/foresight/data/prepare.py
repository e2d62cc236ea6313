"""Text -> token shards: tokenize documents in parallel batches, append EOS, split train / validation.

Pretraining data as the TOP paper's setup uses it (§4; docs/paper-setups.md): documents tokenized
without BOS, each followed by the end-of-document token, packed back to back into one stream. A document
goes to the validation split when a hash of (seed, its index) falls below ``val_fraction``, so the split is
by whole documents and identical for identical inputs.

The output is built in a hidden sibling folder and put in place at the end (``foresight.io.folder_transaction``),
so an interrupted run never leaves a folder that looks prepared, and ``--overwrite`` never loses the old data
before the new is whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from foresight import __version__
from foresight.data.shards import FORMAT, META, VERSION, ShardWriter, token_dtype
from foresight.data.sources import Documents
from foresight.data.tokenizer import TextTokenizer
from foresight.errors import ForesightError
from foresight.io import folder_transaction, write_json

PREPARE_FORMAT = "foresight-prepare"


@dataclass
class PrepareConfig:
    """Settings of one preparation (stored in meta.json)."""

    val_fraction: float = 0.01  # share of documents held out for validation
    seed: int = 0  # decides which documents are held out
    shard_tokens: int = 1 << 28  # tokens per shard file (256 Mi: 512 MiB at uint16)
    batch_bytes: int = 1 << 22  # text per encode_batch call (the tokenizer spreads a batch over all cores)

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ForesightError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_tokens < 1:
            raise ForesightError(f"--shard-tokens must be >= 1, got {self.shard_tokens}")


def is_validation(seed: int, index: int, fraction: float) -> bool:
    """Whether document ``index`` is held out: a stable hash of (seed, index) mapped to [0, 1)."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def _batches(docs, batch_bytes: int):
    batch, size = [], 0
    for text in docs:
        batch.append(text)
        size += len(text)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _is_prepared(out: Path) -> bool:
    """A folder whose meta.json says foresight prepared it (the only kind --overwrite may delete)."""
    try:
        return out.is_dir() and not out.is_symlink() and json.loads((out / META).read_text())["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ForesightError(f"--out {out} is a file, not a folder; choose a folder name (it is never replaced)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ForesightError(f"{out} already exists; pass --overwrite to replace it")
        if not _is_prepared(out):
            raise ForesightError(f"{out} is not empty and its meta.json does not mark it as data prepared by "
                                 f"foresight; refusing to replace it (choose another --out)")


def _clean_partials(out: Path) -> None:
    """Remove what a killed ``prepare`` of the same --out left (``.<name>.partial-<pid>`` of a dead process)."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def prepare(documents: Documents, tokenizer: TextTokenizer, out: Path, cfg: PrepareConfig, *,
            overwrite: bool = False, info: dict | None = None, progress: bool | None = None) -> dict:
    """Tokenize ``documents`` into ``out``; returns the metadata written to ``out/meta.json``.

    ``info`` is stored under ``meta["input"]`` (e.g. the demo corpus's Python version). ``progress``: show a
    progress bar (None: only on a terminal).
    """
    out = Path(out)
    check_out(out, overwrite)
    if out.parent.is_dir():
        _clean_partials(out)
    dtype = token_dtype(tokenizer.vocab_size)
    encoder = tokenizer.encoder()
    start = time.perf_counter()
    # The folder is a transaction (foresight.io.folder_transaction): built beside --out, meta.json written last,
    # then the completion record, then swapped with the old folder in one step; the old data is removed only
    # after the new is in place, so a kill -9 at any moment leaves the old data or the new, whole.
    with folder_transaction(out, PREPARE_FORMAT) as tmp:
        writers = {s: ShardWriter(tmp, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
        total = documents.total_bytes
        bar = tqdm(total=total, unit="B" if total is not None else "doc", unit_scale=True, desc="prepare",
                   file=sys.stderr, disable=None if progress is None else not progress, dynamic_ncols=True)
        documents.on_bytes = bar.update
        index, max_id, empty = 0, -1, 0
        eos = np.array([tokenizer.eos_id], dtype=np.int64)
        encode = getattr(encoder, "encode_batch_fast", encoder.encode_batch)  # no offsets: faster
        for texts in _batches(documents, cfg.batch_bytes):
            for enc in encode(texts, add_special_tokens=False):
                ids = np.asarray(enc.ids, dtype=np.int64)
                if not len(ids):  # the normaliser removed everything
                    empty += 1
                    continue
                max_id = max(max_id, int(ids.max()))
                split = "val" if is_validation(cfg.seed, index, cfg.val_fraction) else "train"
                writers[split].write(np.concatenate([ids, eos]))
                index += 1
        bar.close()
        if empty:
            documents.skipped["no tokens"] += empty
        splits = {s: w.close() for s, w in writers.items()}
        if index == 0:
            skipped = ", ".join(f"{n} {r}" for r, n in sorted(documents.skipped.items())) or "none"
            raise ForesightError(f"no documents to prepare (skipped: {skipped})")
        if splits["train"]["tokens"] == 0:
            raise ForesightError("every document went to validation; lower --val-fraction")
        if max_id >= tokenizer.vocab_size:  # cannot happen for a consistent tokenizer; never write such data
            raise ForesightError(f"the tokenizer produced id {max_id}, outside its vocabulary of "
                                 f"{tokenizer.vocab_size}")
        tokenizer.save(tmp / "tokenizer")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "created_by": f"foresight {__version__}",
            "dtype": dtype,
            "tokenizer": tokenizer.identity(),
            "max_token_id": max_id,
            "splits": splits,
            "documents": index,
            "skipped": dict(sorted(documents.skipped.items())),
            "settings": {**asdict(cfg), "text_field": documents.text_field, "text_unit": documents.text_unit,
                         "skip_bad": documents.skip_bad},
            "input": info or {},
            "sources": documents.sources,
        }
        write_json(tmp / META, meta)
        if out.exists():
            check_out(out, overwrite)  # still foresight's own prepared data (checked again: time has passed)
    meta["seconds"] = time.perf_counter() - start  # for the caller's summary; not in meta.json (determinism)
    return meta


def summary(meta: dict, out: Path) -> str:
    """Two lines for the terminal: what was written, and what was skipped."""
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    shards = len(tr["shards"]) + len(va["shards"])
    lines = [f"prepared {tr['tokens']:,} train tokens ({tr['documents']:,} documents) + {va['tokens']:,} validation "
             f"tokens ({va['documents']:,} documents), {meta['dtype']}, {shards} shard(s), vocabulary "
             f"{meta['tokenizer']['vocab_size']:,} -> {out}"]
    skipped = meta["skipped"]
    lines.append("skipped: " + (", ".join(f"{n:,} {r}" for r, n in skipped.items()) if skipped else "nothing"))
    if va["documents"] == 0 and meta["settings"]["val_fraction"] > 0:
        lines.append("warning: the validation split is empty (too few documents for --val-fraction); training "
                     "with evaluation will refuse this data")
    return "\n".join(lines)
