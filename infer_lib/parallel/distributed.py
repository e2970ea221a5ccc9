"""Starting ``torch.distributed`` and checking that every rank holds the same model.

``init`` reads what ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), picks NCCL with one GPU per local rank when CUDA is
available and gloo on the CPU otherwise, and bounds every collective by a timeout: a rank
that never joins a collective makes the others fail after ``timeout`` instead of waiting
forever (gloo raises in the waiting ranks; NCCL's watchdog aborts the communicator,
``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default).

``check_replicas`` compares the config and an exact checksum of every tensor across the
ranks (one ``all_gather_object`` of the shapes, one ``all_gather`` of the checksums), and
raises the same error, naming the mismatch, on every rank.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist

from ..model.config import ModelConfig

#: how long any collective may wait for the other ranks before it fails
DEFAULT_TIMEOUT = timedelta(seconds=120)


class RankInfo(NamedTuple):
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its host, the
    ``device`` its tensors (and, with NCCL, its collectives) live on, and the ``backend``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


_NOT_SET = ("{name} is not set: start the processes with torchrun (torchrun --nproc-per-node N "
            "script.py), which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, or set them "
            "yourself")


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is not None:
            return default
        raise RuntimeError(_NOT_SET.format(name=name))
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"{name}={value!r} is not an integer") from None


def init(backend: str | None = None, timeout: timedelta | float = DEFAULT_TIMEOUT) -> RankInfo:
    """Join the process group described by torchrun's environment variables; return this
    process's ``RankInfo``. Already initialised: nothing is done, the current one is returned.

    ``backend``: ``"nccl"`` (one GPU per local rank: ``cuda:LOCAL_RANK`` becomes the current
    device) or ``"gloo"`` (CPU); ``None`` picks NCCL when CUDA is available, else gloo.
    ``timeout`` (a ``timedelta`` or seconds) bounds every collective of the group."""
    if dist.is_initialized():
        return rank_info()
    if not isinstance(timeout, timedelta):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a timedelta or a positive number of seconds, got {timeout!r}")
        timeout = timedelta(seconds=timeout)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or None, got {backend!r}")
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", rank)
    _env_int("MASTER_PORT")
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError(_NOT_SET.format(name="MASTER_ADDR"))
    kwargs = {}
    if backend == "nccl":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"NCCL needs one GPU per local rank: LOCAL_RANK={local_rank} but "
                               f"{torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device("cuda", local_rank)   # binds the communicator eagerly
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=timeout, **kwargs)
    return rank_info()


def rank_info(group=None) -> RankInfo:
    """``RankInfo`` of the initialised process group (``group``: a sub-group, default the world)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call infer_lib.parallel.init() first "
                           "(under torchrun), or dist.init_process_group yourself")
    backend = dist.get_backend(group)
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return RankInfo(dist.get_rank(group), dist.get_world_size(group), local_rank, device, backend)


def shutdown() -> None:
    """Leave the process group (``destroy_process_group``), if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- are all ranks holding the same model? ------------------------------------------------------

_PRIME = (1 << 61) - 1          # checksums are kept modulo a Mersenne prime: they fit in int64
_CHUNK = 1 << 22                # elements per step: |int16| · weight · chunk < 2^15 · 2^16 · 2^22 = 2^53


def checksum(tensor: torch.Tensor) -> torch.Tensor:
    """An exact checksum of ``tensor``'s bits, a 0-d int64 tensor on its device.

    The raw bytes, read as 16-bit integers, summed with position-dependent weights in
    integer arithmetic: the same on every device and in any summation order (a float sum
    would not be), and any changed bit or swapped pair of elements changes it (barring a
    collision modulo 2⁶¹ − 1)."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    if raw.numel() % 2 == 0:
        raw = raw.view(torch.int16)
    total = torch.zeros((), dtype=torch.int64, device=tensor.device)
    for start in range(0, raw.numel(), _CHUNK):
        chunk = raw[start:start + _CHUNK].to(torch.int64)
        weights = torch.arange(start, start + chunk.numel(), device=tensor.device) % 65521 + 1
        total = (total + (chunk * weights).sum() % _PRIME + chunk.numel()) % _PRIME
    return total


def _describe_config_difference(mine: ModelConfig, theirs: ModelConfig) -> str:
    if not (dataclasses.is_dataclass(mine) and dataclasses.is_dataclass(theirs)):
        return f"{mine!r} vs {theirs!r}"
    fields = [f.name for f in dataclasses.fields(mine)
              if getattr(mine, f.name) != getattr(theirs, f.name, object())]
    return ", ".join(f"{name}={getattr(mine, name)!r} vs {getattr(theirs, name, None)!r}" for name in fields)


def check_replicas(config: ModelConfig, tensors: dict[str, torch.Tensor], group=None,
                   device: torch.device | None = None) -> None:
    """Raise ``RuntimeError`` on every rank unless every rank of ``group`` passed the same
    ``config`` and the same ``tensors`` (names, shapes, dtypes and bits).

    Two collectives, entered by every rank whatever it holds (so a mismatch never leaves one
    rank waiting): ``all_gather_object`` of the config and the tensors' names, shapes and
    dtypes, then, only if those agree everywhere, ``all_gather`` of one exact checksum per
    tensor (``checksum``) on ``device`` (the communication device: ``cuda`` for NCCL)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    manifest = (config, [(name, tuple(t.shape), str(t.dtype)) for name, t in tensors.items()])
    manifests = [None] * world
    dist.all_gather_object(manifests, manifest, group=group)
    for other, (their_config, their_tensors) in enumerate(manifests):
        if their_config != config:
            raise RuntimeError(f"tensor parallelism needs the same model on every rank, but rank {rank}'s "
                               f"config differs from rank {other}'s: "
                               f"{_describe_config_difference(config, their_config)}")
        if their_tensors != manifest[1]:
            theirs = dict((n, (s, d)) for n, s, d in their_tensors)
            diff = [f"{n} {s} {d} vs {theirs.get(n, 'absent')}" for n, s, d in manifest[1]
                    if theirs.get(n) != (s, d)] or [f"{n} absent on rank {rank}" for n in theirs
                                                    if n not in dict.fromkeys(x[0] for x in manifest[1])]
            raise RuntimeError(f"tensor parallelism needs the same model on every rank, but rank {rank}'s "
                               f"tensors differ from rank {other}'s: {'; '.join(diff[:4])}")
    names = list(tensors)
    if not names:
        return
    device = torch.device("cpu") if device is None else device
    mine = torch.stack([checksum(t) for t in tensors.values()]).to(device)        # (T,) int64
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    sums = torch.stack(gathered).cpu()                                             # (N, T)
    differs = (sums != sums[0]).any(dim=0)
    if bool(differs.any()):
        bad = [names[i] for i in differs.nonzero().flatten().tolist()]
        ranks = [r for r in range(world) if not torch.equal(sums[r], sums[0])]
        raise RuntimeError(f"tensor parallelism needs the same weights on every rank, but {len(bad)} "
                           f"tensor(s) differ between rank 0 and rank(s) {ranks} (seen from rank {rank}): "
                           f"{', '.join(bad[:6])}{' …' if len(bad) > 6 else ''}; load the same checkpoint "
                           "(or seed the random init identically) on every rank")
