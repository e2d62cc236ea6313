"""Data parallelism over processes: torchrun, FSDP2 (``fully_shard``) and ``torch.distributed.checkpoint``.

``torchrun --nproc_per_node N -m foresight train RECIPE`` starts N copies of the command; each joins the job
(``init``: NCCL on CUDA, with Gloo beside it for CPU tensors; Gloo on CPU) and drives one device,
``cuda:LOCAL_RANK``. ``train.batch_size`` stays the *global* batch: every optimiser step, rank r trains on rows
``r·B/N .. (r+1)·B/N - 1`` of the step's batch, in micro-batches of ``train.micro_batch_size``.

Sharding (``DataParallel.shard``): every transformer ``Block`` (trunk, MTP heads, DS-MTP modules) is one FSDP
unit, gathered for its forward and backward and resharded after; the root unit (the ``TrainableLM``) holds the
rest — embedding, final norm, output head (tied or not: one unit), TOP head, DS-MTP norms and projections —
because objectives use those tensors directly (``model.lm_head.weight``, ``model.norm``,
``model.embed_tokens``), outside any forward hook of theirs. The root stays gathered from its forward to its
last backward, as FSDP2 keeps a root unit.

Gradients: objectives' sums are divided by counts over the whole step, all-reduced over ranks (the trainer),
so each rank back-propagates its share of the global loss and the shares must be *summed*: gradient division
is switched off (factor 1, SUM reduction). With per-head backward (``TrainableLM.forward_backward``) the
objectives run several backward passes per micro-batch, each of which ends with FSDP's final callback; during
them the root keeps its gradient unreduced and its parameters gathered (``hold_shared``), so the trunk's
backward reduce-scatters every root gradient once per micro-batch, like every block's.

Precision: bf16 autocast on CUDA over fp32 parameters, as on one device, not a ``MixedPrecisionPolicy``: one
and N devices then run the same arithmetic (a ``param_dtype=bf16`` policy would also round the norm weights and
the head weights that objectives hand to the loss ops), at the price of all-gathers in fp32, twice the bytes
of bf16; gradients are reduced in fp32 either way.

Initialisation: rank 0 alone builds the model for real (random initialisation, ``text.init_from`` weights),
consuming the RNG as one process does; ranks > 0 build it on the meta device (``build_on_rank0``: shapes, no
memory, no initialisation, no checkpoint read). ``shard`` then moves rank 0's model to the meta device too,
keeping its weights (on the CPU) until every rank has its shards: after ``fully_shard`` each rank allocates its
shards on its device (``to_empty``) and receives rank 0's weights, one tensor at a time
(``set_model_state_dict`` with ``broadcast_from_rank0``). The model holds no buffers (the RoPE tables are plain
attributes, rebuilt on first use on the device), so its parameters are all there is to send.

With one process everything here is a no-op and the trainer runs exactly as before.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import torch

from foresight.errors import ForesightError


def env_world_size() -> int:
    """Processes in this job according to torchrun's environment (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank: the process group's, or torchrun's ``RANK`` before it is joined (0 without torchrun)."""
    return torch.distributed.get_rank() if initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return torch.distributed.get_world_size() if initialized() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that prints and writes metrics, results and tables."""
    return rank() == 0


def device_for(setting: str) -> torch.device:
    """A rank's device: ``cuda:LOCAL_RANK`` for "auto" (with CUDA) or "cuda", the CPU for "cpu"."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if setting == "cpu":
        return torch.device("cpu")
    if setting not in ("auto", "cuda"):
        raise ForesightError(f"train.device={setting}: under torchrun every process uses cuda:LOCAL_RANK; "
                             f"set train.device to auto, cuda or cpu")
    if not torch.cuda.is_available():
        if setting == "cuda":
            raise ForesightError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
        return torch.device("cpu")
    if local >= torch.cuda.device_count():
        raise ForesightError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible; "
                             f"use --nproc_per_node <= {torch.cuda.device_count()}")
    return torch.device("cuda", local)


def check_batch(cfg, world: int) -> None:
    """The global batch must split into ``world`` equal parts of whole micro-batches."""
    if world > 1 and cfg.batch_size % (world * cfg.micro_batch_size):
        raise ForesightError(
            f"train.batch_size={cfg.batch_size} is not divisible by {world} processes x train.micro_batch_size="
            f"{cfg.micro_batch_size} = {world * cfg.micro_batch_size}; batch_size is the global batch, each process "
            f"takes batch_size / {world} sequences per step in micro-batches of micro_batch_size")


def init(cfg) -> None:
    """Join the torchrun job, if there is one (idempotent), and check that ``cfg``'s batch splits over it.

    ``cfg``: the run's ``TrainConfig`` (its ``device`` picks the backend)."""
    world = world_size() if initialized() else env_world_size()
    check_batch(cfg, world)
    if world <= 1 or initialized():
        return
    dist = torch.distributed
    if not dist.is_available():
        raise ForesightError("this PyTorch build has no torch.distributed; run in one process (without torchrun)")
    device = device_for(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=device)
    else:
        if not dist.is_gloo_available():
            raise ForesightError("data parallel on CPU needs the Gloo backend, which this PyTorch build lacks")
        dist.init_process_group("gloo")


def check_joined(cfg) -> None:
    """For code handed a job rather than joining one (the ``Trainer``): under torchrun the entry point must have
    joined the process group (``init``; the CLI does, and ``run_stargraph`` / ``run_text`` for library callers),
    and ``cfg``'s global batch must split over it."""
    if env_world_size() > 1 and not initialized():
        raise ForesightError(f"torchrun started {env_world_size()} processes but this one has not joined the "
                             f"process group; call foresight.train.distributed.init(train_cfg) before the Trainer")
    check_batch(cfg, world_size())


def shutdown() -> None:
    if initialized():
        torch.distributed.destroy_process_group()
        # Gloo's threads free a finished collective's tensors under the GIL; a process that exits before they
        # could aborts ("terminate called without an active exception", pytorch/pytorch#179291). A short pause
        # lets them run while Python is still alive.
        time.sleep(0.2)


def agree(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (run folders, evaluation results: every rank must decide alike)."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


@contextlib.contextmanager
def build_on_rank0():
    """Around building the model and loading pretrained weights into it; yields whether this process builds it
    for real. Rank 0 (and a single process) does; ranks > 0 build it on the meta device and must skip loading
    weights: ``DataParallel.shard`` gives them rank 0's. An error on rank 0 is raised on every rank (one
    ``ForesightError``), so no rank waits for the others in a collective."""
    if world_size() == 1:
        yield True
        return
    real, error = rank() == 0, None
    try:
        with contextlib.nullcontext() if real else torch.device("meta"):
            yield real
    except Exception as e:  # told to the other ranks, then raised again
        error = e
    said = agree(None if error is None else str(error))  # rank 0's outcome, on every rank
    if error is not None:
        raise error
    if said is not None:  # rank 0 says why (the CLI prints rank 0's errors only)
        raise ForesightError(said)


def _to_meta(module: torch.nn.Module) -> None:
    """Replace ``module``'s real parameters by meta ones of the same shapes, in place, a parameter shared by
    two modules (tied embeddings) staying one parameter: ``module.to("meta")`` would untie it."""
    twins: dict[int, torch.nn.Parameter] = {}
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            if p.is_meta:
                continue
            if id(p) not in twins:
                twins[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            setattr(m, name, twins[id(p)])


class DataParallel:
    """This process's part of a data-parallel run; with one process every method is a no-op."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.rank, self.world = device, rank(), world_size()
        self.lm = None  # the sharded TrainableLM, once ``shard`` ran

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def local_rows(self, batch):
        """This rank's rows of the step's global batch (B / world of them, contiguous)."""
        if not self.enabled:
            return batch
        rows = batch.tokens.shape[0]
        if rows % self.world:
            raise ForesightError(f"a batch of {rows} sequences does not split over {self.world} processes")
        per = rows // self.world
        return batch.rows(self.rank * per, (self.rank + 1) * per)

    def shard(self, lm) -> None:
        """FSDP2 over every ``Block`` of ``lm`` and over ``lm`` itself, each rank's shards on its device holding
        rank 0's weights (see the module docstring). ``lm``: built for real on rank 0, on any device or the meta
        device on the others (``build_on_rank0``)."""
        if not self.enabled:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

        from foresight.model import Block

        needed = ("set_gradient_divide_factor", "set_force_sum_reduction_for_comms")
        if not all(hasattr(FSDPModule, name) for name in needed):
            raise ForesightError(f"data-parallel training needs FSDP2's {' and '.join(needed)}, which PyTorch "
                                 f"{torch.__version__} lacks; use a newer PyTorch (tested: 2.13)")
        mesh = init_device_mesh(self.device.type, (self.world,))
        # Rank 0's weights, where it built them (the CPU), referenced by this dict alone once the module is meta.
        full = lm.state_dict() if self.rank == 0 else {}
        _to_meta(lm)  # every rank alike; ranks > 0 built it there
        units = [m for m in lm.modules() if isinstance(m, Block)]
        for block in units:
            fully_shard(block, mesh=mesh)
        fully_shard(lm, mesh=mesh)
        lm.to_empty(device=self.device)  # this rank's shards, uninitialised (a tied weight stays one parameter)
        set_model_state_dict(lm, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full  # rank 0's full weights are freed here
        register_fsdp_forward_method(lm, "forward_backward")  # the training pass is a forward of the root
        for unit in [*units, lm]:
            unit.set_gradient_divide_factor(1.0)  # each rank's loss is its share of the global mean: sum them
            unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (Gloo has no pre-multiplied sum)
        self.lm = lm

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks (in place)."""
        if self.enabled:
            torch.distributed.all_reduce(tensor)
        return tensor

    @contextlib.contextmanager
    def hold_shared(self):
        """Around the objectives' own backward passes: the root unit's gradients wait, unreduced, and its
        parameters stay gathered, until the trunk's backward reduce-scatters them once."""
        if self.lm is None:
            yield
            return
        self.lm.set_requires_gradient_sync(False, recurse=False)
        self.lm.set_reshard_after_backward(False, recurse=False)
        try:
            yield
        finally:
            self.lm.set_requires_gradient_sync(True, recurse=False)
            self.lm.set_reshard_after_backward(True, recurse=False)

    @contextlib.contextmanager
    def gathered(self):
        """The root unit's parameters gathered, so evaluation may call ``lm.model`` (or its embedding, norm
        and head) directly; the blocks gather themselves in their forward."""
        if self.lm is None:
            yield
            return
        self.lm.unshard()
        try:
            yield
        finally:
            self.lm.reshard()


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also takes sharded (DTensor) gradients: the norm over all shards, then clipping.

    Returns the total norm as a plain tensor, the same on every rank (``clip_grad_norm_`` is these two calls)."""
    params = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(total, "full_tensor"):  # a DTensor of the ranks' partial norms: reduce it
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
