"""The trainable model: the trunk plus the objectives that own extra parameters (heads, modules)."""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, ContextManager

import torch
from torch import nn

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.model import ModelConfig, Transformer, TrunkOutput
from foresight.objectives import LossOutput, ObjectiveSpec, build_objective, parse_objectives

_TRUNK_TENSORS = ("hidden", "final", "last_input")  # the TrunkOutput fields objectives may read


class TrainableLM(nn.Module):
    """``model`` (the trunk, used alone for generation) and ``objectives`` (keyed by name).

    Checkpoints hold the whole module, so TOP / MTP / DS-MTP heads survive a save and a load.
    """

    def __init__(self, model_cfg: ModelConfig, objective_specs: list[ObjectiveSpec | dict]) -> None:
        """``objective_specs``: a recipe's parsed run (``Recipe.runs[name]``), or plain dicts as checkpoints store
        them and library callers write them (parsed here by the same ``parse_objectives``)."""
        super().__init__()
        self.model = Transformer(model_cfg)
        self.objectives = nn.ModuleDict()
        self.weights: dict[str, float | list] = {}
        for spec in parse_objectives(objective_specs):
            obj = build_objective(spec, model_cfg)
            key = obj.name if obj.name not in self.objectives else f"{obj.name}_{len(self.objectives)}"
            self.objectives[key] = obj
            self.weights[key] = obj.cfg.weight

    @property
    def lookahead(self) -> int:
        """Tokens past seq_len that batches must carry for every objective's labels."""
        return max(obj.lookahead for obj in self.objectives.values())

    def freeze_trunk(self, unfreeze_blocks: int = 0) -> int:
        """Head-only training (``train.freeze: trunk``): the trunk's parameters stop requiring gradients, so the
        optimiser holds state only for the objectives' own heads / modules, and the trunk's forward builds no
        graph (``forward_backward`` then hands the objectives plain tensors and runs no trunk backward).
        Shared parts the heads read (embedding, final norm, output head) belong to the trunk and stay fixed.

        ``unfreeze_blocks = N > 0`` (``train.unfreeze_blocks``) keeps the last N transformer blocks and the final
        norm training: continued training of a pretrained model on a budget. The frozen blocks below them build
        no graph, so the backward pass stops at block L - N. Returns the number of parameters left to train."""
        n_layers = len(self.model.layers)
        if unfreeze_blocks > n_layers:
            raise ForesightError(f"train.unfreeze_blocks={unfreeze_blocks}: the model has only {n_layers} blocks")
        for p in self.model.parameters():
            p.requires_grad_(False)
        if unfreeze_blocks:
            for module in [*self.model.layers[n_layers - unfreeze_blocks:], self.model.norm]:
                for p in module.parameters():
                    p.requires_grad_(True)
        left = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if left == 0:
            names = ", ".join(self.objectives)
            raise ForesightError(f"train.freeze: trunk leaves nothing to train: objectives {names} have no heads "
                                 f"of their own (add mtp, dsmtp or top)")
        return left

    def counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {key: obj.count(batch) for key, obj in self.objectives.items()}

    def rows_needed(self, batch: Batch) -> torch.Tensor | None:
        """(B, T) bool: the only positions whose final hidden states the objectives read (the union of their
        ``rows_needed``), or None when any of them reads more (all positions, or other trunk outputs)."""
        masks = [obj.rows_needed(batch) for obj in self.objectives.values()]
        if any(m is None for m in masks):
            return None
        return functools.reduce(torch.logical_or, masks)

    def forward(self, batch: Batch, with_aux: bool = False) -> dict[str, LossOutput] | tuple[dict, torch.Tensor | None]:
        """Each objective's ``LossOutput`` (keyed as ``objectives``); with ``with_aux`` also the trunk's auxiliary
        loss of this forward (``TrunkOutput.aux_loss``: MoE load balancing, or None), as ``(losses, aux)``."""
        out = self.model.trunk(batch.input_ids)
        losses = {key: obj(out, batch, self.model) for key, obj in self.objectives.items()}
        return (losses, out.aux_loss) if with_aux else losses

    def forward_backward(self, batch: Batch, scales: dict[str, float],
                         autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                         hold_shared: Callable[[], ContextManager] = contextlib.nullcontext,
                         aux_scale: float = 0.0, with_aux: bool = False,
                         ) -> dict[str, LossOutput] | tuple[dict, torch.Tensor | None]:
        """Training pass: the gradients of ``sum_k scales[k] · loss_sum_k``, accumulated into ``.grad``; returns
        the ``LossOutput``s detached (same numbers as ``forward``).

        Memory-efficient implementation of Meta MTP (§2): the objectives read leaves (detached copies
        that require grad) of the trunk's outputs, and each objective (each MTP head, each DS-MTP module) runs
        its forward and backward before the next one starts, so only one head's activations are alive at a
        time. The trunk then gets one backward of the gradients gathered in the leaves. Same gradients as
        ``forward`` + one backward of the weighted sum (the reference, kept as ``train.per_head_backward=false``).
        ``hold_shared()`` is entered around the objectives' backward passes: data parallel, it keeps the shared
        embedding, norm and heads gathered with their gradients unreduced until the trunk's backward
        (``foresight.train.distributed``). ``aux_scale``: what the trunk's auxiliary loss (MoE load balancing,
        ``TrunkOutput.aux_loss``) is multiplied by in the trunk's backward; ``with_aux``: also return its value
        (detached, or None), as ``(losses, aux)``, for the trainer's log.
        """
        with autocast():
            out = self.model.trunk(batch.input_ids, rows=self.rows_needed(batch))
        # A frozen trunk (``freeze_trunk``) built no graph: its tensors stay plain, so no objective spends a
        # backward on them and the trunk gets none.
        leaves = TrunkOutput(**{f: getattr(out, f).detach().requires_grad_(getattr(out, f).requires_grad)
                                for f in _TRUNK_TENSORS}, cos=out.cos, sin=out.sin, rows=out.rows)
        with hold_shared():
            results = {key: obj.forward_backward(leaves, batch, self.model, scales[key], autocast)
                       for key, obj in self.objectives.items()}
        roots = [(getattr(out, f), getattr(leaves, f).grad) for f in _TRUNK_TENSORS]
        roots = [(t, g) for t, g in roots if g is not None]  # tensors no objective read
        aux = out.aux_loss
        if aux is not None and aux.requires_grad and aux_scale:
            roots.append((aux, torch.full_like(aux, aux_scale)))
        if roots:
            torch.autograd.backward([t for t, _ in roots], [g for _, g in roots])
        if with_aux:
            return results, None if aux is None else aux.detach()
        return results

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", check=None) -> tuple["TrainableLM", dict]:
        """Rebuild the model and its objective heads from a checkpoint file or run folder (or a sharded
        checkpoint folder of a data-parallel run).

        Every checkpoint's ``config`` holds ``model`` (ModelConfig fields) and ``objectives`` (the specs).
        Returns the model (in eval mode) and the whole checkpoint state. ``check(model_cfg, state)``, if given,
        runs once the config is read and before the model is built (a caller's own refusal, e.g. data whose
        vocabulary the model does not cover).
        """
        from foresight.train.checkpoint import load_checkpoint

        state = load_checkpoint(path, map_location=map_location)
        config = state["config"]
        if "model" not in config or "objectives" not in config:
            raise ForesightError(f"{path}: checkpoint config lacks 'model' or 'objectives'; it cannot be rebuilt")
        if not isinstance(config["model"], dict):
            raise ForesightError(f"{path}: checkpoint config 'model' is not a mapping; it cannot be rebuilt")
        try:
            model_cfg = ModelConfig(**config["model"])  # sizes within foresight's limits (model/limits.py)
        except TypeError as e:  # a config field this version does not know, or a missing one
            raise ForesightError(f"{path}: its model config does not fit this foresight version ({e})") from None
        if check is not None:
            check(model_cfg, state)
        specs = parse_objectives(config["objectives"], f"{path}: objectives")
        from foresight.model.limits import shapes_on_meta, state_mismatch
        from foresight.train.checkpoint import shapes_of

        # The shapes the config asks for, found without allocating, against the tensors the file holds: a tiny
        # file whose config asks for a huge model is refused here, before the model is built.
        expected = shapes_on_meta(lambda: cls(model_cfg, specs))
        if problem := state_mismatch(expected, shapes_of(state["lm"])):
            raise ForesightError(f"{path}: weights do not fit the stored config: {problem}")
        lm = cls(model_cfg, specs)
        lm.load_state_dict(state["lm"])
        return lm.eval(), state


def load_model(path, map_location="cpu") -> TrainableLM:
    """A trained foresight model (``TrainableLM``: the trunk ``.model`` plus its objective heads, in eval mode)
    from a checkpoint file, a run folder (its newest checkpoint) or a sharded checkpoint folder."""
    lm, _ = TrainableLM.from_checkpoint(path, map_location=map_location)
    return lm
