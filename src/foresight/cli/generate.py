"""``foresight generate CHECKPOINT --prompt ...``: sampling or greedy decoding, optionally self-speculative."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from foresight.errors import ForesightError

HARD_LIMIT = 1 << 20  # new tokens, even with --allow-longer (a KV cache grows with every one)


def register(sub) -> None:
    g = sub.add_parser("generate", help="continue a prompt with a checkpoint (sampling, greedy, speculative)",
                       description="Continue a prompt with the model's next-token head and a KV cache: greedy "
                       "(default) or sampled (--temperature, --top-k, --top-p). --speculative drafts with the "
                       "model's own MTP heads, DS-MTP modules or TOP head and verifies with head 0: the output is "
                       "the greedy output, produced in fewer forward passes.")
    g.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                   help="a run folder or a checkpoint (step_*.safetensors, an older step_*.pt, or a step_* folder from "
                   "torchrun)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs the run's tokenizer)")
    src.add_argument("--prompt-ids", help="prompt as token ids, e.g. '5 17 3' (any model, no tokenizer)")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64; at most what "
                   "fits the model's context after the prompt, unless --allow-longer)")
    g.add_argument("--allow-longer", action="store_true", help=f"let prompt + output run past the model's trained "
                   f"context (max_seq_len; quality usually drops there), up to {HARD_LIMIT:,} new tokens")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    g.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set with probability >= p")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    # (no argparse choices: the objectives that can draft are the registry's, checked by make_drafter)
    g.add_argument("--speculative", nargs="?", const="auto", metavar="{auto,mtp,dsmtp,top,ngram,ngram+KIND}",
                   help="self-speculative greedy decoding with the model's own heads (default: auto = MTP, else "
                   "DS-MTP, else TOP); ngram: drafts copied from earlier in the text (prompt lookup, no heads); "
                   "ngram+mtp (or +dsmtp, +top): prompt lookup where an n-gram matches, else the heads")
    g.add_argument("--drafts", type=_drafts,
                   help="drafts per step (default: every MTP head / DS-MTP module; 3 for TOP; 4 for ngram), or auto: "
                   "each step verifies the number that maximises expected tokens per measured second (a short "
                   "calibration of this machine's forward cost per block size first; at most 8 for ngram)")
    g.add_argument("--packed", nargs="?", const="fp32", choices=("fp32", "bf16"),
                   help="CPU: run the Linears on oneDNN pre-packed weights: fp32 (default) = the same weights, outputs "
                   "equal up to summation order, verifying a few drafts costs about one plain step; bf16 = half the "
                   "bytes per step but NOT exact (greedy tokens can differ from fp32); a note and no change where "
                   "packing does not apply (docs/decoding.md)")
    g.add_argument("--draft-vocab", choices=("auto", "none"), default="auto",
                   help="with --speculative: MTP / DS-MTP drafts over the checkpoint's reduced draft vocabulary "
                   "(its config's draft_vocab, as benchmarks/smollm2_heads.py writes it) when it has one (auto, "
                   "default), or over the full vocabulary (none); the output is the same either way")
    g.add_argument("--compare", action="store_true",
                   help="with --speculative: also decode plainly, check the outputs agree, report the speed-up")
    g.add_argument("--tokenizer", type=Path, help="tokenizer folder or tokenizer.json (default: the run's own)")
    g.add_argument("--no-eos", action="store_true", help="do not stop at the end-of-document token")
    g.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    g.set_defaults(func=_generate)


def _drafts(text: str):
    """--drafts: an integer or 'auto' (range checked in _check_options)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {text!r}") from None


def _prompt(args, state):
    """(ids (1, P), tokenizer or None)."""
    import torch

    if args.prompt_ids is not None:
        ids = _prompt_ids(args.prompt_ids)
        vocab = state["config"]["model"]["vocab_size"]
        if max(ids) >= vocab:
            raise ForesightError(f"--prompt-ids: id {max(ids):,} is outside the model's vocabulary; ids must be in "
                                 f"0 .. {vocab - 1:,}")
        return torch.tensor([ids]), None
    from foresight.data.tokenizer import load_tokenizer
    from foresight.hf.tokenizer import find_tokenizer

    path = args.tokenizer or find_tokenizer(state, args.checkpoint)
    if path is None:
        raise ForesightError(f"{args.checkpoint}: no tokenizer recorded for this checkpoint (a star-graph model?); "
                             "pass --tokenizer PATH or use --prompt-ids")
    tok = load_tokenizer(path)
    ids = tok.encode(args.prompt)
    if not ids:
        raise ForesightError("--prompt encodes to no tokens")
    return torch.tensor([ids]), tok


def _prompt_ids(text: str) -> list[int]:
    """``'5 17 3'`` (or comma-separated) -> ids, each in 0 .. MAX_VOCAB - 1 (the model's own vocabulary is checked
    once it is known)."""
    from foresight.model.limits import MAX_VOCAB

    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ForesightError(f"--prompt-ids must be integers separated by spaces, got {text!r}") from None
    if not ids:
        raise ForesightError("--prompt-ids is empty")
    if not all(0 <= i < MAX_VOCAB for i in ids):
        bad = next(i for i in ids if not 0 <= i < MAX_VOCAB)
        raise ForesightError(f"--prompt-ids: {bad} is not a token id (ids are in 0 .. the vocabulary size - 1)")
    return ids


def _check_options(args) -> None:
    """Every number is checked before the model is loaded."""
    import math

    if not 1 <= args.max_new_tokens <= HARD_LIMIT:
        raise ForesightError(f"--max-new-tokens must be in 1 .. {HARD_LIMIT:,}, got {args.max_new_tokens}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ForesightError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ForesightError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ForesightError(f"--top-p must be in (0, 1], got {args.top_p}")
    if (args.top_k is not None or args.top_p is not None) and args.temperature == 0:
        raise ForesightError("--top-k/--top-p filter sampling, but --temperature is 0 (greedy); give a "
                             "temperature > 0, e.g. --temperature 0.8")
    from foresight.model.limits import MAX_DRAFTS, check_int

    check_int(args.seed, "--seed", -(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
    if args.top_k is not None:
        check_int(args.top_k, "--top-k", 1, 1 << 62)
    if args.drafts is not None and args.drafts != "auto":
        check_int(args.drafts, "--drafts", 1, MAX_DRAFTS)  # each draft is a position of every verification block
    if args.prompt_ids is not None:
        _prompt_ids(args.prompt_ids)


def _draft_vocab(state: dict, vocab_size: int, checkpoint):
    """The checkpoint's reduced draft vocabulary (config ``draft_vocab``: distinct ids, FR-Spec) or None."""
    import torch

    ids = state.get("config", {}).get("draft_vocab")
    if ids is None:
        return None
    ok = (isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
          and len(set(ids)) == len(ids) and 0 <= min(ids) and max(ids) < vocab_size)
    if not ok:
        raise ForesightError(f"{checkpoint}: config draft_vocab must be a non-empty list of distinct token ids in "
                             f"0..{vocab_size - 1}; fix the checkpoint or pass --draft-vocab none")
    return torch.tensor(ids)


class _Stream:
    """Prints each new token as it comes (text: the growing decoded suffix; ids: one number at a time)."""

    def __init__(self, tok) -> None:
        self.tok, self.ids, self.shown = tok, [], ""

    def __call__(self, column) -> None:
        self.ids.append(int(column[0]))
        if self.tok is None:
            sys.stdout.write(("" if len(self.ids) == 1 else " ") + str(self.ids[-1]))
        else:
            text = self.tok.decode(self.ids)
            if text.startswith(self.shown):  # a later token can change how earlier bytes decode: wait then
                sys.stdout.write(text[len(self.shown):])
                self.shown = text
        sys.stdout.flush()

    def end(self) -> None:
        if self.tok is not None and self.ids:
            text = self.tok.decode(self.ids)
            if text.startswith(self.shown):
                sys.stdout.write(text[len(self.shown):])
        sys.stdout.write("\n")
        sys.stdout.flush()


def _generate(args: argparse.Namespace) -> None:
    import torch

    from foresight.generate import generate, speculative_generate
    from foresight.generate.speculative import AUTO_NGRAM_DRAFTS, make_drafter
    from foresight.train.lm import TrainableLM

    _check_options(args)
    if args.speculative and (args.temperature > 0 or args.top_k or args.top_p):
        raise ForesightError("--speculative is greedy (drafts are verified against the argmax); "
                             "drop --temperature/--top-k/--top-p or drop --speculative")
    if args.compare and not args.speculative:
        raise ForesightError("--compare needs --speculative")
    if args.drafts == "auto" and not args.speculative:
        raise ForesightError("--drafts auto needs --speculative")
    lm, state = TrainableLM.from_checkpoint(args.checkpoint)
    lm = lm.to(args.device)
    if args.packed:
        from foresight.generate.packed import pack_linears

        dtype = torch.bfloat16 if args.packed == "bf16" else torch.float32
        pack_linears(lm.eval(), dtype=dtype)  # the trunk, the output head and the objectives' heads
    draft_vocab = None
    if args.speculative and args.draft_vocab == "auto":
        draft_vocab = _draft_vocab(state, lm.model.cfg.vocab_size, args.checkpoint)
    ids, tok = _prompt(args, state)
    ids = ids.to(args.device)
    if ids.max() >= lm.model.cfg.vocab_size or ids.min() < 0:
        raise ForesightError(f"prompt ids must be in 0..{lm.model.cfg.vocab_size - 1}")
    context = lm.model.cfg.max_seq_len
    room = context - ids.shape[1]
    if args.max_new_tokens > room and not args.allow_longer:
        raise ForesightError(f"the prompt ({ids.shape[1]} tokens) + --max-new-tokens {args.max_new_tokens} exceeds "
                             f"the model's context of {context} tokens; ask for at most {max(room, 0)} new tokens, "
                             f"or pass --allow-longer")
    stream = None if args.speculative else _Stream(tok)
    eos = None if args.no_eos or tok is None else tok.eos_id
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    try:
        t0 = time.perf_counter()
        if args.speculative:
            auto = args.drafts == "auto"
            most = AUTO_NGRAM_DRAFTS if auto and args.speculative == "ngram" else None
            drafter = make_drafter(lm, args.speculative, most if auto else args.drafts, draft_vocab=draft_vocab)
            out, stats = speculative_generate(lm, ids, args.max_new_tokens, drafter, eos_id=eos,
                                              n_draft="auto" if auto else None)
        else:
            out = generate(lm.model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, generator=gen, eos_id=eos, on_token=stream)
        wall = time.perf_counter() - t0
    except ValueError as e:  # bad sampling settings, caught by generate's own checks
        raise ForesightError(str(e)) from None
    finally:
        if stream is not None:
            stream.end()
    new = out[0, ids.shape[1]:].tolist()
    if stream is None:  # speculative decoding prints its output at the end
        print(tok.decode(new) if tok is not None else " ".join(map(str, new)), flush=True)
    n = len(new)
    print(f"[{n} tokens in {wall:.2f}s, {n / max(wall, 1e-9):.1f} tokens/s]", file=sys.stderr)
    if args.speculative:
        acc = ", ".join(f"{a:.1%}" for a in stats.acceptance)
        used = getattr(drafter, "vocab", None)  # TOP drafts ignore a draft vocabulary
        vocab = "" if used is None else f", drafts over the checkpoint's draft vocabulary of {len(used.ids):,} ids"
        print(f"[speculative: tau = {stats.tau:.2f} tokens per forward, acceptance per draft position: {acc}{vocab}]",
              file=sys.stderr)
        if stats.block_sizes:
            sizes = torch.bincount(torch.tensor(stats.block_sizes), minlength=drafter.n_draft + 1).tolist()
            print(f"[drafts verified per step (auto), steps with 0..{drafter.n_draft}: {sizes}]", file=sys.stderr)
        if args.compare:
            t0 = time.perf_counter()
            plain = generate(lm.model, ids, args.max_new_tokens, eos_id=eos)
            plain_wall = time.perf_counter() - t0
            same = torch.equal(plain, out)
            print(f"[plain greedy: {plain_wall:.2f}s; speed-up {plain_wall / max(wall, 1e-9):.2f}x; outputs "
                  f"{'identical' if same else 'DIFFER'}]", file=sys.stderr)
            if not same:
                raise ForesightError("speculative and plain greedy outputs differ (near-tied logits?)")
