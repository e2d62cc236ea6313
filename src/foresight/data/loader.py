"""Packed sequences with exactly the look-ahead their objectives need, taken from the token stream itself.

Sample i is ``stream[i·T : i·T + T + a]``: the model reads the first T tokens; the last ``a`` (the objectives'
look-ahead, ``TrainableLM.lookahead``: 1 for NTP, min(window, 128) for TOP, n for MTP, D + 1 for DS-MTP) only
supply labels and are the first inputs of sample i + 1. Consecutive samples therefore overlap by exactly the
look-ahead and every token of the stream is an input once per epoch: no text is thrown away (the TOP
reference loads 2T tokens per sequence and uses half as look-ahead; docs/objectives.md).

The number of samples is computed with a look-ahead of at least 128 (``reserve``), so NTP, TOP, MTP and
DS-MTP runs over the same data and seed see the same sequences in the same order, and their curves compare
like for like. Order: a seeded permutation per epoch; batch ``step`` takes global sample slots
``step·B .. step·B + B - 1`` of the concatenated epochs, so a batch may span two epochs and no sample is
dropped. ``batch(step)`` is a pure function of the step: the position in the data is the step, which
checkpoints hold; ``state(step)`` describes it so a resumed run can check it reads the same data.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from foresight.batch import Batch
from foresight.data.shards import TokenStream
from foresight.data.trelawney import TrelawneyConfig, draw, insert_rows, label_mask, uniforms
from foresight.errors import ForesightError

# Look-ahead tokens every sample keeps past its T, whatever the run's objectives, so runs over the same data
# with different objectives see the same samples (a run needing more keeps more). 128 covers the built-in
# objectives (TOP: min(window, 128) slots; tests/data check it against objectives.top.MAX_SLOTS).
RESERVE = 128


def doc_horizon(tokens: torch.Tensor, seq_len: int, eos_id: int) -> torch.Tensor:
    """(B, L) tokens -> (B, seq_len) long: for position t, the offset j of the first EOS at ``t + 1 + j``.

    Targets ``tokens[t + 1 + j]`` with j <= horizon stay inside the current document (its EOS included);
    positions with no EOS ahead in the row get L (no limit). See ``Batch.horizon``.
    """
    b, length = tokens.shape
    pos = torch.arange(length, device=tokens.device).expand(b, length)
    at_eos = torch.where(tokens == eos_id, pos, torch.full_like(pos, 2 * length))
    # next_eos[p] = first EOS index >= p: a cumulative minimum from the right.
    next_eos = at_eos.flip(1).cummin(1).values.flip(1)  # (B, L)
    after = next_eos[:, 1 : seq_len + 1] - pos[:, 1 : seq_len + 1]  # (B, T): offset of the EOS from t + 1
    return after.clamp(max=length)


class PackedLoader:
    """Shuffled packed batches from one token stream.

    stream: the training split. seq_len: T. lookahead: extra tokens per sample (>= 1). batch_size: B.
    eos_id + cross_documents=False: batches carry ``horizon`` so TOP/MTP/DS-MTP targets stop at documents'
    ends (default True: they cross, as in the paper). vocab_size: every batch is checked against it.
    fingerprint: identifies the data in ``state`` (e.g. a hash of meta.json).
    trelawney + lookahead_ids (the ids of ``<T>``, ``</T>``): TRELAWNEY spans in the samples (``augment``).
    """

    def __init__(self, stream: TokenStream, seq_len: int, lookahead: int, batch_size: int, seed: int, *,
                 eos_id: int | None = None, cross_documents: bool = True, shuffle: bool = True,
                 vocab_size: int | None = None, fingerprint: str = "", reserve: int = RESERVE,
                 trelawney: TrelawneyConfig | None = None, lookahead_ids: tuple[int, int] | None = None) -> None:
        if seq_len < 1 or lookahead < 1 or batch_size < 1:
            raise ForesightError("seq_len, look-ahead and batch size must be >= 1")
        if not cross_documents and eos_id is None:
            raise ForesightError("stopping targets at document boundaries needs the EOS id")
        self.stream, self.seq_len, self.lookahead, self.batch_size = stream, seq_len, lookahead, batch_size
        self.seed, self.eos_id, self.cross_documents, self.shuffle = seed, eos_id, cross_documents, shuffle
        self.vocab_size, self.fingerprint = vocab_size, fingerprint
        if trelawney is not None and lookahead_ids is None:
            raise ForesightError("TRELAWNEY needs the ids of <T> and </T>")
        self.trelawney, self.lookahead_ids = trelawney, lookahead_ids
        self.samples = (len(stream) - max(lookahead, reserve)) // seq_len
        if self.samples < 1:
            raise ForesightError(f"the training split holds {len(stream):,} tokens, fewer than one sequence of "
                                 f"{seq_len} + {max(lookahead, reserve)} look-ahead tokens; prepare more text or "
                                 f"lower text.seq_len")
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def tokens_per_epoch(self) -> int:
        return self.samples * self.seq_len

    def _order(self, epoch: int) -> np.ndarray:
        """(samples,) the sample order of one epoch (cached: consecutive steps share it)."""
        if not self.shuffle:
            return np.arange(self.samples)
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._perm = (epoch, rng.permutation(self.samples))
        return self._perm[1]

    def sample_ids(self, step: int) -> np.ndarray:
        """(B,) the samples of batch ``step``."""
        if step < 0:
            raise ForesightError(f"step must be >= 0, got {step}")
        slots = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, index = np.divmod(slots, self.samples)
        return np.array([self._order(int(e))[i] for e, i in zip(epochs, index)])

    def window(self, sample: int) -> np.ndarray:
        return self.stream.read(int(sample) * self.seq_len, self.seq_len + self.lookahead)

    def batch(self, step: int) -> Batch:
        """Batch(tokens (B, T + lookahead) long, seq_len = T, horizon (B, T) or None)."""
        ids = self.sample_ids(step)
        rows = np.stack([self.window(s) for s in ids])
        mask = None
        if self.trelawney is not None:
            rows, mask = augment(rows, ids, self.seq_len, self.trelawney, self.lookahead_ids, self.eos_id)
        tokens = torch.from_numpy(rows)  # (B, T + a) int64
        batch = make_batch(tokens, self.seq_len, self.vocab_size, self.eos_id, self.cross_documents)
        batch.loss_mask = None if mask is None else torch.from_numpy(mask)
        return batch

    def state(self, step: int) -> dict:
        """The data position before batch ``step``; equal states mean identical batches from here on."""
        epoch, in_epoch = divmod(step * self.batch_size, self.samples)
        upcoming = hashlib.sha256(self.sample_ids(step).astype("<i8").tobytes()).hexdigest()[:16]
        return {"data": self.fingerprint, "tokens": len(self.stream), "seq_len": self.seq_len,
                "lookahead": self.lookahead, "batch_size": self.batch_size, "seed": self.seed,
                "shuffle": self.shuffle, "cross_documents": self.cross_documents, "samples": self.samples,
                "epoch": epoch, "sample_in_epoch": in_epoch, "next_batch": upcoming}


def augment(rows: np.ndarray, sample_ids: np.ndarray, seq_len: int, cfg: TrelawneyConfig, ids: tuple[int, int],
            eos_id: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """TRELAWNEY on packed samples (data/trelawney.py): rows (B, T + a) -> the same shape, and the (B, T) loss mask
    (None with ``open_loss``: every position trained).

    Sample i's draws depend on (trelawney.seed, i) only. The insertion point is d ≤ T − 1 − min_span (0-based)
    and the span is copied from the model's own input (index < T) of d's document (before the next
    EOS); a sample with no room stays plain. The row keeps its length: its last k + 2 tokens, the start of the next
    sample anyway, drop out.
    """
    b, n = rows.shape
    end_of = None
    if eos_id is not None:
        pos = np.arange(n)[None, :]
        at_eos = np.where(rows == eos_id, pos, n)  # (B, n)
        next_eos = np.minimum.accumulate(at_eos[:, ::-1], axis=1)[:, ::-1]  # first EOS index >= i

        def end_of(at):  # (B,) -> (B,): the first EOS after d (the span stops before it)
            return next_eos[np.arange(b), np.minimum(at + 1, n - 1)]
    draws = draw(uniforms(cfg.seed, sample_ids), cfg, first=0, last_end=seq_len, end_of=end_of)
    out = insert_rows(rows, draws, ids[0], ids[1], width=n, pad=0)  # no padding: the row only loses its tail
    mask = None if cfg.open_loss else label_mask(seq_len, 0, np.full(b, n), draws, open_loss=False)
    return out, mask


def make_batch(tokens: torch.Tensor, seq_len: int, vocab_size: int | None, eos_id: int | None,
               cross_documents: bool) -> Batch:
    if vocab_size is not None and tokens.numel():
        top = int(tokens.max())
        if top >= vocab_size:
            raise ForesightError(f"the data holds token id {top}, outside the model's vocabulary of {vocab_size}; "
                                 f"the data was prepared with another tokenizer, or is damaged")
    horizon = None if cross_documents else doc_horizon(tokens, seq_len, eos_id)
    return Batch(tokens, seq_len, horizon=horizon)


def eval_windows(stream: TokenStream, seq_len: int, lookahead: int, batch_size: int, max_batches: int | None,
                 reserve: int = RESERVE) -> list[np.ndarray]:
    """Fixed evaluation windows: consecutive, non-overlapping inputs from the start of ``stream``.

    Window i = ``stream[i·T : i·T + T + lookahead]``, grouped into batches of ``batch_size`` (the last may be
    smaller). The count uses the same ``reserve`` as training, so every run (any objective with look-ahead
    <= reserve) evaluates the very same input tokens. Returns a list of (b, T + lookahead) int64 arrays.
    """
    n = max(0, (len(stream) - max(lookahead, reserve)) // seq_len)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    rows = [stream.read(i * seq_len, seq_len + lookahead) for i in range(n)]
    return [np.stack(rows[i : i + batch_size]) for i in range(0, n, batch_size)]
