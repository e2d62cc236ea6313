"""Tokenizers: train a byte-level BPE, or load any local Hugging Face tokenizer.

Everything that needs a tokenizer accepts a folder with ``tokenizer.json`` (what ``save_pretrained`` writes),
a ``tokenizer.json`` file, a folder that ``transformers.AutoTokenizer`` can convert to a fast tokenizer
(e.g. a SentencePiece ``tokenizer.model``), or a prepared data / run folder holding a ``tokenizer/`` copy.
Nothing is downloaded.

Identity: a tokenizer is identified by the SHA-256 of its ``tokenizer.json`` bytes. Prepared data stores a
copy of the tokenizer files and that hash, so training knows the vocabulary and the end-of-document id, and
a changed tokenizer is caught instead of silently mis-reading the token ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from foresight.errors import ForesightError
from foresight.paths import NO_REMOTE_CODE, confine_folder, inside, note_ignored_code, refuse_remote_code

DEFAULT_EOS = "<|endoftext|>"
# Tried in order when neither --eos nor tokenizer_config.json names the end-of-document token.
EOS_CANDIDATES = (DEFAULT_EOS, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")
# Files of a Hugging Face tokenizer folder that are copied along with prepared data.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")
MIN_VOCAB = 257  # 256 byte symbols + the end-of-document token


@dataclass
class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with its end-of-document token and the files that define it."""

    tokenizer: object  # tokenizers.Tokenizer
    eos_id: int
    eos_token: str
    files: dict[str, bytes] = field(repr=False)  # file name -> bytes; always has tokenizer.json
    source: str = ""  # where it was loaded from, for messages and metadata
    _encoder: object = field(default=None, repr=False, compare=False)

    @property
    def vocab_size(self) -> int:
        """Largest token id + 1 (added tokens included): the smallest vocabulary a model must have."""
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.files["tokenizer.json"]).hexdigest()

    def identity(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "vocab_size": self.vocab_size,
                "eos_id": self.eos_id, "eos_token": self.eos_token}

    def encoder(self):
        """A copy that encodes special-token *text* literally: a document that happens to contain the string
        ``<|endoftext|>`` must not put a false document boundary into the stream."""
        from tokenizers import Tokenizer

        if self._encoder is None:
            self._encoder = Tokenizer.from_str(self.files["tokenizer.json"].decode("utf-8"))
            self._encoder.encode_special_tokens = True
        return self._encoder

    def encode(self, text: str) -> list[int]:
        return self.encoder().encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, folder: Path) -> Path:
        """Write the tokenizer files into ``folder`` (loadable by ``AutoTokenizer.from_pretrained``)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / name).write_bytes(data)
        return folder


def _hf_config(eos_token: str) -> bytes:
    """A tokenizer_config.json that transformers 4.x and 5.x both load as a fast tokenizer."""
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token,
           "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}
    return (json.dumps(cfg, indent=2) + "\n").encode()


def _config_eos(config: dict) -> str | None:
    eos = config.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def _pick_eos(tok, config: dict, eos: str | None, where: str) -> tuple[int, str]:
    candidates = [eos] if eos else [c for c in (_config_eos(config), *EOS_CANDIDATES) if c]
    for name in candidates:
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return token_id, name
    if eos:
        raise ForesightError(f"tokenizer {where}: --eos {eos!r} is not a token of its vocabulary")
    raise ForesightError(f"tokenizer {where}: cannot tell its end-of-document token (tried "
                         f"{', '.join(candidates)}); name it with --eos TOKEN")


def _from_json_file(path: Path, eos: str | None, source: str) -> TextTokenizer:
    from tokenizers import Tokenizer

    data = path.read_bytes()
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files; bad UTF-8 too
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ForesightError(f"{path} is not a readable tokenizer.json ({detail})") from None
    folder = path.parent
    files = {"tokenizer.json": data}
    for name in TOKENIZER_FILES[1:]:
        if path.name == "tokenizer.json" and (folder / name).is_file():
            files[name] = inside(folder, name).read_bytes()  # copied on with prepared data: never a file elsewhere
    config = {}
    if "tokenizer_config.json" in files:
        try:
            config = json.loads(files["tokenizer_config.json"])
        except (ValueError, RecursionError):  # not UTF-8 / not JSON / nested beyond reason (issue 21)
            raise ForesightError(f"{folder / 'tokenizer_config.json'} is not valid JSON") from None
        if not isinstance(config, dict):
            raise ForesightError(f"{folder / 'tokenizer_config.json'} must hold a JSON object of settings")
    eos_id, eos_token = _pick_eos(tok, config, eos, source)
    if "tokenizer_config.json" not in files:
        files["tokenizer_config.json"] = _hf_config(eos_token)  # makes the copy loadable by AutoTokenizer
    return TextTokenizer(tok, eos_id, eos_token, files, source)


def _from_transformers(folder: Path, eos: str | None) -> TextTokenizer:
    """A folder without tokenizer.json (e.g. SentencePiece): let transformers convert it to a fast one."""
    from tokenizers import Tokenizer

    confine_folder(folder)  # transformers opens whatever tokenizer files it finds there
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **NO_REMOTE_CODE)
    except Exception as e:
        refuse_remote_code(folder, "save the tokenizer as a tokenizer.json (a fast tokenizer) and give that")
        raise ForesightError(f"{folder}: no tokenizer.json and transformers cannot load it "
                             f"({str(e).splitlines()[0]})") from None
    note_ignored_code(folder)  # loaded with transformers' own class
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ForesightError(f"{folder}: transformers loads only a slow tokenizer; save it as a fast one "
                             f"(tokenizer.json) first")
    data = backend.to_str().encode("utf-8")
    tok = Tokenizer.from_str(data.decode("utf-8"))
    files = {"tokenizer.json": data}
    for name in TOKENIZER_FILES[1:]:
        if (folder / name).is_file():
            files[name] = inside(folder, name).read_bytes()
    eos_id, eos_token = _pick_eos(tok, {"eos_token": hf.eos_token}, eos, str(folder))
    files.setdefault("tokenizer_config.json", _hf_config(eos_token))
    return TextTokenizer(tok, eos_id, eos_token, files, str(folder))


def load_tokenizer(spec: str | Path, eos: str | None = None) -> TextTokenizer:
    """Load a local tokenizer (see the module docstring for what ``spec`` may be)."""
    path = Path(spec)
    if path.is_file():
        return _from_json_file(path, eos, str(path))
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _from_json_file(inside(path, "tokenizer.json"), eos, str(path))
        if (path / "tokenizer" / "tokenizer.json").is_file():  # prepared data or a run folder
            return _from_json_file(inside(path, "tokenizer/tokenizer.json"), eos, str(path / "tokenizer"))
        if any((path / name).is_file() for name in TOKENIZER_FILES):
            return _from_transformers(path, eos)
        raise ForesightError(f"{path} holds no tokenizer (tokenizer.json, tokenizer.model, ...)")
    raise ForesightError(f"tokenizer not found: {spec} (give a local tokenizer folder or tokenizer.json; "
                         f"nothing is downloaded)")


def train_tokenizer(documents: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                    eos_token: str = DEFAULT_EOS, length: int | None = None, progress: bool = False) -> TextTokenizer:
    """Train a byte-level BPE (GPT-2 style: any byte sequence round-trips, no unknown token).

    The end-of-document token gets id 0. ``length`` (number of documents, if known) feeds the progress bar.
    The result is deterministic for the same documents in the same order.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB:
        raise ForesightError(f"--vocab-size must be at least {MIN_VOCAB} (256 bytes + {eos_token}), got {vocab_size}")
    from foresight.model.limits import MAX_VOCAB, check_int

    check_int(vocab_size, "--vocab-size", MIN_VOCAB, MAX_VOCAB)  # the model's vocabulary, within its limit
    check_int(min_frequency, "--min-frequency", 0, 2**32 - 1)  # (the trainer's u32)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[eos_token],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress)
    tok.train_from_iterator(documents, trainer=trainer, length=length)
    if tok.get_vocab_size() <= 1:
        raise ForesightError("tokenizer training saw no text")
    files = {"tokenizer.json": tok.to_str(pretty=True).encode("utf-8"), "tokenizer_config.json": _hf_config(eos_token)}
    return TextTokenizer(tok, tok.token_to_id(eos_token), eos_token, files, "trained")
