"""Star-graph path finding: the synthetic task on which next-token prediction fails.

Sources: Bachmann & Nagarajan, "The Pitfalls of Next-Token Prediction" (ICML 2024; code
gregorbachmann/Next-Token-Failures) and the TOP paper (§5.3; code zaydzuhri/Next-Token-Failures).
The spec followed here is docs/stargraph.md.

G(d, l): a source with ``d`` arms, each a simple path of ``l`` nodes counting the source, so
E = d·(l − 1) edges, all oriented away from the source. An example is the shuffled edge list, the source
and the goal (the leaf of one arm), and the answer: that arm, ``source, v1, …, goal``.

Text format (the original repo's files), one example per line::

    32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,28/32,12=32,34,6,16,12

Tokens: node ``i`` → id ``i`` (0..N−1); ``|`` → N, ``=`` → N+1, ``/`` → N+2, ``$`` → N+3 (reserved; the padding
of TRELAWNEY rows); with TRELAWNEY (``data/trelawney.py``) also ``<T>`` → N+4 and ``</T>`` → N+5; commas are
dropped. Layout ``a1 b1 | a2 b2 | … aE bE / s g = s v1 … g``: the prefix (up to and including
``=``) has P = 2E + (E − 1) + 1 + 2 + 1 = 3E + 3 tokens, the answer ``l``. The model reads P + l − 1 tokens
and is trained only on the ``l`` positions whose next token is a path token.

Train and test sets are independent draws from generators seeded differently: derive both seeds from one
experiment seed with :func:`split_seeds` (``train, test = split_seeds(seed)``), then
``generate(spec, n_train, train)`` and ``generate(spec, n_test, test)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foresight.batch import Batch
from foresight.data.trelawney import TrelawneyConfig, draw, insert_rows, label_mask, uniforms
from foresight.errors import ForesightError

# Offsets of the special tokens past the N node ids (OPEN, CLOSE: TRELAWNEY's <T> and </T>, only with it on).
PIPE, EQUALS, SLASH, DOLLAR, OPEN, CLOSE = 0, 1, 2, 3, 4, 5
N_SPECIAL = 4
_SYMBOLS = {PIPE: "|", EQUALS: "=", SLASH: "/", DOLLAR: "$"}


# --------------------------------------------------------------------------------------------------------
# Task shape


@dataclass
class StarGraphSpec:
    """Shape of the task: ``deg`` arms (d), ``path`` nodes per arm counting the source (l), ``nodes`` labels (N);
    ``lookahead``: the vocabulary also holds TRELAWNEY's ``<T>`` and ``</T>``."""

    deg: int
    path: int
    nodes: int
    lookahead: bool = False

    def validate(self) -> "StarGraphSpec":
        """Raise ForesightError if no graph of this shape exists; return self for chaining."""
        if int(self.deg) < 1:
            raise ForesightError(f"star graph: deg (number of arms) must be >= 1, got {self.deg}")
        if int(self.path) < 2:
            raise ForesightError(
                f"star graph: path (nodes per arm, source included) must be >= 2, got {self.path}"
            )
        minimum = 1 + self.deg * (self.path - 1)
        if int(self.nodes) < minimum:
            raise ForesightError(
                f"star graph: nodes = {self.nodes} is too small for G({self.deg},{self.path}); "
                f"it needs at least 1 + deg*(path-1) = {minimum} distinct labels"
            )
        return self

    @property
    def n_edges(self) -> int:
        """E = d·(l − 1)."""
        return self.deg * (self.path - 1)

    @property
    def prefix_len(self) -> int:
        """P = 3E + 3: tokens up to and including '='."""
        return 3 * self.n_edges + 3

    @property
    def seq_len(self) -> int:
        """Model input length P + l − 1 (the last path token is only ever a label)."""
        return self.prefix_len + self.path - 1

    @property
    def vocab_size(self) -> int:
        """N node ids plus '|', '=', '/', '$' (and '<T>', '</T>' with ``lookahead``)."""
        return self.nodes + N_SPECIAL + (2 if self.lookahead else 0)

    @property
    def open_id(self) -> int:
        """TRELAWNEY's ``<T>`` (only in the vocabulary with ``lookahead``)."""
        return self.nodes + OPEN

    @property
    def close_id(self) -> int:
        """TRELAWNEY's ``</T>``."""
        return self.nodes + CLOSE

    @property
    def pipe_id(self) -> int:
        return self.nodes + PIPE

    @property
    def equals_id(self) -> int:
        return self.nodes + EQUALS

    @property
    def slash_id(self) -> int:
        return self.nodes + SLASH

    @property
    def dollar_id(self) -> int:
        return self.nodes + DOLLAR

    def __str__(self) -> str:
        return f"G({self.deg},{self.path}) N={self.nodes}"


@dataclass
class Example:
    """One problem: directed edges (parent, child), source, goal, and the answer path source … goal."""

    edges: list[tuple[int, int]]
    source: int
    goal: int
    path: list[int]


# --------------------------------------------------------------------------------------------------------
# Generator


def _mix(seed: int, tag: int) -> int:
    """A well-mixed 63-bit seed from (seed, tag), stable across processes and Python versions."""
    state = np.random.SeedSequence([seed % 2**64, tag % 2**64]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def split_seeds(seed: int) -> tuple[int, int]:
    """(train_seed, test_seed) derived from one experiment seed, so the two sets are independent draws."""
    return _mix(seed, 0), _mix(seed, 1)


def generate_example(spec: StarGraphSpec, rng: random.Random) -> Example:
    """Draw one G(d, l) problem following the generator of docs/stargraph.md.

    1. source uniform in {0..N−1}; goal uniform in {0..N−1} \\ {source}.
    2. l − 2 distinct intermediates, uniform among the labels not yet used.
    3. d − 1 distractor arms of l − 1 fresh labels each (never reused).
    4. Edges parent → child, list uniformly shuffled.
    """
    d, length, n = spec.deg, spec.path, spec.nodes  # d, l, N of G(d, l)
    source = rng.randrange(n)
    goal = rng.randrange(n - 1)
    goal += goal >= source  # uniform over the N − 1 labels other than source
    # All remaining labels at once: an ordered uniform sample without replacement from the N − 2 labels
    # other than source and goal, which has the same law as drawing them one after another.
    lo, hi = min(source, goal), max(source, goal)
    n_fresh = (length - 2) + (d - 1) * (length - 1)
    fresh = []
    for i in rng.sample(range(n - 2), n_fresh):
        i += i >= lo  # map an index of {0..N−3} to the i-th label skipping lo and hi
        i += i >= hi
        fresh.append(i)
    path = [source, *fresh[: length - 2], goal]
    arms = [path] + [[source, *fresh[length - 2 + k * (length - 1) : length - 2 + (k + 1) * (length - 1)]]
                     for k in range(d - 1)]
    edges = [(arm[i], arm[i + 1]) for arm in arms for i in range(length - 1)]
    rng.shuffle(edges)
    return Example(edges=edges, source=source, goal=goal, path=path)


def generate(spec: StarGraphSpec, count: int, seed: int) -> list[Example]:
    """``count`` independent examples, reproducible from ``seed`` (one ``random.Random(seed)`` stream)."""
    spec.validate()
    if count < 0:
        raise ForesightError(f"star graph: number of examples must be >= 0, got {count}")
    rng = random.Random(seed)
    return [generate_example(spec, rng) for _ in range(count)]


# --------------------------------------------------------------------------------------------------------
# Text format


def format_example(ex: Example) -> str:
    """``a,b|a,b|…/s,g=s,v1,…,g`` (the original repo's line format, without the newline)."""
    edges = "|".join(f"{a},{b}" for a, b in ex.edges)
    return f"{edges}/{ex.source},{ex.goal}=" + ",".join(str(v) for v in ex.path)


def _ints(text: str, what: str) -> list[int]:
    """Comma-separated non-negative integers, or a ForesightError naming ``what`` is malformed."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ForesightError(f"malformed {what} {text!r}: expected comma-separated integers") from None
    if any(v < 0 for v in values):
        raise ForesightError(f"malformed {what} {text!r}: node labels must be >= 0")
    return values


def parse_example(line: str) -> Example:
    """Inverse of :func:`format_example`; raises ForesightError saying which part is malformed."""
    text = line.strip()
    if text.count("=") != 1:
        raise ForesightError(f"malformed example {text!r}: expected exactly one '=' before the path")
    head, path_text = text.split("=")
    if head.count("/") != 1:
        raise ForesightError(f"malformed example {text!r}: expected exactly one '/' between edges and 'source,goal'")
    edges_text, query_text = head.split("/")
    edges = []
    for part in edges_text.split("|"):
        pair = _ints(part, "edge")
        if len(pair) != 2:
            raise ForesightError(f"malformed edge {part!r} in {text!r}: expected 'a,b'")
        edges.append((pair[0], pair[1]))
    query = _ints(query_text, "'source,goal'")
    if len(query) != 2:
        raise ForesightError(f"malformed 'source,goal' {query_text!r} in {text!r}: expected two integers")
    path = _ints(path_text, "path")
    if len(path) < 2 or path[0] != query[0] or path[-1] != query[1]:
        raise ForesightError(f"malformed path {path_text!r} in {text!r}: it must run from source to goal")
    return Example(edges=edges, source=query[0], goal=query[1], path=path)


def write_examples(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    """Write one example per line, atomically (temporary file in the same folder, then ``os.replace``)."""
    from foresight.io import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="ascii", newline="\n") as f:
            for ex in examples:
                f.write(format_example(ex) + "\n")

    atomic_write(Path(path), write)


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read a file in the text format; empty lines are skipped; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ForesightError(f"star graph data: no such file: {path}")
    examples = []
    with path.open(encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                examples.append(parse_example(line))
            except ForesightError as err:
                raise ForesightError(f"{path}, line {lineno}: {err}") from None
    return examples


# --------------------------------------------------------------------------------------------------------
# Tokens


def encode(ex: Example, spec: StarGraphSpec) -> list[int]:
    """Token ids ``a1 b1 | … aE bE / s g = s v1 … g`` (length P + l); checks counts and label range."""
    if len(ex.edges) != spec.n_edges or len(ex.path) != spec.path:
        raise ForesightError(
            f"example with {len(ex.edges)} edges and a {len(ex.path)}-node path does not fit {spec} "
            f"({spec.n_edges} edges, {spec.path}-node path)"
        )
    ids: list[int] = []
    for i, (a, b) in enumerate(ex.edges):
        if i:
            ids.append(spec.pipe_id)
        ids += [a, b]
    ids += [spec.slash_id, ex.source, ex.goal, spec.equals_id, *ex.path]
    if any(not 0 <= v < spec.nodes for v in (ex.source, ex.goal, *ex.path, *(v for e in ex.edges for v in e))):
        raise ForesightError(f"example uses a node label outside 0..{spec.nodes - 1}; raise nodes (N) in the spec")
    return ids


# --------------------------------------------------------------------------------------------------------
# Dataset


def trelawney_seq_len(spec: StarGraphSpec, cfg: TrelawneyConfig | None) -> int:
    """What the model reads per training row: P + l − 1, plus 2 + min(max_span, l) with TRELAWNEY."""
    return spec.seq_len + (0 if cfg is None else 2 + min(cfg.max_span, spec.path))


class StarGraphData:
    """Encoded examples and deterministic, epoch-shuffled batches.

    tokens: (C, P + l) long, one row per example (the plain rows: prompts and answers for evaluation).
    ``batch(step, batch_size, seed)`` is a pure function of its arguments, so a resumed run sees exactly the
    batches it would have seen.

    With ``trelawney`` (training data only; the spec needs ``lookahead``) the batches come from augmented rows
    (C, P + l + 2 + K), K = min(max_span, l): example i gets ``<T> span </T>`` inside its answer with the draws of
    ``uniforms(trelawney.seed, i)``, padded with '$'; padding, and the position predicting ``<T>`` unless
    ``open_loss``, carry no loss, and ``horizon`` stops multi-token targets at the row's last real token.
    """

    def __init__(self, examples: Sequence[Example], spec: StarGraphSpec,
                 trelawney: TrelawneyConfig | None = None) -> None:
        spec.validate()
        if not examples:
            raise ForesightError("star graph data: no examples (generate some or check the data file)")
        if trelawney is not None and not spec.lookahead:
            raise ForesightError("star graph data: TRELAWNEY needs the spec's <T> and </T> ids (lookahead=True)")
        self.spec = spec
        rows = np.array([encode(ex, spec) for ex in examples], dtype=np.int64)  # via numpy: 3x faster than torch.tensor
        self.tokens = torch.from_numpy(rows)  # (C, P + l) long
        p, t = spec.prefix_len, spec.seq_len
        # Positions P−1 … P+l−2 read '=', s, …, v_{l−2} and predict the l path tokens.
        self._mask_row = torch.zeros(t, dtype=torch.bool)
        self._mask_row[p - 1 :] = True
        self._perm_cache: tuple[tuple[int, int], torch.Tensor] | None = None
        self.trelawney = trelawney
        self.seq_len = t  # what the model reads per row (longer with TRELAWNEY)
        if trelawney is not None:
            self._augment(trelawney)

    def _augment(self, cfg: TrelawneyConfig) -> None:
        """Build the augmented training rows, their loss masks and horizons (see the class docstring)."""
        spec = self.spec
        p, length = spec.prefix_len, spec.path
        if cfg.min_span > length:
            raise ForesightError(f"stargraph.trelawney.min_span={cfg.min_span} exceeds the answer's {length} tokens")
        width = trelawney_seq_len(spec, cfg) + 1  # the longest augmented row
        # d from '=' (P − 1) on: the span is always inside the answer, never in the prompt
        draws = draw(uniforms(cfg.seed, np.arange(len(self))), cfg, first=p - 1, last_end=p + length)
        tokens = insert_rows(self.tokens.numpy(), draws, spec.open_id, spec.close_id, width, spec.dollar_id)
        real = p + length + np.where(draws.on, draws.length + 2, 0)  # (C,) tokens before the padding
        mask = label_mask(width - 1, p, real, draws, cfg.open_loss)  # (C, W − 1)
        self.aug_tokens = torch.from_numpy(tokens)
        self.aug_mask = torch.from_numpy(mask)
        # horizon[t]: the largest offset j with t + 1 + j a real token (0 past the end: masked positions anyway)
        offsets = real[:, None] - 2 - np.arange(width - 1)[None, :]  # (C, W − 1)
        self.aug_horizon = torch.from_numpy(np.maximum(offsets, 0))
        self.seq_len = width - 1

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def prefixes(self) -> torch.Tensor:
        """(C, P) long: the prompts, up to and including '='."""
        return self.tokens[:, : self.spec.prefix_len]

    @property
    def paths(self) -> torch.Tensor:
        """(C, l) long: the answers."""
        return self.tokens[:, self.spec.prefix_len :]

    def batches_per_epoch(self, batch_size: int) -> int:
        if batch_size < 1 or batch_size > len(self):
            raise ForesightError(
                f"star graph data: batch size {batch_size} must be between 1 and the number of examples ({len(self)})"
            )
        return len(self) // batch_size

    def _permutation(self, seed: int, epoch: int) -> torch.Tensor:
        """(C,) long: the example order of one epoch (cached, since consecutive steps share the epoch)."""
        key = (seed, epoch)
        if self._perm_cache is None or self._perm_cache[0] != key:
            gen = torch.Generator().manual_seed(_mix(seed, epoch))
            self._perm_cache = (key, torch.randperm(len(self), generator=gen))
        return self._perm_cache[1]

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        """Batch ``step`` (0-based): epoch ``step // batches_per_epoch`` is a fresh permutation of the
        examples; the incomplete tail of each epoch is dropped, so every batch has exactly ``batch_size`` rows.

        Returns Batch(tokens (B, P + l), seq_len = P + l − 1, loss_mask (B, P + l − 1) bool); with TRELAWNEY
        Batch(tokens (B, W), seq_len = W − 1, loss_mask and horizon (B, W − 1)).
        """
        if step < 0:
            raise ForesightError(f"star graph data: step must be >= 0, got {step}")
        per_epoch = self.batches_per_epoch(batch_size)
        epoch, index = divmod(step, per_epoch)
        rows = self._permutation(seed, epoch)[index * batch_size : (index + 1) * batch_size]
        if self.trelawney is not None:  # (B, W), W − 1 = self.seq_len
            return Batch(tokens=self.aug_tokens[rows], seq_len=self.seq_len, loss_mask=self.aug_mask[rows],
                         horizon=self.aug_horizon[rows])
        mask = self._mask_row.expand(batch_size, -1).clone()  # (B, seq_len)
        return Batch(tokens=self.tokens[rows], seq_len=self.spec.seq_len, loss_mask=mask)
