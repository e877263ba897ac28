"""Data-parallel training helpers for ``torchrun`` (PyTorch distributed; gloo on CPU, NCCL on GPU).

The trainer does data parallelism by hand rather than through ``DistributedDataParallel``: every rank runs
the same optimiser on the same weights, computes its shard of each batch's loss (weighted so that the shards
sum to the single-process loss), and :func:`all_reduce_gradients` sums the gradients before the step. The
distillation heads and modality tables are used outside ``Student.encode``, which DDP's hooks would miss.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) everything here is a no-op and the trainer runs exactly as
a single process.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Gradients are summed in flat buckets of at most this many elements (one larger parameter is its own bucket).
BUCKET_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call initialised the process group, so :func:`cleanup` should end it

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs and logs to MLflow."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_rows(x: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    """This rank's rows ``rank::world_size`` of ``x`` (all of ``x`` in one process)."""
    return x[dist_info.rank :: dist_info.world_size] if dist_info.distributed else x


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_from_env(device: torch.device | str = "cpu") -> DistInfo:
    """Join the ``torchrun`` job described by ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.

    Initialises ``torch.distributed`` with backend ``nccl`` when ``device`` is CUDA (and makes
    ``cuda:<local_rank>`` the current device), else ``gloo``; reuses a process group that is already
    initialised. A no-op returning rank 0 of 1 when ``WORLD_SIZE`` is unset or 1.

    Args:
        device: the training device (``cpu``, ``cuda`` or a ``torch.device``); picks the backend.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    owns = False
    if not dist.is_initialized():
        # torchrun sets MASTER_ADDR/MASTER_PORT, so the env:// rendezvous needs nothing more
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world_size)
        owns = True
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise RuntimeError(
            f"process group is rank {dist.get_rank()} of {dist.get_world_size()} but the environment says "
            f"RANK={rank} WORLD_SIZE={world_size}"
        )
    log.debug("rank %d of %d (local rank %d, backend %s)", rank, world_size, local_rank, dist.get_backend())
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, owns_group=owns)


def cleanup(info: DistInfo) -> None:
    """Wait for every rank, then end the process group if :func:`init_from_env` started it."""
    if not info.distributed or not dist.is_initialized():
        return
    barrier()
    if info.owns_group:
        dist.destroy_process_group()


def barrier() -> None:
    """Block until every rank gets here (a no-op outside a process group)."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_module_(module: torch.nn.Module, src: int = 0, buffers: bool = True) -> None:
    """Copy rank ``src``'s parameters and, with ``buffers``, its buffers into every rank's ``module`` (in place);
    ``buffers=False`` where the buffers' shapes may differ by rank (a transition table only rank 0 attached)."""
    with torch.no_grad():
        for t in [*module.parameters(), *(module.buffers() if buffers else ())]:
            dist.broadcast(t.data, src=src)


def shard_bounds(n: int, world_size: int) -> list[int]:
    """Cut points of ``n`` items into ``world_size`` contiguous shards of near-equal size (rank r gets
    ``[b[r], b[r + 1])``)."""
    return [n * r // world_size for r in range(world_size + 1)]


def all_gather_concat(shard: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's 1-D ``shard`` in rank order; ``sizes[r]`` is rank r's length (known to all)."""
    width = max(max(sizes), 1)
    padded = shard.new_zeros(width)
    padded[: shard.numel()] = shard
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def all_reduce_sum(values: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """Sum a dict of floats over ranks (keys keep their order); every rank must pass the same keys in the
    same order."""
    keys = list(values)
    buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    return dict(zip(keys, buf.tolist(), strict=True))


def from_main(values: dict[str, float], dist_info: DistInfo, device: torch.device) -> dict[str, float]:
    """Rank 0's ``values`` on every rank (unchanged in one process); every rank must pass the same keys in the
    same order."""
    if not dist_info.distributed:
        return values
    return all_reduce_sum({k: v if dist_info.is_main else 0.0 for k, v in values.items()}, device)


def all_reduce_gradients(
    params: Iterable[torch.nn.Parameter], sparse: Iterable[torch.nn.Parameter] = ()
) -> None:
    """Sum ``param.grad`` over ranks, in place.

    A missing gradient counts as zeros, and a parameter's gradient stays ``None`` only where it is ``None``
    on every rank, as it would be in one process (the optimiser then skips it: no weight decay, no moment
    update). The parameters in ``sparse`` have sparse row gradients (``train.embedding_updates``): their sum
    holds the union of the ranks' rows, as one process's gradient would. Every rank must pass the same
    parameters in the same order.
    """
    sparse_ids = {id(p) for p in sparse}
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has_grad)
    live = [p for p, flag in zip(params, has_grad.tolist(), strict=True) if flag > 0]
    for p, flag in zip(params, has_grad.tolist(), strict=True):
        if flag == 0:
            p.grad = None
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in live:
        if id(p) in sparse_ids:
            _reduce_rows(p)
            continue
        if bucket and size + p.numel() > BUCKET_ELEMENTS:
            _reduce_bucket(bucket)
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(bucket: list[torch.nn.Parameter]) -> None:
    dtypes = {p.dtype for p in bucket}
    if len(dtypes) > 1:  # keep one dtype per flat buffer
        for p in bucket:
            _reduce_bucket([p])
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
    dist.all_reduce(flat)
    offset = 0
    for p in bucket:
        chunk = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)


def _reduce_rows(p: torch.nn.Parameter) -> None:
    """Sum a sparse row gradient over ranks: every rank gathers every rank's (row, value) entries, and the
    coalesced sum adds up the rows that several ranks hold (a rank without a gradient adds none)."""
    if p.grad is None:
        rows = torch.zeros(0, dtype=torch.long, device=p.device)
        values = p.new_zeros((0, *p.shape[1:]))
    else:
        grad = p.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
    counts = torch.zeros(dist.get_world_size(), dtype=torch.long, device=p.device)
    counts[dist.get_rank()] = len(rows)
    dist.all_reduce(counts)
    sizes = counts.tolist()
    width = math.prod(p.shape[1:])
    all_rows = all_gather_concat(rows, sizes)
    all_values = all_gather_concat(values.reshape(-1), [n * width for n in sizes]).view(-1, *p.shape[1:])
    p.grad = torch.sparse_coo_tensor(all_rows[None], all_values, p.shape).coalesce()
