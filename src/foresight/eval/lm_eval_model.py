"""A foresight model as an lm-evaluation-harness model (registered as ``foresight``).

Scores a checkpoint directly — no export, no ``accelerate`` — with the run's own tokenizer. The three request
types of lm-eval 0.4:

* ``loglikelihood``: log P(continuation | context) summed over the continuation's tokens, and whether greedy
  decoding would produce it; the context is cut from the left to fit ``max_length``. The pair is split at the
  last token boundary the context shares with the whole string, so a continuation that merges with the end
  of the context (``'def main('`` + ``'):'``) is scored from there instead of coming out empty; a request
  that still has nothing to score fails with its task and document named.
* ``loglikelihood_rolling``: the whole text scored in disjoint windows of ``max_length`` tokens, each token
  once, the first one conditioned on the end-of-document token (what the training stream puts before every
  document).
* ``generate_until``: greedy (or sampled, when the task asks) decoding with the KV cache, stopped at the
  end-of-document token or any of the task's stop strings; ``batch_size`` prompts at a time (each row at its
  own length in the cache, so a row's output does not depend on its batch).

``lm_eval --model foresight --model_args pretrained=RUN_OR_CHECKPOINT[,tokenizer=PATH]`` works once this
module is imported; ``foresight eval`` does that.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from foresight.errors import ForesightError
from foresight.generate.sampling import sample_next_token


def load_for_eval(pretrained, tokenizer=None, device: str = "cpu"):
    """(trunk, TextTokenizer) from a checkpoint (file or run folder) and its recorded or given tokenizer."""
    from foresight.data.tokenizer import load_tokenizer
    from foresight.hf.tokenizer import find_tokenizer
    from foresight.train.lm import TrainableLM

    lm, state = TrainableLM.from_checkpoint(pretrained)
    if tokenizer is None:
        tokenizer = find_tokenizer(state, Path(pretrained))
        if tokenizer is None:
            raise ForesightError(f"{pretrained}: no tokenizer recorded for this checkpoint; pass --tokenizer PATH")
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    return lm.model.to(device).eval(), tok


@register_model("foresight")
class ForesightLM(TemplateLM):
    """lm-eval ``TemplateLM`` over a foresight ``Transformer`` and a ``foresight.data.tokenizer.TextTokenizer``."""

    def __init__(self, pretrained=None, tokenizer=None, model=None, batch_size: int | str = 8,
                 device: str | None = "cpu", max_length: int | None = None, **_ignored) -> None:
        super().__init__()
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm_eval's CLI asks for cuda by default
        if model is None:
            if pretrained is None:
                raise ForesightError("the foresight lm-eval model needs pretrained=CHECKPOINT")
            model, tokenizer = load_for_eval(pretrained, tokenizer, device)
        elif tokenizer is None or isinstance(tokenizer, (str, Path)):
            from foresight.data.tokenizer import load_tokenizer

            if tokenizer is None:
                raise ForesightError("a foresight model object needs its tokenizer")
            tokenizer = load_tokenizer(tokenizer)
        self.model, self.tok = model.eval(), tokenizer
        self._device = next(model.parameters()).device
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_length = int(max_length or model.cfg.max_seq_len)

    # ------------------------------------------------------------------ tokenizer
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tok, "sha256", "foresight")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens)

    # ------------------------------------------------------------------ scoring
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) split at a token boundary of the whole string's encoding.

        lm-eval's default takes ``whole[len(encode(context)):]``, which is empty (or wrong) when the tokenizer
        merges the context's last characters with the continuation's first. Here the split is the longest common
        prefix of ``encode(context)`` and ``encode(context + continuation)``: the same as lm-eval's when the
        context's tokens survive, otherwise the merged token moves to the continuation. Trailing spaces of the
        context move to the continuation first, as lm-eval does.
        """
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole, ctx = self.tok_encode(context + continuation), self.tok_encode(context)
        common = 0
        while common < min(len(whole), len(ctx)) and whole[common] == ctx[common]:
            common += 1
        return whole[:common], whole[common:]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's entry point for (context, continuation) requests; a request that cannot be scored raises
        one line naming its task and document."""
        new_reqs = []
        for req in requests:
            context, continuation = req.args
            if context:
                ctx, cont = self._encode_pair(context, continuation)
            else:  # lm-eval's convention: the prefix token is the context, unless the text starts with it
                cont = self.tok_encode(continuation)
                ctx, cont = ((cont[:1], cont[1:]) if cont[:1] == [self.prefix_token_id]
                             else ([self.prefix_token_id], cont))
            if not cont:
                raise ForesightError(f"lm-eval task {getattr(req, 'task_name', '?')!r}, document "
                                     f"{getattr(req, 'doc_id', '?')}: the continuation {continuation!r} after "
                                     f"{context[-40:]!r} has no tokens to score")
            new_reqs.append(((context, continuation), ctx or [self.prefix_token_id], cont))
        return self._loglikelihood_tokens(new_reqs, disable_tqdm=disable_tqdm)

    @torch.no_grad()
    def _score(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """rows: (inputs + continuation tokens, continuation length) -> (sum log p, greedy) per row.

        Right-padding is harmless: the model is causal, so pads after a row never change its positions.
        """
        inputs = [r[:-1] for r, _ in rows]
        width = max(len(i) for i in inputs)
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        for b, i in enumerate(inputs):
            batch[b, : len(i)] = torch.tensor(i)
        hidden = self.model.trunk(batch.to(self._device)).hidden  # (B, W, D); logits only where scored
        out = []
        for b, (tokens, n) in enumerate(rows):
            end = len(tokens) - 1
            logits = self.model.lm_head(hidden[b, end - n : end]).float()  # (n, V): the continuation's predictions
            logp = F.log_softmax(logits, dim=-1)
            target = torch.tensor(tokens[-n:], device=logp.device)
            ll = logp.gather(-1, target[:, None]).sum().item()
            greedy = bool((logp.argmax(-1) == target).all())
            out.append((ll, greedy))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) or None, context ids, continuation ids)."""
        rows = []
        for _, ctx, cont in requests:
            if not cont:
                raise ForesightError("lm-eval asked for the likelihood of an empty continuation")
            tokens = (ctx + cont)[-(self.max_length + 1):]  # keep the end: the continuation and nearest context
            rows.append((tokens, min(len(cont), len(tokens) - 1)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batch together
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="foresight loglikelihood"):
            chunk = order[start : start + self.batch_size]
            for i, res in zip(chunk, self._score([rows[i] for i in chunk])):
                results[i] = res
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], res)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="foresight rolling loglikelihood"):
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            total = sum(ll for ll, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], until: list[str], max_new: int,
                        temperature: float) -> list[str]:
        """Decode several prompts together with the KV cache: right-padded prefill, then each row continues at its
        own length (the cache's per-row path, as batched speculative decoding uses), so every row gets exactly
        the tokens it would get alone. A row stops at the end-of-document token or a stop string."""
        b = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts], device=self._device)  # (B,)
        batch = torch.zeros(b, int(lengths.max()), dtype=torch.long, device=self._device)
        for i, p in enumerate(prompts):
            batch[i, : len(p)] = torch.tensor(p)
        caches = self.model.new_caches()
        logits = self.model(batch, caches)[torch.arange(b, device=self._device), lengths - 1]  # (B, V)
        for cache in caches:  # one tensor for every layer (KVCache.truncate): pads past each row are dropped
            cache.truncate(lengths)
        produced: list[list[int]] = [[] for _ in range(b)]
        texts, done = [""] * b, [False] * b
        for _ in range(max_new):
            nxt = sample_next_token(logits.float(), temperature=temperature).tolist()  # (B,)
            for i, token in enumerate(nxt):
                if done[i]:
                    continue
                if token == self.eot_token_id:
                    done[i] = True
                    continue
                produced[i].append(token)
                texts[i] = self.tok_decode(produced[i])
                done[i] = any(s and s in texts[i] for s in until)
            if all(done):
                break
            logits = self.model(torch.tensor(nxt, device=self._device)[:, None], caches)[:, -1]  # (B, V)
        for s in until:
            texts = [t.split(s)[0] if s else t for t in texts]
        return texts

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests with the same stop strings and budgets are decoded ``batch_size`` at a time, longest first."""
        jobs: dict[tuple, list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = (until,) if isinstance(until, str) else tuple(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            ids = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self.prefix_token_id]
            jobs.setdefault((until, max_new, temperature), []).append((i, ids))
        out: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="foresight generate_until")
        for (until, max_new, temperature), items in jobs.items():
            items.sort(key=lambda item: -len(item[1]))
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                texts = self._generate_batch([ids for _, ids in chunk], list(until), max_new, temperature)
                for (i, _), text in zip(chunk, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), text)
                bar.update(len(chunk))
        bar.close()
        return out
