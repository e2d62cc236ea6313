"""``foresight prepare``: tokenize text into token shards for training (see ``foresight.data.prepare``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from foresight.cli.tokenizer import add_input_options, documents_from_args


def register(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize text into training shards",
                       description="Tokenize documents (text, JSON-lines, Parquet, a dataset name, or the demo "
                       "corpus) into flat token shards with EOS between documents, a held-out validation split and "
                       "meta.json. Deterministic for the same inputs.")
    add_input_options(p)
    p.add_argument("--dataset", help="a Hugging Face dataset name or local dataset folder (needs network for hub "
                   "names), read with datasets.load_dataset(..., streaming=True)")
    p.add_argument("--dataset-config", help="the dataset's configuration name")
    p.add_argument("--split", default="train", help="the dataset split to read (default: train)")
    p.add_argument("--tokenizer", required=True, help="a tokenizer folder or tokenizer.json (foresight tokenizer train "
                   "makes one)")
    p.add_argument("--eos", help="end-of-document token, when the tokenizer does not name one")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--val-fraction", type=float, help="share of documents held out (default 0.01; 0.05 with --demo, "
                   "whose documents are whole modules)")
    p.add_argument("--seed", type=int, default=0, help="chooses the held-out documents (default 0)")
    p.add_argument("--shard-tokens", type=int, default=1 << 28, help="tokens per shard file (default 2^28)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal)")
    p.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> None:
    from foresight.data.prepare import PrepareConfig, check_out, prepare, summary
    from foresight.data.tokenizer import load_tokenizer

    check_out(args.out, args.overwrite)  # before the tokenizer and documents are read

    val_fraction = args.val_fraction if args.val_fraction is not None else 0.05 if args.demo else 0.01
    cfg = PrepareConfig(val_fraction=val_fraction, seed=args.seed, shard_tokens=args.shard_tokens)
    tokenizer = load_tokenizer(args.tokenizer, eos=args.eos)
    docs, info = documents_from_args(args, allow_dataset=True)
    meta = prepare(docs, tokenizer, args.out, cfg, overwrite=args.overwrite, info=info, progress=args.progress)
    print(summary(meta, args.out))
    print(f"took {meta['seconds']:.1f} s")
