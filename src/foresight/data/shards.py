"""Prepared token data on disk: flat shards of token ids plus ``meta.json``, read through numpy memmap.

Layout of a prepared folder::

    meta.json             format, dtype, tokenizer identity, per split: tokens, documents, shards (+ SHA-256)
    tokenizer/            a copy of the tokenizer files (AutoTokenizer-loadable)
    train_00000.bin ...   the training stream: documents, each followed by the EOS id, back to back
    val_00000.bin ...     the held-out documents, same format

Shards are raw little-endian ``uint16`` when every id fits (vocabulary <= 65536), else ``uint32``. The
shards of one split are one flat stream cut into files; a sequence may straddle two shards.

Opening checks what can be checked cheaply (sizes against the metadata, the tokenizer hash); ``verify="full"``
also hashes every shard and checks the id range and the EOS count, which catches any change to the data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foresight.errors import ForesightError
from foresight.paths import inside

FORMAT, VERSION = "foresight-tokens", 1
META = "meta.json"
SPLITS = ("train", "val")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Appends token ids to ``<split>_00000.bin``, ``<split>_00001.bin``, ... of at most ``shard_tokens`` each."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise ForesightError(f"--shard-tokens must be >= 1, got {shard_tokens}")
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, DTYPES[dtype], shard_tokens
        self.shards: list[dict] = []
        self.tokens = self.documents = 0
        self._file = None
        self._hash = None
        self._in_shard = 0

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self._file = open(self.folder / name, "wb")
        self._hash = hashlib.sha256()
        self._in_shard = 0
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1].update(tokens=self._in_shard, sha256=self._hash.hexdigest())
            self._file = None

    def write(self, ids: np.ndarray) -> None:
        """Append one document's ids (its EOS included)."""
        data = ids.astype(self.dtype, copy=False)
        self.documents += 1
        while len(data):
            if self._file is None:
                self._open()
            room = self.shard_tokens - self._in_shard
            part, data = data[:room], data[room:]
            raw = part.tobytes()
            self._file.write(raw)
            self._hash.update(raw)
            self._in_shard += len(part)
            self.tokens += len(part)
            if self._in_shard == self.shard_tokens:
                self._close_shard()

    def close(self) -> dict:
        self._close_shard()
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}


class TokenStream:
    """The token stream of one split, its shards addressed as one flat array (memory-mapped, read-only)."""

    def __init__(self, paths: list[Path], counts: list[int], dtype: str) -> None:
        self.maps = [np.memmap(p, dtype=DTYPES[dtype], mode="r", shape=(n,)) for p, n in zip(paths, counts) if n]
        self.starts = np.cumsum([0] + [len(m) for m in self.maps])  # (S + 1,) first index of each shard
        self.dtype = dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``start .. start + length - 1`` as int64 (a copy), across shard boundaries."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"tokens {start}..{start + length} outside a stream of {len(self)}")
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        done = 0
        while done < length:
            offset = start + done - int(self.starts[shard])
            take = min(length - done, len(self.maps[shard]) - offset)
            out[done : done + take] = self.maps[shard][offset : offset + take]
            done += take
            shard += 1
        return out

    def chunks(self, size: int = 1 << 24):
        """Consecutive arrays covering the stream (for full scans)."""
        for m in self.maps:
            for i in range(0, len(m), size):
                yield np.asarray(m[i : i + size])


def check_prepared_complete(folder: Path) -> None:
    """A prepared folder is read only when whole. ``prepare`` writes ``meta.json`` after every shard and the
    tokenizer, then the completion record (``foresight.io.RECORD``), and only then puts the folder in place; a
    folder with a record must hold every file it lists. Folders prepared before the record existed have none
    and are still read: their ``meta.json`` was always written last and the folder renamed into place, and
    every shard is checked against it below. A temporary folder of an interrupted ``prepare`` is refused."""
    from foresight.io import is_unfinished, read_record

    if is_unfinished(folder):
        raise ForesightError(f"{folder} is the temporary folder of an interrupted foresight prepare and may be "
                             f"incomplete; prepare the data again")
    record = read_record(folder)
    if record is not None and record["format"] != "foresight-prepare":
        raise ForesightError(f"{folder} holds {record['format']!r}, not prepared data")


def _fail(folder: Path, what: str) -> None:
    raise ForesightError(f"prepared data {folder}: {what}; re-run foresight prepare to rebuild it")


def _count(folder: Path, value, where: str, low: int, high: int) -> int:
    """``value`` as a whole number in ``low .. high``, else one line naming the key: a wrong type or a value below
    ``low`` as "must be an integer >= low", one above ``high`` as "must be an integer in low .. high"."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(folder, f"{META}: {where} must be an integer >= {low}, got {json.dumps(value)}")
    if value > high:
        _fail(folder, f"{META}: {where} must be an integer in {low:,} .. {high:,}, got {value!r}")
    return value


def _check_meta(folder: Path, meta: dict) -> None:
    """Every field ``open`` and the loader read, with its type and its range, before anything uses it: a list, a
    string or a missing key there used to end in a traceback, and a count sizes a model (the vocabulary) or a
    memory map (token counts, then checked against the shard files' sizes, so a map never reaches past a file)."""
    from foresight.model.limits import MAX_VOCAB

    tok = meta.get("tokenizer")
    if not isinstance(tok, dict):
        _fail(folder, f"{META}: tokenizer must be an object (vocab_size, eos_id, sha256)")
    vocab = _count(folder, tok.get("vocab_size"), "tokenizer.vocab_size", 1, MAX_VOCAB)
    eos = tok.get("eos_id")
    if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < vocab:
        _fail(folder, f"{META}: tokenizer.eos_id must be an integer in 0 .. vocab_size - 1, got {json.dumps(eos)}")
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        _fail(folder, f"{META}: splits must be an object with train and val")
    for split in SPLITS:
        info = splits.get(split)
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
            _fail(folder, f"{META} has no '{split}' split")
        tokens = _count(folder, info.get("tokens"), f"splits.{split}.tokens", 0, 1 << 62)
        _count(folder, info.get("documents"), f"splits.{split}.documents", 0, tokens)  # every document ends in EOS
        for i, shard in enumerate(info["shards"]):
            where = f"splits.{split}.shards[{i}]"
            if not isinstance(shard, dict):
                _fail(folder, f"{META}: {where} must be an object (file, tokens, sha256)")
            if not isinstance(shard.get("file"), str) or not shard["file"] or "\0" in shard["file"]:
                _fail(folder, f"{META}: {where}.file must be a file name, got {json.dumps(shard.get('file'))}")
            _count(folder, shard.get("tokens"), f"{where}.tokens", 0, 1 << 62)
            if not isinstance(shard.get("sha256"), str):
                _fail(folder, f"{META}: {where}.sha256 must be a string")


@dataclass
class PreparedData:
    """A prepared folder, checked against its metadata. ``train`` and ``val`` are ``TokenStream``s."""

    folder: Path
    meta: dict
    train: TokenStream
    val: TokenStream

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["tokenizer"]["eos_id"])

    @property
    def fingerprint(self) -> str:
        """Short hash of the metadata (which holds every shard's hash and the tokenizer's)."""
        return hashlib.sha256((self.folder / META).read_bytes()).hexdigest()[:16]

    def tokenizer(self):
        from foresight.data.tokenizer import load_tokenizer

        return load_tokenizer(self.folder / "tokenizer")

    def split(self, name: str) -> TokenStream:
        if name not in SPLITS:
            raise ForesightError(f"unknown split {name!r}; prepared data has {', '.join(SPLITS)}")
        return getattr(self, name)

    @classmethod
    def open(cls, folder: str | Path, verify: str = "size") -> "PreparedData":
        """Open and check a prepared folder. ``verify``: "size" (cheap) or "full" (hashes, ids, EOS count)."""
        folder = Path(folder)
        meta_path = folder / META
        if not meta_path.is_file():
            hint = "" if folder.is_dir() else " (no such folder)"
            raise ForesightError(f"{folder} is not prepared data{hint}: no {META}; create it with foresight prepare "
                                 f"--input FILES --tokenizer T --out {folder}")
        check_prepared_complete(folder)
        try:
            meta = json.loads(inside(folder, META).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # nested beyond reason: not data either
            _fail(folder, f"{META} is not valid JSON")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            _fail(folder, f"{META} is not {FORMAT} version {VERSION}")
        _check_meta(folder, meta)
        dtype = meta.get("dtype")
        tok = meta.get("tokenizer", {})
        if not isinstance(dtype, str) or dtype not in DTYPES:  # the tokenizer fields: checked by _check_meta
            _fail(folder, f"{META} lacks a valid dtype or tokenizer vocab_size / eos_id")
        if tok["vocab_size"] > np.iinfo(DTYPES[dtype]).max + 1:
            _fail(folder, f"dtype {dtype} cannot hold a vocabulary of {tok['vocab_size']}")
        tok_file = inside(folder, "tokenizer/tokenizer.json")
        if not tok_file.is_file():
            _fail(folder, "the tokenizer copy (tokenizer/tokenizer.json) is missing")
        if hashlib.sha256(tok_file.read_bytes()).hexdigest() != tok.get("sha256"):
            _fail(folder, "tokenizer/tokenizer.json does not match the tokenizer hash in meta.json")
        itemsize = DTYPES[dtype].itemsize
        streams = {}
        for split in SPLITS:
            info = meta.get("splits", {}).get(split)
            if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
                _fail(folder, f"{META} has no '{split}' split")
            paths, counts = [], []
            for shard in info["shards"]:
                if not isinstance(shard, dict):
                    _fail(folder, f"{META} lists a {split} shard that is not an object with 'file' and 'tokens'")
                path = inside(folder, shard.get("file"), "shard")  # not ../x, not /abs, not a link elsewhere
                if not path.is_file():
                    _fail(folder, f"shard {shard['file']} is missing")
                size = path.stat().st_size
                if size != shard["tokens"] * itemsize:
                    _fail(folder, f"shard {shard['file']} holds {size / itemsize:g} tokens ({size} bytes) but "
                                  f"{META} says {shard['tokens']}")
                if verify == "full" and file_sha256(path) != shard["sha256"]:
                    _fail(folder, f"shard {shard['file']} does not match its SHA-256 in {META} (its content changed)")
                paths.append(path)
                counts.append(shard["tokens"])
            if sum(counts) != info["tokens"]:
                _fail(folder, f"the {split} shards hold {sum(counts)} tokens but {META} says {info['tokens']}")
            streams[split] = TokenStream(paths, counts, dtype)
        data = cls(folder, meta, streams["train"], streams["val"])
        if verify == "full":
            data._scan()
        return data

    def _scan(self) -> None:
        """Every id below the tokenizer's vocabulary, one EOS per document."""
        for split in SPLITS:
            top, eos = -1, 0
            for chunk in self.split(split).chunks():
                top = max(top, int(chunk.max()))
                eos += int(np.count_nonzero(chunk == self.eos_id))
            if top >= self.vocab_size:
                _fail(self.folder, f"the {split} split holds token id {top}, outside the tokenizer's vocabulary "
                                   f"of {self.vocab_size}")
            docs = self.meta["splits"][split]["documents"]
            if eos != docs:
                _fail(self.folder, f"the {split} split holds {eos} end-of-document tokens but {META} says {docs} "
                                   f"documents")
