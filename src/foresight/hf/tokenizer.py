"""Tokenizer files: finding them for a checkpoint and copying them into an exported or imported folder.

A foresight checkpoint does not contain its tokenizer. Text runs record where it is (the prepared data
folder holds ``tokenizer.json``); star-graph runs have none (their ids are node labels). Every command that
needs one also takes ``--tokenizer PATH`` (a folder or a ``tokenizer.json``). Loading is
``foresight.data.tokenizer.load_tokenizer``'s job.
"""

from __future__ import annotations

import json
from pathlib import Path

from foresight.errors import ForesightError
from foresight.io import write_json
from foresight.paths import copy_inside, inside

# Files a Hugging Face tokenizer may consist of; whichever exist are copied.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")
_EOS = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|eos|>", "[EOS]", "<|eot_id|>")
_BOS = ("<s>", "<bos>", "<|begin_of_text|>", "<|bos|>", "[BOS]")
_PAD = ("<pad>", "<|pad|>", "[PAD]")


def tokenizer_dir(path: Path) -> Path | None:
    """A folder holding tokenizer files, from that folder, one of its files, or a run / prepared-data folder
    with a ``tokenizer/`` copy; None when there is none."""
    path = Path(path)
    if path.is_file() and path.name in TOKENIZER_FILES:
        return path.parent
    for folder in (path, path / "tokenizer"):
        if folder.is_dir() and any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            return folder
    return None


def _candidates(config: dict) -> list:
    """Paths a run config may point at: an explicit ``tokenizer``, or a text task's data folder."""
    found = [config.get("tokenizer"), config.get("tokenizer_path")]
    recipe = config.get("recipe") or {}
    for section in (config.get("text"), recipe.get("text") if isinstance(recipe, dict) else None):
        if isinstance(section, dict):
            found += [section.get(k) for k in ("tokenizer", "tokenizer_path", "data_dir", "data", "path")]
    return [c for c in found if isinstance(c, (str, Path)) and c]


def find_tokenizer(state: dict, checkpoint: Path | None = None) -> Path | None:
    """The tokenizer folder of a checkpoint, or None (star graph, or files moved away).

    Text runs record ``config["tokenizer"] = "tokenizer"``: a copy in the run folder (``foresight.tasks.text``);
    ``foresight import`` does the same. Relative paths are tried against the checkpoint's folders first, then
    the working directory.
    """
    config = state.get("config") or {}
    bases = []
    if checkpoint is not None:
        checkpoint = Path(checkpoint).resolve()
        bases += [checkpoint if checkpoint.is_dir() else checkpoint.parent, *checkpoint.parents[:3]]
    for c in _candidates(config):
        for base in [*bases, Path.cwd()]:
            d = tokenizer_dir(base / c)
            if d is not None:
                return d
    for base in bases[:2]:  # a tokenizer stored beside the checkpoint (or its run folder)
        for d in (base / "tokenizer", base):
            if (d / "tokenizer.json").is_file():
                return d
    return None


def special_tokens(folder: Path) -> dict[str, tuple[str, int]]:
    """``{"eos": (text, id), "bos": ..., "pad": ...}`` as far as the files tell."""
    folder = Path(folder)
    added: dict[str, int] = {}
    tok_json = folder / "tokenizer.json"
    if tok_json.is_file():
        data = json.loads(inside(folder, "tokenizer.json").read_text(encoding="utf-8"))
        added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            added = {**{k: v for k, v in vocab.items() if k.startswith(("<", "["))}, **added}
    declared = {}
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        cfg = json.loads(inside(folder, "tokenizer_config.json").read_text(encoding="utf-8"))
        for role in ("eos", "bos", "pad"):
            tok = cfg.get(f"{role}_token")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if isinstance(tok, str):
                declared[role] = tok
    out = {}
    for role, names in (("eos", _EOS), ("bos", _BOS), ("pad", _PAD)):
        for name in ([declared[role]] if role in declared else []) + list(names):
            if name in added:
                out[role] = (name, added[name])
                break
    return out


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files of ``src`` into ``dst``; write a ``tokenizer_config.json`` if there is none.

    Each file must be inside the tokenizer folder once links are followed (a ``tokenizer.model`` linked to a
    private file elsewhere is refused, not published), and each copy gets a new file's permissions.
    The written config names ``PreTrainedTokenizerFast`` (the class that reads a bare ``tokenizer.json``) and the
    special tokens found, so ``AutoTokenizer.from_pretrained(dst)`` works without custom code.
    """
    folder = tokenizer_dir(src)
    if folder is None:
        raise ForesightError(f"no tokenizer files (tokenizer.json, tokenizer.model, vocab.json) in {src}")
    src = folder
    names = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    for name in names:
        inside(src, name)  # every file checked before any is copied: a link elsewhere copies nothing
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        copy_inside(src, name, dst / name)  # the permissions a new file gets, never the source's
        copied.append(name)
    if "tokenizer_config.json" not in copied and "tokenizer.json" in copied:
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        for role, (text, _) in special_tokens(dst).items():
            cfg[f"{role}_token"] = text
        write_json(dst / "tokenizer_config.json", cfg)
        copied.append("tokenizer_config.json")
    return copied
