"""Next-Latent Prediction (NextLat paper §3: Teoh et al. 2025, "Next-Latent Prediction Transformers Learn Compact
World Models"; docs/objectives.md, "NextLat").

A small latent dynamics network ψ predicts the trunk's next latent state from the current one and the next token:
ĥ_{t+1} = ψ(h_t, e(x_{t+1})), with h_t the last block's output at position t scaled to unit RMS (no learned scale)
and e the model's token embedding. Rolled out for ``horizon`` steps, ĥ_{t+k} = ψ(ĥ_{t+k-1}, e(x_{t+k})), each
prediction is pulled towards the trunk's own h_{t+k} (a stop-gradient target) by

    l_{t,k} = SmoothL1(ĥ_{t+k}, sg(h_{t+k}))  (mean over the D features)
            + kl_weight · KL( softmax(head(sg(h_{t+k}))) ‖ softmax(head(ĥ_{t+k})) )

where head = the model's final norm and output head, read frozen (no gradient from here). The gradient reaches ψ and,
through h_t, the trunk: NextLat's point is to shape the trunk's latents into states with consistent transitions.
A pair (t, k) counts when position t + k lies inside the sequence, the tokens x[t+1 .. t+k] are real ids (not
ignored, not negative) on the same side of a document boundary (``Batch.horizon``), and t is a trained
position (``Batch.loss_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.objectives.base import IGNORE_INDEX, Compute, LossOutput, Objective
from foresight.ops.row_chunks import map_row_chunks

MAX_HORIZON = 64


@dataclass
class NextLatConfig:
    """Next-latent prediction (NextLat paper §3; options in docs/objectives.md)."""

    weight: float | list = 1.0  # loss weight: a number, or a schedule [[{step: s}, value], ...] (objectives/weights.py)
    horizon: int = 1  # d: steps the dynamics network is rolled out from each position
    kl_weight: float = 1.0  # weight of the KL between the token distributions of h_{t+k} and ĥ_{t+k}
    hidden_mult: int = 2  # the dynamics MLP's width, in multiples of the model width D

    def __post_init__(self) -> None:
        for key, low, high in (("horizon", 1, MAX_HORIZON), ("hidden_mult", 1, 16)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ForesightError(f"NextLat {key} must be an integer in {low} .. {high}, got {value!r}")
        w = self.kl_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1e3:
            raise ForesightError(f"NextLat kl_weight must be a number in [0, 1000], got {w!r}")


class LatentDynamics(nn.Module):
    """ψ(h, e) = h + W_down · silu(W_up · [norm_h(h); norm_e(e)]): a residual MLP on the normed latent and token
    embedding. ``W_down`` starts at zero, so an untrained ψ predicts "no change" (ĥ_{t+1} = h_t)."""

    def __init__(self, d: int, mult: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.hnorm, self.enorm = nn.RMSNorm(d, eps=eps), nn.RMSNorm(d, eps=eps)
        self.up = nn.Linear(2 * d, mult * d, bias=False)
        self.down = nn.Linear(mult * d, d, bias=False)
        nn.init.zeros_(self.down.weight)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.hnorm(h), self.enorm(e)], dim=-1)  # (..., 2D)
        return h + self.down(F.silu(self.up(x)))


def nextlat_pairs(batch: Batch, horizon: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(horizon, B, T) bool: pair (t, k = index + 1) is trained (see the module doc)."""
    tokens, t_len = batch.tokens, batch.seq_len
    b = tokens.shape[0]
    real = (tokens[:, 1 : t_len] >= 0) & (tokens[:, 1 : t_len] != ignore_index)  # (B, T-1): x[t+1] for t < T-1
    ok = torch.zeros(b, t_len, dtype=torch.bool, device=tokens.device)
    ok[:, : t_len - 1] = real  # step 1 from t needs x[t+1] real and position t+1 inside the sequence
    if batch.loss_mask is not None:
        ok &= batch.loss_mask
    pairs = [ok]
    for k in range(2, horizon + 1):
        step = torch.zeros_like(ok)
        step[:, : t_len - k] = real[:, k - 1 :]  # x[t+k] real, t + k <= T - 1
        if batch.horizon is not None:
            step &= batch.horizon >= k - 1  # x[t+k] is at offset k - 1 from t + 1: before the document ends
        ok = ok & step
        pairs.append(ok)
    return torch.stack(pairs)


def _frozen(module: nn.Module):
    """``module`` as a function of its input only: called with its parameters detached, so no gradient reaches them."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return lambda x: torch.func.functional_call(module, params, (x,))


def _pair_loss(pred: torch.Tensor, target: torch.Tensor, head_w: torch.Tensor, norm: nn.Module,
               softcap: float | None, kl_weight: float) -> torch.Tensor:
    """(n,) SmoothL1 (mean over D) + kl_weight · KL(p(target) ‖ p(pred)) for pred / target (n, D), in fp32 at
    least (fp64 stays fp64); p(h) = softmax of the model's logits of h (final norm, output head, soft cap). The
    caller passes the norm and head frozen (``NextLat.forward``)."""
    dt = torch.promote_types(pred.dtype, torch.float32)
    loss = F.smooth_l1_loss(pred.to(dt), target.to(dt), reduction="none").mean(-1)
    if kl_weight:
        def logp(h):
            logits = norm(h).to(dt) @ head_w.to(dt).t()  # (n, V)
            if softcap:
                logits = softcap * torch.tanh(logits / softcap)
            return F.log_softmax(logits, -1)

        log_q, log_p = logp(pred), logp(target)  # (n, V) each
        loss = loss + kl_weight * (log_p.exp() * (log_p - log_q)).sum(-1)
    return loss


class NextLat(Objective):
    """The dynamics network ψ (``dynamics``) on the trunk's last-block outputs; no head of its own."""

    name = "nextlat"

    def __init__(self, cfg: NextLatConfig, model_cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.dynamics = LatentDynamics(model_cfg.hidden_size, cfg.hidden_mult, model_cfg.norm_eps)
        nn.init.normal_(self.dynamics.up.weight, std=model_cfg.init_std)

    @classmethod
    def paper_label(cls, spec: dict) -> str:
        horizon = spec.get("horizon", 1)
        return "NextLat" if horizon == 1 else f"NextLat-{horizon}"

    @property
    def lookahead(self) -> int:
        return 1  # targets are the trunk's own states inside the sequence

    def compute(self) -> Compute:
        mlp = sum(p.numel() for p in self.dynamics.parameters())
        # Per rolled-out step: ψ on every position and, for the KL, the output head on ĥ and on h.
        return Compute(block_params=self.cfg.horizon * mlp, head_uses=2 * self.cfg.horizon if self.cfg.kl_weight else 0)

    def count(self, batch: Batch) -> torch.Tensor:
        return nextlat_pairs(batch, self.cfg.horizon).sum()

    def forward(self, out, batch: Batch, model) -> LossOutput:
        if out.rows is not None:
            raise ForesightError("NextLat reads every position's latent; the trunk ran only some rows")
        # (B, T, D): the latent z_t = the last block's output scaled to unit RMS (no learned scale). On raw outputs
        # the residual stream's growth grew the SmoothL1 term until a loss spike wiped out a solved star-graph
        # model (g24_10_d4 / seed 20 at step 2,000); the paper's setting reads the latent after a norm too.
        h = F.rms_norm(out.final, (out.final.shape[-1],), eps=self.dynamics.hnorm.eps)
        target = h.detach()
        # The KL reads the final norm and output head frozen: its gradient reaches ψ and, through ĥ, the trunk, never
        # them. Letting it reach them collapsed training on the star graph (the head learnt to make p(h) uniform for
        # every h, which zeroes the KL: NTP's loss went to ln N; docs/objectives.md, NextLat).
        norm, head_w = _frozen(model.norm), model.lm_head.weight.detach()
        t_len = batch.seq_len
        pairs = nextlat_pairs(batch, self.cfg.horizon)  # (K, B, T)
        emb = model.embed_tokens(batch.tokens[:, 1 : t_len].clamp(min=0))  # (B, T-1, D): e(x[t+1])
        pred, total = h, h.new_zeros((), dtype=torch.promote_types(h.dtype, torch.float32))
        for k in range(1, self.cfg.horizon + 1):
            # pred[:, t] = ĥ_{t+k-1} from source t; feed x[t+k] (stream index t+k = emb index t+k-1).
            e = torch.zeros_like(h)
            e[:, : t_len - k] = emb[:, k - 1 :]
            pred = self.dynamics(pred, e)  # (B, T, D): pred[:, t] = ĥ_{t+k}
            keep = pairs[k - 1]  # (B, T)
            if not keep.any():
                continue
            tgt = torch.zeros_like(target)
            tgt[:, : t_len - k] = target[:, k:]  # h_{t+k}
            losses = map_row_chunks(
                lambda p, q, w: _pair_loss(p, q, w, norm, getattr(model, "softcap", None), self.cfg.kl_weight),
                (pred[keep], tgt[keep]), (head_w,))
            total = total + losses.sum()
        return LossOutput(total, pairs.sum())
