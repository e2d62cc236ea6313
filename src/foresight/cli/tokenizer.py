"""``foresight tokenizer train|info``: train a byte-level BPE on local text, or describe a tokenizer."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from foresight.cli.common import Parser
from foresight.errors import ForesightError


def add_input_options(p: argparse.ArgumentParser) -> None:
    """Where text comes from: shared by ``tokenizer train`` and ``prepare``."""
    p.add_argument("--input", nargs="+", metavar="PATH", help="text (.txt, anything else read as text), JSON-lines "
                   "(.jsonl/.json) or Parquet files; folders are read recursively, globs expanded; .gz is unpacked")
    p.add_argument("--demo", action="store_true", help="the demo corpus: this Python's standard library sources "
                   "(about 12 MB, present on every machine)")
    p.add_argument("--text-field", default="text",
                   help="JSON / Parquet / dataset field holding the text (default: text)")
    p.add_argument("--text-unit", choices=("file", "line", "paragraph"), default="file",
                   help="what one document of a text file is (default: the whole file)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) records with invalid UTF-8, invalid "
                   "JSON or no text field instead of stopping at the first")
    p.add_argument("--demo-mb", type=float, default=16, help="cap of the demo corpus in MB (default 16: all of it)")


def documents_from_args(args, allow_dataset: bool = False):
    """(Documents, info) for --input / --demo (/ --dataset)."""
    from foresight.data.sources import Documents, expand_inputs

    dataset = getattr(args, "dataset", None) if allow_dataset else None
    chosen = [bool(args.input), bool(args.demo), bool(dataset)]
    if sum(chosen) != 1:
        names = "--input, --demo or --dataset" if allow_dataset else "--input or --demo"
        raise ForesightError(f"give exactly one of {names}")
    common = dict(text_field=args.text_field, text_unit=args.text_unit, skip_bad=args.skip_bad)
    if args.demo:
        from foresight.data import demo_corpus

        files = demo_corpus.demo_files(int(args.demo_mb * 1e6))
        info = {**demo_corpus.demo_info(), "files": len(files)}
        return Documents(files, describe=demo_corpus.describe, **common), info
    if dataset:
        return Documents(dataset=(dataset, args.dataset_config, args.split), **common), {"dataset": dataset}
    return Documents(expand_inputs(args.input), **common), {}


def register(sub) -> None:
    tk = sub.add_parser("tokenizer", help="train or inspect a tokenizer",
                        description="Train a byte-level BPE tokenizer, or describe an existing one.")
    tk.set_defaults(func=lambda args: tk.print_help())
    actions = tk.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    tr = actions.add_parser("train", help="train a byte-level BPE on local text",
                            description="Train a byte-level BPE with Hugging Face tokenizers; the output folder "
                            "loads with transformers.AutoTokenizer.from_pretrained(OUT).")
    add_input_options(tr)
    tr.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, the end-of-document token included")
    tr.add_argument("--out", type=Path, required=True, help="output folder (tokenizer.json, tokenizer_config.json)")
    tr.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to be merged (default 2)")
    tr.add_argument("--eos", default="<|endoftext|>", help="end-of-document token (default <|endoftext|>, id 0)")
    tr.set_defaults(func=_train, dataset=None)
    info = actions.add_parser("info", help="describe a tokenizer", description="Vocabulary size, end-of-document "
                              "token and hash of a tokenizer folder, tokenizer.json, or prepared data folder.")
    info.add_argument("tokenizer", help="a tokenizer folder, tokenizer.json, prepared data or run folder")
    info.add_argument("--eos", help="end-of-document token, when the tokenizer does not name one")
    info.add_argument("--text", default="def main():\n    return 0\n", help="sample text to encode")
    info.set_defaults(func=_info)


def _train(args: argparse.Namespace) -> None:
    from foresight.data.tokenizer import train_tokenizer

    docs, _ = documents_from_args(args)
    start = time.perf_counter()
    tok = train_tokenizer(docs, args.vocab_size, min_frequency=args.min_frequency, eos_token=args.eos,
                          progress=False)
    tok.save(args.out)
    skipped = ", ".join(f"{n:,} {r}" for r, n in sorted(docs.skipped.items())) or "nothing"
    print(f"trained a byte-level BPE of {tok.vocab_size:,} tokens on {docs.documents:,} documents "
          f"({sum(s.get('bytes', 0) for s in docs.sources) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s "
          f"-> {args.out}")
    print(f"end of document: {tok.eos_token} = {tok.eos_id}; sha256 {tok.sha256[:16]}; skipped: {skipped}")


def _info(args: argparse.Namespace) -> None:
    from foresight.data.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer, eos=args.eos)
    ids = tok.encode(args.text)
    print(f"{tok.source}: vocabulary {tok.vocab_size:,}, end of document {tok.eos_token} = {tok.eos_id}, "
          f"sha256 {tok.sha256[:16]}")
    print(f"{args.text!r} -> {len(ids)} tokens {ids}")
