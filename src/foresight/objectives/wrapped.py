"""foresight's objectives on a transformers model (``foresight.wrap``): the same classes, with the heads built
from the model's own parts (``objectives/parts.py``: ``Parts``) instead of foresight's trunk.

An objective that supports ``foresight.wrap`` has its class here, registered with ``runs_on_parts``;
``Objective.on_parts`` builds it (the objective modules never import this one).
Each class subclasses the foresight objective and ``OnParts`` and overrides only what touches the model:
building the heads, running them, and the module ``ForesightModel.heads`` shows. Targets, counts, loss sums,
the per-head ``forward_backward`` (Meta MTP §2) and DS-MTP's exact module-by-module backward are inherited
unchanged, so the loss math lives in one place (``foresight.objectives``, ``foresight.ops``). Two more
capabilities here: ``warm_start_on_parts`` (heads started from the model's own weights: ``wrap(head_init=)``)
and ``draft`` / ``cached_drafter`` (the heads drafting for ``foresight.speculative_generate(wrapped, ...)``,
``generate/wrapped.py``).

- NTP: cross-entropy of the model's own output head (soft cap included) against ``labels`` shifted by one.
- TOP (TOP paper §3): the inherited ``TOP``; its V×D head reads the final normed hidden state.
- MTP (Meta MTP §2): heads 1..n-1 are extra decoder layers of the model's own class, in parallel with its
  last layer, sharing final norm and output head.
- DS-MTP (DeepSeek-V3 §2.2): D modules, each two norms of the model's norm class, a 2D→D projection and a
  decoder layer of the model's own class.
- FSP-BCE (Mahajan et al. 2025 §3): the inherited ``FSP``; its V×D head reads the final normed hidden state.
- NextLat (Teoh et al. 2025 §3): the inherited ``NextLat``; ψ reads the last layer's output and the embedding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from foresight.batch import Batch
from foresight.objectives.base import IGNORE_INDEX, ON_PARTS, LossOutput, Objective, shifted_labels, unsupported
from foresight.objectives.dsmtp import DSMTP, DSMTPConfig
from foresight.objectives.fsp import FSP
from foresight.objectives.mtp import MTP, MTPConfig
from foresight.objectives.nextlat import LatentDynamics, NextLat
from foresight.objectives.ntp import NTP
from foresight.objectives.parts import HeadCache, Parts, WrapTrunkOutput, prefix_layer_kwargs
from foresight.objectives.top import TOP
from foresight.ops import linear_cross_entropy


class OnParts:
    """What ``foresight.wrap`` asks of an objective built by ``Objective.on_parts``, besides the objective's own
    protocol: ``forward(out, batch, parts)`` / ``forward_backward(..., parts, ...)`` read a ``WrapTrunkOutput``
    and the model's ``Parts`` where foresight's objectives read a ``TrunkOutput`` and the ``Transformer``, and
    ``head_module(parts)`` is what users reach as ``ForesightModel.heads[key]``. (Heads on transformers models do
    not train on foresight's cached trunk states.)"""

    cached_heads = False
    can_draft_on_parts = False  # ``draft`` works: the heads draft for ``foresight.speculative_generate``
    default_drafts = 0  # drafts per step when the caller does not say

    def head_module(self, parts: Parts) -> nn.Module:
        raise NotImplementedError

    def warm_start_on_parts(self, parts: Parts) -> None:
        """Start the heads from the model's own weights, so a pretrained model's new heads begin near its own
        next-token loss instead of above chance (``foresight.wrap(..., head_init="warm")``). Default: nothing
        (an objective without heads of its own)."""

    def draft(self, committed: dict, seq: torch.Tensor, parts: Parts, n_draft: int | None) -> torch.Tensor:
        """Greedy guesses (1, d) for the tokens after the pending one (``generate/wrapped.py``): ``committed``
        holds the trunk tensors ``hidden``, ``last_input``, ``final`` (1, N, D) of the committed positions
        0..N-1, ``seq`` (1, N + 1) the committed tokens and the pending x[N]."""
        raise unsupported(self.name, "drafting on a wrapped model")


def head_loss_sum(parts: Parts, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the model's output head on h (B, T, D) against labels (B, T), never N×V logits."""
    return linear_cross_entropy(h.reshape(-1, h.shape[-1]), parts.lm_head.weight, labels.reshape(-1),
                                softcap=parts.softcap).sum()


# The last projection of each residual branch in transformers' decoder layers (Llama, Qwen2/3, Mistral, Phi-3,
# Gemma 2): zero, the layer adds nothing to its input.
_BRANCH_OUTPUTS = ("o_proj", "down_proj")


def _copy_into(modules, source: nn.Module) -> bool:
    """Load ``source``'s weights into each module of ``modules`` (same class), keeping their device and dtype.
    A source whose linear layers carry adapters (PEFT's ``q_proj.base_layer.weight``, ``lora_A``, ...) gives its
    base weights. If the weights still do not cover the modules' own, nothing is copied (they keep their
    initialisation) and the answer is False."""
    state = {k.replace(".base_layer.", "."): v.detach().clone() for k, v in source.state_dict().items()}
    for m in modules:
        own = m.state_dict()
        if any(k not in state or state[k].shape != v.shape for k, v in own.items()):
            return False
        m.load_state_dict({k: state[k] for k in own})
    return True


def _fresh_norm(parts: Parts) -> nn.Module:
    """A norm of the model's final-norm class (so Gemma's 1 + w convention holds), freshly initialised."""
    norm = copy.deepcopy(parts.norm)
    init = getattr(parts.model, "_init_weights", None)
    if init is not None:
        init(norm)
    else:
        nn.init.ones_(norm.weight)
    return norm


def runs_on_parts(objective: type):
    """Register the decorated class as ``objective`` on a transformers model's parts (``Objective.on_parts``)."""
    def register(cls: type) -> type:
        ON_PARTS[objective] = cls
        return cls
    return register


@runs_on_parts(NTP)
class WrapNTP(OnParts, NTP):
    """Next-token cross-entropy with the model's own head: equals the model's ``loss`` for the same labels (it
    reads the labels as given: ``next_token``)."""

    def head_module(self, parts: Parts) -> nn.Module:
        return parts.lm_head

    def forward(self, out: WrapTrunkOutput, batch: Batch, parts: Parts) -> LossOutput:
        labels = shifted_labels(batch, 0)  # (B, T)
        return LossOutput(head_loss_sum(parts, out.hidden, labels), (labels != IGNORE_INDEX).sum())


@runs_on_parts(MTP)
class WrapMTP(OnParts, MTP):
    """Meta MTP-n: ``heads[k - 1]`` (k = 1..n-1) is a decoder layer of the model's class reading the input of
    the model's last layer; its output goes through the model's final norm and output head to predict x[t+1+k]."""

    def __init__(self, cfg: MTPConfig, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        self.heads = nn.ModuleList(parts.new_layer() for _ in range(cfg.n - 1))

    def head_module(self, parts: Parts) -> nn.Module:
        return self.heads  # n - 1 decoder layers

    def warm_start_on_parts(self, parts: Parts) -> None:
        """Every head a copy of the model's last layer: it reads that layer's input, so it starts predicting
        what the model predicts for x[t+1] (as ``MTP.warm_start`` does on foresight's trunk)."""
        _copy_into(self.heads, parts.layers[-1])

    def _head_sum(self, k: int, out: WrapTrunkOutput, batch: Batch, parts: Parts) -> torch.Tensor:
        h = parts.norm(parts.run_layer(self.heads[k - 1], out.last_input, out.layer_kwargs))  # (B, T, D)
        return head_loss_sum(parts, h, shifted_labels(batch, k))

    can_draft_on_parts = True

    @property
    def default_drafts(self) -> int:
        return len(self.heads)

    def draft(self, committed: dict, seq: torch.Tensor, parts: Parts, n_draft: int | None) -> torch.Tensor:
        """Head k at the last committed position N-1 guesses x[N+k] (Meta MTP §3.2): all heads in parallel."""
        x = committed["last_input"]  # (1, N, D)
        kwargs = prefix_layer_kwargs(parts, x)
        heads = self.heads[: n_draft or len(self.heads)]
        last = [parts.norm(parts.run_layer(head, x, kwargs)[:, -1:]) for head in heads]  # (1, 1, D) each
        return parts.logits(torch.cat(last, dim=1)).argmax(dim=-1)  # (1, d)

    def cached_drafter(self, parts: Parts, n_draft: int | None) -> "_CachedMTPDraft":
        """The same drafts as ``draft``, each head with a KV cache of its own in step with the model's."""
        return _CachedMTPDraft(self.heads[: n_draft or len(self.heads)], parts)


class _CachedMTPDraft:
    """MTP heads drafting with KV caches of their own (Meta MTP §3.2). Head k reads the input of the model's last
    layer, which at a committed position depends on committed tokens only, so its cache can follow the model's
    exactly: ``observe`` runs every head on the positions of the model's latest pass with the keyword
    arguments (mask, RoPE tables) the model gave its last layer, whose cache has the same length; ``crop``
    drops the rejected positions from every head's cache as from the model's; ``propose(i)`` reads head k at
    index i of that pass (the last committed position) and guesses x[N+k]."""

    def __init__(self, heads, parts: Parts) -> None:
        self.heads, self.parts = list(heads), parts
        self.caches = [HeadCache(parts) for _ in self.heads]
        self.outputs: list[torch.Tensor] = []  # per head: (1, m, D) of the latest pass

    def observe(self, last_input: torch.Tensor, layer_kwargs: dict) -> None:
        self.outputs = []
        for head, kv in zip(self.heads, self.caches):
            kwargs = {**layer_kwargs, "use_cache": True, kv.arg: kv.cache}
            self.outputs.append(self.parts.run_layer(head, last_input, kwargs))
            kv.filled(last_input.shape[1])

    def crop(self, remove: int) -> None:
        for kv in self.caches:
            kv.crop(remove)

    def propose(self, index: int) -> torch.Tensor:
        last = torch.cat([h[:, index : index + 1] for h in self.outputs], dim=1)  # (1, d, D)
        return self.parts.logits(self.parts.norm(last)).argmax(dim=-1)  # (1, d)


class WrapDSMTPModule(nn.Module):
    """One DS-MTP module: ``hnorm``, ``enorm``, ``eh_proj`` (2D -> D), ``layer`` (the model's decoder-layer
    class), and with ``final_norm: own`` its own ``norm`` before the shared output head."""

    def __init__(self, cfg: DSMTPConfig, parts: Parts) -> None:
        super().__init__()
        d = parts.hidden_size
        self.hnorm, self.enorm = _fresh_norm(parts), _fresh_norm(parts)
        ref = parts.lm_head.weight
        self.eh_proj = nn.Linear(2 * d, d, bias=cfg.proj_bias, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.eh_proj.weight, std=getattr(parts.config, "initializer_range", 0.02))
        if self.eh_proj.bias is not None:
            nn.init.zeros_(self.eh_proj.bias)
        self.layer = parts.new_layer()
        self.norm = _fresh_norm(parts) if cfg.final_norm == "own" else None
        self.hidden_first = cfg.concat == "hidden_first"

    def forward(self, h_prev: torch.Tensor, emb: torch.Tensor, parts: Parts, layer_kwargs: dict) -> torch.Tensor:
        h, e = self.hnorm(h_prev), self.enorm(emb)  # (B, T, D) each
        joined = torch.cat([h, e] if self.hidden_first else [e, h], dim=-1)  # (B, T, 2D)
        return parts.run_layer(self.layer, self.eh_proj(joined), layer_kwargs)


@runs_on_parts(DSMTP)
class WrapDSMTP(OnParts, DSMTP):
    """DeepSeek-V3 §2.2 on the model: module k reads h_{k-1} and the model's embedding of input x[t+k]."""

    def __init__(self, cfg: DSMTPConfig, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        self.layers = nn.ModuleList(WrapDSMTPModule(cfg, parts) for _ in range(cfg.depth))

    def head_module(self, parts: Parts) -> nn.Module:
        return self.layers  # D modules

    def warm_start_on_parts(self, parts: Parts) -> None:
        """Each module starts as the identity on the hidden state (DeepSeek-V3 §2.2's module with its layer's
        residual branches switched off), so depth k first predicts x[t+1+k] with the model's own next-token
        distribution: ``hnorm`` fresh (h_0 normalised, RMS 1), the projection the identity on the hidden half
        and zero on the embedding half, the layer a copy of the model's last layer whose residual branches end
        in zero (``o_proj``, ``down_proj``: they learn first, and the copied q/k/v/gate/up give them working
        features), and an own final norm the model's final norm when h_0 is the last layer's output before it
        (``h0: pre_norm``: the module then gives the model's final hidden state exactly) or fresh when h_0 is
        already normalised (``post_norm``: the model's logits over RMS(h_0), a softer copy). A full copy of the
        layer would see the normalised state where the trained layer saw the residual stream, and start far
        above chance (notes/issue22-heads-logs.md)."""
        d = parts.hidden_size
        with torch.no_grad():
            for m in self.layers:
                _copy_into([m.layer], parts.layers[-1])
                for name, sub in m.layer.named_modules():
                    if name.rsplit(".", 1)[-1] in _BRANCH_OUTPUTS and isinstance(sub, nn.Linear):
                        nn.init.zeros_(sub.weight)
                        if sub.bias is not None:
                            nn.init.zeros_(sub.bias)
                if m.norm is not None and self.cfg.h0 == "pre_norm":
                    _copy_into([m.norm], parts.norm)
                w = m.eh_proj.weight  # (D, 2D)
                w.zero_()
                start = 0 if m.hidden_first else d
                w[:, start : start + d].copy_(torch.eye(d, dtype=w.dtype, device=w.device))
                if m.eh_proj.bias is not None:
                    m.eh_proj.bias.zero_()

    def _step(self, k: int, h: torch.Tensor, out: WrapTrunkOutput, batch: Batch, parts: Parts) -> torch.Tensor:
        # The embedding of the *input* token x[t+k] (known even where labels are -100, e.g. a masked prompt);
        # positions past the sequence read id 0, and their labels are ignored.
        ids, t = out.input_ids, out.input_ids.shape[1]
        shifted = torch.zeros_like(ids)  # (B, T)
        shifted[:, : max(0, t - k)] = ids[:, k:]
        return self.layers[k - 1](h, parts.embed_tokens(shifted), parts, out.layer_kwargs)

    def _depth_sum(self, k: int, h: torch.Tensor, batch: Batch, parts: Parts) -> torch.Tensor:
        module = self.layers[k - 1]
        norm = module.norm if module.norm is not None else parts.norm
        return head_loss_sum(parts, norm(h), shifted_labels(batch, k))

    can_draft_on_parts = True

    @property
    def default_drafts(self) -> int:
        return len(self.layers)

    def draft(self, committed: dict, seq: torch.Tensor, parts: Parts, n_draft: int | None) -> torch.Tensor:
        """Module k at position j reads h_{k-1}[j] and the embedding of x[j+k] (DeepSeek-V3 §5.4.3): module 1 at
        N-1 reads the pending x[N] and guesses x[N+1], module k reads module k-1's guess."""
        h = committed["hidden"] if self.cfg.h0 == "post_norm" else committed["final"]  # h_0: (1, N, D)
        n = h.shape[1]
        kwargs = prefix_layer_kwargs(parts, h)
        hyp, drafts = seq, []  # hyp: x[0..N] then the guesses so far, (1, N + k)
        for k in range(1, min(n_draft or len(self.layers), len(self.layers)) + 1):
            module = self.layers[k - 1]
            h = module(h, parts.embed_tokens(hyp[:, k : k + n]), parts, kwargs)  # (1, N, D)
            norm = module.norm if module.norm is not None else parts.norm
            guess = parts.logits(norm(h[:, -1:])).argmax(dim=-1)  # (1, 1): x[N+k]
            drafts.append(guess)
            hyp = torch.cat([hyp, guess], dim=1)
        return torch.cat(drafts, dim=1)  # (1, d)


def _vocab_head(parts: Parts) -> nn.Linear:
    """A new untied V×D head (no bias, no soft cap) on the model's device and in its dtype, initialised with the
    model's ``initializer_range``: TOP's W_top, FSP's W_fsp."""
    ref = parts.lm_head.weight
    head = nn.Linear(parts.hidden_size, parts.vocab_size, bias=False, device=ref.device, dtype=ref.dtype)
    nn.init.normal_(head.weight, std=getattr(parts.config, "initializer_range", 0.02))
    return head


@runs_on_parts(TOP)
class WrapTOP(OnParts, TOP):
    """TOP paper §3: the inherited objective; its head ``W_top`` (V×D, untied, no soft cap) is initialised
    with the model's ``initializer_range``, then (``wrap``'s default ``head_init="warm"``) copied from the output
    head."""

    def __init__(self, cfg, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        self.head = _vocab_head(parts)

    def head_module(self, parts: Parts) -> nn.Module:
        return self.head  # W_top (V×D)

    def warm_start_on_parts(self, parts: Parts) -> None:
        """W_top starts as a copy of the model's output head: the next token ranks first, as it does in the TOP
        target (TOP paper §3: the nearest upcoming token scores highest)."""
        with torch.no_grad():
            self.head.weight.copy_(parts.lm_head.weight)

    can_draft_on_parts = True
    default_drafts = 3

    def draft(self, committed: dict, seq: torch.Tensor, parts: Parts, n_draft: int | None) -> torch.Tensor:
        """The TOP ranking at the last committed position, the pending token removed, read in rank order as
        the next tokens (``generate/top_draft.py``)."""
        scores = self.head(committed["hidden"][:, -1]).float()  # (1, V)
        scores[:, seq[0, -1]] = float("-inf")  # x[N] is already decided
        return scores.topk(n_draft or self.default_drafts, dim=-1).indices  # (1, d)


@runs_on_parts(FSP)
class WrapFSP(OnParts, FSP):
    """FSP-BCE (Mahajan et al. 2025 §3): the inherited objective; its head ``W_fsp`` (V×D, untied, no soft cap)
    reads the final normed hidden state and is initialised with the model's ``initializer_range``."""

    def __init__(self, cfg, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        self.head = _vocab_head(parts)

    def head_module(self, parts: Parts) -> nn.Module:
        return self.head  # W_fsp (V×D)


@runs_on_parts(NextLat)
class WrapNextLat(OnParts, NextLat):
    """NextLat (Teoh et al. 2025 §3): the inherited objective on the model's last-layer outputs, embedding, final
    norm, output head and soft cap; ψ is created in the model's dtype on its device."""

    def __init__(self, cfg, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        ref = parts.lm_head.weight
        eps = getattr(parts.norm, "variance_epsilon", getattr(parts.norm, "eps", 1e-6))
        self.dynamics = LatentDynamics(parts.hidden_size, cfg.hidden_mult, eps).to(device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.dynamics.up.weight, std=getattr(parts.config, "initializer_range", 0.02))

    def head_module(self, parts: Parts) -> nn.Module:
        return self.dynamics  # ψ
