"""Reaching a Dask cluster: an embedded ``LocalCluster`` or an existing scheduler.

``medres predict/train --workers N`` starts N worker processes on this machine (one task
at a time each, the machine's cores split between them); ``--scheduler ADDRESS`` (or
``MEDRES_DASK_SCHEDULER``) joins a cluster started elsewhere (``dask scheduler`` plus
``dask worker``, or dask-jobqueue on SLURM; see docs/scaling-out.md).

Every worker must see the same files at the same paths (the scans, the model folders,
the output folder): workers read their inputs and write their scan or member folders
themselves. :func:`check_shared_paths` asks every worker before any work is sent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medres.errors import ClusterError

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

#: Environment variable naming a scheduler to join when ``--scheduler`` is not given.
SCHEDULER_ENV = "MEDRES_DASK_SCHEDULER"
#: Environment of embedded workers. Dask runs tasks in a thread pool, and glibc gives such a
#: thread its own malloc arena, where neither the trim nor the mmap threshold of
#: :func:`medres.runtime.tune_allocator` holds: every large tensor is then a fresh mmap and
#: its page faults (measured: 10.5 s against 8.8 s per 512x512x300 CT, 1 thread). One arena
#: keeps a worker's allocations where the tuning applies (one task runs at a time). Give
#: workers started by hand the same (``MALLOC_ARENA_MAX=1 dask worker ...``).
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}
#: How long to wait for an existing scheduler, and for its first worker (s).
CONNECT_TIMEOUT_S = 30.0


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ClusterSpec:
    """Which cluster to use.

    Attributes:
        workers: Start an embedded ``LocalCluster`` with this many worker processes.
        scheduler: Join the scheduler at this address (``tcp://host:8786``) instead.
        torch_threads: Torch threads per worker (default: the cores of the worker's
            machine split between its workers). Torch's CPU kernels sum in an order that
            depends on the thread count, so masks are bit-identical across runs with the
            same count (``--torch-threads`` in one process and on the workers).
    """

    workers: int | None = None
    scheduler: str | None = None
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.scheduler:
            raise ClusterError(
                "give --workers (a cluster on this machine) or --scheduler (an existing "
                "cluster), not both"
            )
        if self.workers is not None and self.workers < 1:
            raise ClusterError(f"--workers {self.workers}: give 1 or more worker processes")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ClusterError(f"--torch-threads {self.torch_threads}: give 1 or more")

    @property
    def wanted(self) -> bool:
        """Whether a cluster is asked for at all (else everything runs in this process)."""
        return self.workers is not None or bool(self.scheduler)

    def local_torch_threads(self) -> int:
        """Torch threads per embedded worker: ``torch_threads``, else the cores split so
        workers x threads <= cores."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, available_cores() // max(self.workers or 1, 1))


@dataclass(frozen=True)
class WorkerShare:
    """How a task on a worker sets its threads and device.

    Attributes:
        torch_threads: Fixed torch threads per worker (embedded cluster), or None: the
            cores of the worker's host split between the workers on that host.
        workers_per_host: Workers seen on each host when the work was sent.
    """

    torch_threads: int | None
    workers_per_host: dict[str, int]

    def threads_here(self, host: str, task_slots: int) -> int:
        """Torch threads for one task on ``host`` (``task_slots``: the worker's threads)."""
        if self.torch_threads is not None:
            return self.torch_threads
        sharing = self.workers_per_host.get(host, 1) * max(task_slots, 1)
        return max(1, available_cores() // sharing)


def prepare_worker(worker: Any, share: WorkerShare, device: str) -> str:
    """Set up the process of a Dask ``worker`` for medres work; the device it uses.

    Sets torch's threads to the worker's share of its host's cores and tunes the
    allocator (:func:`medres.runtime.tune_allocator`), then resolves ``device`` there
    (:func:`worker_device`). Cheap to repeat.
    """
    import torch

    from medres.runtime import tune_allocator

    host = str(worker.address).rsplit(":", 1)[0].split("://")[-1]
    torch.set_num_threads(share.threads_here(host, worker.state.nthreads))
    tune_allocator()
    return worker_device(device, worker.name)


def worker_share(client: Client, spec: ClusterSpec) -> WorkerShare:
    """The thread split for the workers of ``client``'s cluster."""
    per_host: dict[str, int] = {}
    for info in client.scheduler_info(n_workers=-1)["workers"].values():
        host = str(info.get("host", ""))
        per_host[host] = per_host.get(host, 0) + 1
    threads = spec.local_torch_threads() if spec.workers is not None else spec.torch_threads
    return WorkerShare(torch_threads=threads, workers_per_host=per_host)


def worker_device(device: str, worker_name: Any) -> str:
    """The device a worker uses, resolved on the worker (``auto``: its GPU if it has one;
    the driver, e.g. a login node, may have none). ``cuda`` becomes ``cuda:<name mod
    GPUs>`` for the numbered workers of an embedded cluster on a machine with several GPUs.

    Raises:
        ConfigError: CUDA asked for on a worker without a GPU.
    """
    import torch

    from medres.runtime import resolve_device

    device = resolve_device(device)
    if device != "cuda" or not isinstance(worker_name, int):
        return device

    count = torch.cuda.device_count()
    return f"cuda:{worker_name % count}" if count > 1 else device


def _missing(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def check_shared_paths(client: Client, paths: Sequence[str]) -> None:
    """Raise when a worker does not see one of ``paths`` (absolute paths).

    Raises:
        ClusterError: Names the worker and the first missing path.
    """
    absolute = [os.path.abspath(p) for p in paths]
    answers = client.run(_missing, absolute)
    for worker, missing in sorted(answers.items()):
        if missing:
            raise ClusterError(
                f"worker {worker} does not see {missing[0]}: medres on a cluster needs the "
                "scans, the model folders and the output folder on a file system every "
                "worker shares, at the same paths"
            )


def _join(address: str) -> Client:
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"dask scheduler {address}: cannot connect ({type(exc).__name__}: {exc}); start "
            "one with `dask scheduler` and `dask worker ADDRESS`, or check the address"
        ) from None
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    except TimeoutError:
        client.close()
        raise ClusterError(
            f"dask scheduler {address}: no worker joined within {CONNECT_TIMEOUT_S:.0f} s; "
            "start workers with `dask worker ADDRESS --nthreads 1`"
        ) from None
    return client


def _start_local(workers: int) -> Client:
    import dask
    from distributed import Client, LocalCluster

    # set before each worker process starts (also those the nanny restarts later); a
    # nanny's ``env`` would be applied inside the started process, too late for glibc
    for name, value in WORKER_ENV.items():
        dask.config.set({f"distributed.nanny.pre-spawn-environ.{name}": value})

    cores = available_cores()
    if workers > cores:
        logger.warning("%d workers on %d cores: the workers will compete", workers, cores)
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,  # one scan or member at a time per worker process
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
        host="127.0.0.1",
    )
    return Client(cluster)


@contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Client]:
    """A connected client for ``spec``; an embedded cluster is shut down on exit.

    Raises:
        ClusterError: No scheduler at the address, no worker joins, or Dask is missing.
    """
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError(
            "--workers/--scheduler need dask.distributed: pip install 'distributed>=2024.8'"
        ) from None
    client = _join(spec.scheduler) if spec.scheduler else _start_local(spec.workers or 1)
    try:
        yield client
    finally:
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()


def describe_cluster(client: Client, spec: ClusterSpec) -> dict[str, Any]:
    """The cluster as ``run.json`` and the model folder record it."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {
        "scheduler": spec.scheduler or "embedded LocalCluster",
        "workers": len(workers),
        "hosts": sorted({str(w.get("host", "")) for w in workers.values()}),
        "torch_threads_per_worker": (
            spec.local_torch_threads() if spec.workers else spec.torch_threads
        ),
        "driver_host": socket.gethostname(),
    }


__all__ = [
    "SCHEDULER_ENV",
    "WORKER_ENV",
    "ClusterSpec",
    "WorkerShare",
    "available_cores",
    "check_shared_paths",
    "describe_cluster",
    "open_client",
    "prepare_worker",
    "worker_device",
    "worker_share",
]
