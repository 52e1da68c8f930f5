"""One member trained by several processes: PyTorch DistributedDataParallel under torchrun.

``torchrun --nproc_per_node G -m medres train ...`` starts G copies of the command; each
finds its place in the environment torchrun sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`distributed_session` joins them into one process group (gloo on CPU, nccl on
CUDA with rank ``r`` on ``cuda:LOCAL_RANK``) and leaves it at the end; without those
variables (or with ``WORLD_SIZE=1``) it yields a world of one and initialises nothing,
so a plain ``medres train`` runs exactly as before.

:class:`DistributedContext` says which rank this process is and carries the few
collectives the training loop needs: :meth:`~DistributedContext.barrier`,
:meth:`~DistributedContext.broadcast` (rank 0's Python value to every rank),
:meth:`~DistributedContext.mean` and :meth:`~DistributedContext.mean_with_main` (a mean
across ranks plus rank 0's values, in one all-reduce). In a world of one each is a no-op
that returns its argument.

Example:
    >>> with distributed_session("cpu") as ctx:  # no torchrun: a world of one
    ...     ctx.world_size, ctx.is_main, ctx.broadcast(3.5)
    (1, True, 3.5)
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from medres.errors import TrainingError

T = TypeVar("T")

#: How long a rank waits in a collective for the others. Rank 0 validates alone while the
#: others wait, so this bounds one validation pass (torch's default is 30 min for gloo and
#: 10 min for nccl, short for a large 3D fold validated on one GPU).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)

#: What torchrun sets for every worker besides ``WORLD_SIZE``.
_REQUIRED = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a training launched by torchrun (or alone).

    Attributes:
        rank: Global rank, 0 .. ``world_size - 1``; rank 0 writes every file.
        world_size: Number of processes training the member together (1: no DDP).
        local_rank: Rank on this machine (picks the GPU ``cuda:local_rank``).
        local_world_size: Processes on this machine.
        backend: ``gloo`` or ``nccl`` once a process group exists, else None.
        device: The device this rank trains on (``cpu``, ``cuda``, ``cuda:1``), which is
            also where nccl's collective tensors live.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (it validates and writes the member folder)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether several processes train together (collectives are real)."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (the others' ``value`` is ignored).

        The value travels pickled between the ranks of this run: keep it to plain Python
        data (a decision, a float, a dict of floats).
        """
        if not self.enabled:
            return value
        import torch
        import torch.distributed as dist

        box: list[Any] = [value if self.is_main else None]
        device = torch.device(self.device) if self.backend == "nccl" else None
        dist.broadcast_object_list(box, src=0, device=device)
        return cast(T, box[0])

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all ranks."""
        return self.mean_with_main(value, ())[0]

    def mean_with_main(self, value: float, main: Sequence[float]) -> tuple[float, list[float]]:
        """The mean of ``value`` over all ranks and rank 0's ``main`` values, in one all-reduce.

        Every rank must pass as many ``main`` values; only rank 0's count.
        """
        if not self.enabled:
            return value, [float(v) for v in main]
        import torch
        import torch.distributed as dist

        own = [float(v) for v in main] if self.is_main else [0.0] * len(main)
        tensor = torch.tensor([float(value), *own], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        values = tensor.cpu().tolist()
        return values[0] / self.world_size, values[1:]


def launch_from_env(environ: Mapping[str, str] | None = None) -> DistributedContext:
    """The rank and world size torchrun gave this process, without initialising anything.

    Args:
        environ: The environment (default ``os.environ``).

    Returns:
        A world of one when ``WORLD_SIZE`` is unset or 1; otherwise the launch's ranks
        (``backend`` None: no process group yet).

    Raises:
        TrainingError: ``WORLD_SIZE`` > 1 but the other torchrun variables are missing or
            not consistent.
    """
    env = os.environ if environ is None else environ
    world_size = _env_int(env, "WORLD_SIZE", default=1)
    if world_size <= 1:
        return DistributedContext()
    missing = [name for name in _REQUIRED if not env.get(name)]
    if missing:
        raise TrainingError(
            f"WORLD_SIZE={world_size} is set but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not; launch with torchrun "
            "(python -m torch.distributed.run), which sets them all, or unset WORLD_SIZE"
        )
    rank = _env_int(env, "RANK", default=0)
    local_rank = _env_int(env, "LOCAL_RANK", default=0)
    local_world_size = _env_int(env, "LOCAL_WORLD_SIZE", default=local_rank + 1)
    if not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
        raise TrainingError(
            f"RANK={rank}, LOCAL_RANK={local_rank} do not fit WORLD_SIZE={world_size}, "
            f"LOCAL_WORLD_SIZE={local_world_size}; launch with torchrun, which sets them"
        )
    return DistributedContext(rank, world_size, local_rank, local_world_size)


def _env_int(env: Mapping[str, str], name: str, *, default: int) -> int:
    """An integer environment variable (``default`` when unset).

    Raises:
        TrainingError: The variable is not an integer.
    """
    text = env.get(name, "")
    if not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise TrainingError(
            f"environment variable {name}={text!r} is not an integer; launch with torchrun, "
            "which sets it"
        ) from None


def _rank_device(launch: DistributedContext, device: str) -> tuple[str, str]:
    """``(backend, device)`` of one rank: gloo on ``cpu``, nccl on ``cuda:LOCAL_RANK``.

    Raises:
        TrainingError: One GPU named for several processes, or fewer visible GPUs than
            processes on this machine.
    """
    import torch

    if not device.startswith("cuda"):
        return "gloo", device
    if device != "cuda":
        raise TrainingError(
            f"--device {device} names one GPU but torchrun runs {launch.world_size} "
            "processes; pass --device cuda (each process uses cuda:LOCAL_RANK)"
        )
    count = torch.cuda.device_count()
    if count < launch.local_world_size:
        raise TrainingError(
            f"torchrun started {launch.local_world_size} processes on this machine but "
            f"torch sees {count} CUDA GPU(s); pass --nproc_per_node {count} or fewer "
            "(or set CUDA_VISIBLE_DEVICES), or train with --device cpu"
        )
    return "nccl", f"cuda:{launch.local_rank}"


def init_distributed(
    device: str, *, environ: Mapping[str, str] | None = None
) -> tuple[DistributedContext, bool]:
    """Join the process group of a torchrun launch (a world of one otherwise).

    Args:
        device: The resolved device (``cpu`` or ``cuda``).
        environ: The environment (default ``os.environ``).

    Returns:
        This rank's context (its ``device`` is ``cuda:LOCAL_RANK`` under nccl), and
        whether this call created the process group (then :func:`destroy_distributed`
        should end it).

    Raises:
        TrainingError: A broken torchrun environment, or not enough GPUs.
    """
    launch = launch_from_env(environ)
    if not launch.enabled:
        return replace(launch, device=device), False
    import torch
    import torch.distributed as dist

    backend, rank_device = _rank_device(launch, device)
    created = not dist.is_initialized()
    if created:
        if backend == "nccl":
            torch.cuda.set_device(launch.local_rank)
            dist.init_process_group(
                backend, timeout=COLLECTIVE_TIMEOUT, device_id=torch.device(rank_device)
            )
        else:
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return replace(launch, backend=dist.get_backend(), device=rank_device), created


def destroy_distributed() -> None:
    """Leave the process group, if there is one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: str) -> Iterator[DistributedContext]:
    """This process's :class:`DistributedContext` for a block (see :func:`init_distributed`).

    The process group created here is destroyed at the end of the block, once every
    rank got there; one that existed before is left alone.

    Raises:
        TrainingError: A broken torchrun environment, or not enough GPUs.
    """
    ctx, created = init_distributed(device)
    try:
        yield ctx
    except BaseException:
        if created:  # no barrier: the other ranks may be gone (torchrun stops them)
            destroy_distributed()
        raise
    if created:
        ctx.barrier()  # a rank that left the group early aborts (gloo) as the others go on
        destroy_distributed()


def current_context(device: str) -> DistributedContext:
    """The context of the process group this process is in (a world of one if none).

    Args:
        device: The device this rank trains on.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext(device=device)
    env = os.environ
    local_rank = _env_int(env, "LOCAL_RANK", default=0)
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        local_world_size=_env_int(env, "LOCAL_WORLD_SIZE", default=local_rank + 1),
        backend=str(dist.get_backend()),
        device=device,
    )


def wrap_for_training(net: Any, ctx: DistributedContext) -> Any:
    """``net`` in DistributedDataParallel when several ranks train, else ``net`` itself.

    The wrapper shares ``net``'s parameters: train through it, validate and save ``net``.
    """
    if not ctx.enabled:
        return net
    from torch.nn.parallel import DistributedDataParallel

    if ctx.device.startswith("cuda"):
        return DistributedDataParallel(net, device_ids=[ctx.local_rank])
    return DistributedDataParallel(net)


__all__ = [
    "COLLECTIVE_TIMEOUT",
    "DistributedContext",
    "current_context",
    "destroy_distributed",
    "distributed_session",
    "init_distributed",
    "launch_from_env",
    "wrap_for_training",
]
