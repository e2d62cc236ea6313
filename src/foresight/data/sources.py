"""Documents from local text, JSON-lines and Parquet files, or from a Hugging Face dataset by name.

A *document* is the unit that gets an end-of-document token in the token stream: a whole text file (or each
line / blank-line-separated paragraph of it, with ``text_unit``), one JSON line, one Parquet row, one dataset
record. Documents come out in a fixed order (inputs in the order given, folders and globs sorted), so the same
inputs always give the same stream.

Local files are read here rather than through ``datasets.load_dataset``: that gives errors that name the file
and line, constant memory, no cache folder, and lets bad records be skipped *and counted*. Parquet is read
with ``pyarrow`` (the library ``datasets`` itself uses); dataset names go through ``datasets``.

Bad data: an invalid UTF-8 byte, an unparsable JSON line, a record without the text field (or with a
non-string one) is an error naming the place, or with ``skip_bad`` a skip counted under its reason. Empty
files and empty documents are always skipped and counted: they carry no text.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from foresight.errors import ForesightError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
TEXT_UNITS = ("file", "line", "paragraph")


def _suffix(path: Path) -> str:
    """The format suffix, looking through a trailing ``.gz``: ``a.jsonl.gz`` -> ``.jsonl``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files named by ``inputs``: files as given, folders recursively (sorted, hidden files skipped), globs."""
    files: list[Path] = []
    for item in inputs:
        if any(ch in item for ch in "*?["):
            matched = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matched:
                raise ForesightError(f"--input {item}: the pattern matches no file")
            files += matched
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise ForesightError(f"--input {item}: the folder holds no file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ForesightError(f"--input {item}: no such file or folder")
    return files


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


class Documents:
    """Iterate the documents of some sources, counting what was read and what was skipped.

    ``files``: local files; or ``dataset`` = (name, config, split) for ``datasets.load_dataset``.
    After (or during) iteration: ``documents``, ``skipped`` (reason -> count) and ``sources`` (per file:
    path, documents, bytes). ``on_bytes(n)`` is called as input bytes are consumed (for a progress bar).
    """

    def __init__(self, files: list[Path] | None = None, *, dataset: tuple[str, str | None, str] | None = None,
                 text_field: str = "text", text_unit: str = "file", skip_bad: bool = False,
                 describe: Callable[[Path], str] = str) -> None:
        if (files is None) == (dataset is None):
            raise ValueError("give either files or dataset")
        if text_unit not in TEXT_UNITS:
            raise ForesightError(f"text unit must be one of {', '.join(TEXT_UNITS)}, got {text_unit!r}")
        self.files, self.dataset = files, dataset
        self.text_field, self.text_unit, self.skip_bad = text_field, text_unit, skip_bad
        self.describe = describe  # how a file is named in metadata (e.g. relative to a corpus root)
        self.documents = 0
        self.skipped: Counter = Counter()
        self.sources: list[dict] = []
        self.on_bytes: Callable[[int], None] = lambda n: None

    @property
    def total_bytes(self) -> int | None:
        return None if self.files is None else sum(p.stat().st_size for p in self.files)

    # ------------------------------------------------------------------------------------------ helpers
    def _bad(self, reason: str, where: str, hint: str) -> None:
        """Skip (counted) with ``skip_bad``, else stop with one line naming the place and the fix."""
        if self.skip_bad:
            self.skipped[reason] += 1
            return
        raise ForesightError(f"{where}: {reason}; {hint}, or pass --skip-bad to skip and count such records")

    def _decode(self, data: bytes, where: str, base_line: int = 1) -> str | None:
        try:
            return data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as e:
            line = base_line + _line_of(data, e.start) - 1
            self._bad("invalid UTF-8", f"{where}, line {line} (byte {e.start})", "convert the file to UTF-8")
            return None

    def _emit(self, text: str, source: dict) -> Iterator[str]:
        if not text.strip():
            self.skipped["empty document"] += 1
            return
        self.documents += 1
        source["documents"] += 1
        yield text

    def _field(self, record, where: str) -> str | None:
        if not isinstance(record, dict) or self.text_field not in record:
            fields = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            self._bad(f"no field {self.text_field!r}", f"{where} (has: {fields or 'nothing'})",
                      "choose the text field with --text-field")
            return None
        value = record[self.text_field]
        if not isinstance(value, str):
            self._bad(f"field {self.text_field!r} is not a string", where, "choose the text field with --text-field")
            return None
        return value

    # ---------------------------------------------------------------------------------------- readers
    def _open(self, path: Path):
        """A binary file object, decompressing ``.gz``; a progress callback sees compressed bytes."""
        try:
            return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
        except OSError as e:
            raise ForesightError(f"{path}: cannot read ({e.strerror})") from None

    def _lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        """(line number, raw line without the newline), streamed: a big file never sits in memory whole."""
        raw_file = open(path, "rb")
        stream = gzip.open(raw_file, "rb") if path.suffix.lower() == ".gz" else raw_file
        reported = 0
        try:
            for lineno, raw in enumerate(stream, 1):
                if lineno % 4096 == 0:  # progress in bytes of the file on disk
                    pos = raw_file.tell()
                    self.on_bytes(pos - reported)
                    reported = pos
                yield lineno, raw.rstrip(b"\n")
        except (OSError, EOFError) as e:
            raise ForesightError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        finally:
            stream.close()
            raw_file.close()
            self.on_bytes(path.stat().st_size - reported)

    def _read_text(self, path: Path, source: dict) -> Iterator[str]:
        if self.text_unit == "line":
            for lineno, raw in self._lines(path):
                text = self._decode(raw, str(path), lineno)
                if text is not None:
                    yield from self._emit(text.rstrip("\r"), source)
            return
        with self._open(path) as f:
            try:
                data = f.read()
            except (OSError, EOFError) as e:
                raise ForesightError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        self.on_bytes(path.stat().st_size)
        if not data.strip():
            self.skipped["empty file"] += 1
            return
        text = self._decode(data, str(path))
        if text is None:
            return
        if self.text_unit == "file":
            yield from self._emit(text, source)
        else:  # paragraphs: blocks separated by one or more blank lines
            block: list[str] = []
            for line in text.splitlines():
                if line.strip():
                    block.append(line)
                elif block:
                    yield from self._emit("\n".join(block), source)
                    block = []
            if block:
                yield from self._emit("\n".join(block), source)

    def _read_jsonl(self, path: Path, source: dict) -> Iterator[str]:
        any_record = False
        for lineno, raw in self._lines(path):
            if not raw.strip():
                continue
            if not any_record and raw.lstrip()[:1] == b"[":
                raise ForesightError(f"{path}: a JSON array, not JSON lines (one object per line); convert it, e.g. "
                                     f"with jq -c '.[]'")
            any_record = True
            where = f"{path}, line {lineno}"
            line = self._decode(raw, str(path), lineno)
            if line is None:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                self._bad("invalid JSON", f"{where}", f"fix the line ({e.msg} at column {e.colno})")
                continue
            text = self._field(record, where)
            if text is not None:
                yield from self._emit(text, source)
        if not any_record:
            self.skipped["empty file"] += 1

    def _read_parquet(self, path: Path, source: dict) -> Iterator[str]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ForesightError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        names = pf.schema_arrow.names
        if self.text_field not in names:
            raise ForesightError(f"{path}: Parquet file has no column {self.text_field!r} (columns: "
                                 f"{', '.join(names)}); choose one with --text-field")
        size, rows = path.stat().st_size, max(pf.metadata.num_rows, 1)
        row = 0
        for batch in pf.iter_batches(columns=[self.text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                where = f"{path}, row {row}"
                if isinstance(value, bytes):
                    value = self._decode(value, where)
                    if value is None:
                        continue
                if value is None:
                    self.skipped["empty document"] += 1
                elif not isinstance(value, str):
                    self._bad(f"column {self.text_field!r} is not text", where,
                              "choose the text column with --text-field")
                else:
                    yield from self._emit(value, source)
            self.on_bytes(size * batch.num_rows // rows)

    def _read_file(self, path: Path) -> Iterator[str]:
        size = path.stat().st_size
        source = {"path": self.describe(path), "documents": 0, "bytes": size}
        self.sources.append(source)
        if size == 0:
            self.skipped["empty file"] += 1
            return
        kind = _suffix(path)
        if kind in PARQUET_SUFFIXES:
            yield from self._read_parquet(path, source)
        elif kind in JSONL_SUFFIXES:
            yield from self._read_jsonl(path, source)
        else:
            yield from self._read_text(path, source)

    def _read_dataset(self) -> Iterator[str]:
        name, config, split = self.dataset
        source = {"dataset": name, "config": config, "split": split, "documents": 0}
        self.sources.append(source)
        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)  # its retry warnings would bury the one line that matters
        try:
            import datasets

            # never a loading script's code (datasets 4 and later run none and ignore a False here)
            ds = datasets.load_dataset(name, config, split=split, streaming=True, trust_remote_code=False)
            records = iter(ds)
        except Exception as e:  # network, unknown name, bad split: one line is what the user needs
            raise ForesightError(f"cannot load dataset {name!r} (split {split!r}): {str(e).splitlines()[0]}") from None
        finally:
            hub_log.setLevel(level)
        for i, record in enumerate(records, 1):
            text = self._field(record, f"dataset {name}, record {i}")
            if text is not None:
                yield from self._emit(text, source)
            self.on_bytes(1)

    def __iter__(self) -> Iterator[str]:
        if self.dataset is not None:
            yield from self._read_dataset()
        else:
            for path in self.files:
                yield from self._read_file(path)
