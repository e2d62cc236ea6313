"""TRELAWNEY: spans of the future copied in front of themselves, between two reserved tokens ``<T>`` and ``</T>``.

Thankaraj, Jiang, Kolter & Bisk, "Looking beyond the next token" (arXiv 2504.11336), §3: a training sequence
y_1 … y_n becomes y_1 … y_d <T> y_s … y_{s+k−1} </T> y_{d+1} … y_n with d < s (the copied span lies strictly in
the future of the insertion point), and the training set is a mixture of plain and augmented sequences. The
model, the objectives and the trainer are unchanged: this is a data transform, so it combines with any
objective (NTP, TOP, MTP, ...). docs/objectives.md ("TRELAWNEY") has the definition in our words.

Here: the options (``TrelawneyConfig``), the seeded draws (``uniforms``, ``draw``), the insertion (``insert_rows``),
the loss mask of augmented rows (``label_mask``) and the inverse used by evaluation (``strip_lookahead``), all
vectorised over rows. Each row's draws depend only on (seed, example index), so a data set is augmented the same
way in every process, epoch and resumed run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from foresight.errors import ForesightError

MAX_SPAN = 1 << 12  # the longest span accepted from a recipe (a row grows by max_span + 2 tokens)


@dataclass
class TrelawneyConfig:
    """The ``trelawney:`` subsection of a task section (``stargraph.trelawney``, ``text.trelawney``)."""

    p: float = 0.5  # fraction of training sequences augmented (each one independently, with probability p)
    min_span: int = 1  # k: fewest future tokens copied between <T> and </T>
    max_span: int = 4  # k: most future tokens copied (k is uniform in [min_span, max_span], cut by what is left)
    seed: int = 0  # the draws of example i depend on (seed, i) only
    open_loss: bool = False  # train the prediction of <T> itself; false: the model writes <T> only when prompted
    prompt_open: bool = False  # star graph only: evaluation prompts with '= <T>' so the model writes its own span
    to_end: bool = False  # every span ends at the last token it may copy (star graph: the goal): s = end − k

    def __post_init__(self) -> None:
        from foresight.model.limits import check_int

        if not 0.0 <= float(self.p) <= 1.0:
            raise ForesightError(f"trelawney.p must be in [0, 1], got {self.p}")
        check_int(self.min_span, "trelawney.min_span", 1, MAX_SPAN)
        check_int(self.max_span, "trelawney.max_span", 1, MAX_SPAN)
        if self.min_span > self.max_span:
            raise ForesightError(f"trelawney.min_span ({self.min_span}) exceeds trelawney.max_span ({self.max_span})")


def uniforms(seed: int, index: np.ndarray, n: int = 4) -> np.ndarray:
    """(C, n) float64 in [0, 1): draw j of example ``index[c]``, a SplitMix64 hash of (seed, index, j).

    Counter-based, so example i's draws depend on (seed, i) only (not on the data set's size, the batch it falls
    in or the process), and a whole data set is drawn in one vectorised step."""
    index = np.asarray(index, dtype=np.uint64).reshape(-1, 1)  # (C, 1)
    with np.errstate(over="ignore"):
        x = np.uint64(seed % 2**64) * np.uint64(0x9E3779B97F4A7C15) + index * np.uint64(n) \
            + np.arange(n, dtype=np.uint64)[None, :]  # (C, n) distinct counters
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            x = (x ^ (x >> np.uint64(shift))) * np.uint64(mult)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # the top 53 bits


@dataclass
class Draws:
    """The augmentation of C rows: row c gets ``<T> row[start : start + length] </T>`` right after ``row[at]``
    when ``on[c]`` (the other fields of a plain row are meaningless)."""

    on: np.ndarray  # (C,) bool
    at: np.ndarray  # (C,) int64, d
    start: np.ndarray  # (C,) int64, s > d
    length: np.ndarray  # (C,) int64, k >= 1


def draw(u: np.ndarray, cfg: TrelawneyConfig, first: int, last_end: int, end_of=None) -> Draws:
    """Decide C rows' augmentations from their uniforms ``u`` (C, 4).

    A row is augmented with probability p. d is uniform in [first, last_end − 1 − min_span] (the points that can
    leave ``min_span`` tokens after them); the span may copy tokens up to ``end`` (exclusive): ``last_end``, or
    ``end_of(d)`` (C,) when given (text: the end of d's document); a row with fewer than ``min_span`` tokens
    between d and its end stays plain. Then k is uniform in [min_span, min(max_span, end − d − 1)] and s uniform
    in [d + 1, end − k]: any future span of an allowed length (``to_end``: s = end − k, the span ends at ``end``).
    """
    c = u.shape[0]
    last = last_end - 1 - cfg.min_span
    if last < first:  # no room anywhere
        zero = np.zeros(c, dtype=np.int64)
        return Draws(np.zeros(c, dtype=bool), zero, zero + 1, zero + 1)
    at = first + np.floor(u[:, 1] * (last - first + 1)).astype(np.int64)
    end = np.full(c, last_end, dtype=np.int64) if end_of is None else np.minimum(end_of(at), last_end)
    k_max = np.minimum(cfg.max_span, end - 1 - at)
    on = (u[:, 0] < cfg.p) & (k_max >= cfg.min_span)
    k_max = np.maximum(k_max, cfg.min_span)  # plain rows: any valid numbers
    length = cfg.min_span + np.floor(u[:, 2] * (k_max - cfg.min_span + 1)).astype(np.int64)
    start = at + 1 + np.floor(u[:, 3] * np.maximum(end - length - at, 1)).astype(np.int64)
    if cfg.to_end:
        start = end - length
    return Draws(on, at, start, length)


def insert_rows(tokens: np.ndarray, draws: Draws, open_id: int, close_id: int, width: int, pad: int) -> np.ndarray:
    """(C, L) rows -> (C, width): row c becomes ``row[: d + 1] <T> row[s : s + k] </T> row[d + 1 :]`` when
    ``draws.on[c]``, else stays as it is; then cut to ``width`` or padded with ``pad``."""
    c, n = tokens.shape
    j = np.arange(width)[None, :]  # (1, W) output position
    d, s, k = draws.at[:, None], draws.start[:, None], draws.length[:, None]  # (C, 1)
    on = draws.on[:, None]
    # the source index of output j: j before the span, s + (j − d − 2) inside it, j − k − 2 after it
    src = np.where(~on | (j <= d), j, np.where(j <= d + 1 + k, s + j - d - 2, j - k - 2))  # (C, W)
    out = np.take_along_axis(tokens, np.clip(src, 0, n - 1), axis=1)
    out = np.where(src < n, out, pad)
    out = np.where(on & (j == d + 1), open_id, out)
    return np.where(on & (j == d + k + 2), close_id, out)


def label_mask(n_inputs: int, first_label: int, n_real: np.ndarray, draws: Draws, open_loss: bool) -> np.ndarray:
    """(C, n_inputs) bool: input position t (predicting token t + 1) is trained iff
    ``first_label <= t + 1 < n_real[c]`` (the task's answer, not the padding) and, unless ``open_loss``, t + 1 is
    not the inserted ``<T>`` (position d reads y_d and would predict <T>). The span and ``</T>`` are trained."""
    t = np.arange(n_inputs)[None, :]  # (1, T)
    mask = (t + 1 >= first_label) & (t + 1 < np.asarray(n_real)[:, None])
    if not open_loss:
        mask &= ~(draws.on[:, None] & (t == draws.at[:, None]))
    return mask


def strip_lookahead(tokens: Sequence[int], open_id: int, close_id: int) -> list[int]:
    """Drop every ``<T> … </T>`` segment (both markers included); an unclosed ``<T>`` drops the rest, and a stray
    ``</T>`` is dropped alone. What is left is what evaluation scores."""
    out: list[int] = []
    inside = False
    for tok in tokens:
        if inside:
            inside = tok != close_id
        elif tok == open_id:
            inside = True
        elif tok != close_id:
            out.append(tok)
    return out
