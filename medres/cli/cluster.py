"""The ``--workers`` / ``--scheduler`` options that ``medres predict`` and ``medres train``
share (work as tasks on a Dask cluster, :mod:`medres.cluster`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from medres.cluster.client import ClusterSpec

#: ``--workers N``: an embedded Dask cluster on this machine.
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Run on an embedded Dask cluster of N worker processes on this machine "
        "(the cores split between them).",
    ),
]
#: ``--scheduler ADDRESS``: an existing Dask cluster (or MEDRES_DASK_SCHEDULER).
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        envvar="MEDRES_DASK_SCHEDULER",
        help="Run on the existing Dask cluster at this address (tcp://host:8786); its "
        "workers must share the file system.",
    ),
]


#: ``--torch-threads N``: torch threads per process (this one, or each worker).
TorchThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--torch-threads",
        min=1,
        help="Torch threads per process (this one, or each Dask worker). Default: every "
        "core, or the cores split between the workers. Runs with the same count give "
        "bit-identical masks.",
    ),
]


def cluster_spec(
    workers: int | None, scheduler: str | None, torch_threads: int | None
) -> ClusterSpec:
    """The cluster asked for on the command line (nothing asked: this process, whose
    torch threads are then set here).

    Raises:
        ClusterError: Both ``workers`` and ``scheduler`` given, or a count below 1.
    """
    from medres.cluster.client import ClusterSpec

    spec = ClusterSpec(workers=workers, scheduler=scheduler or None, torch_threads=torch_threads)
    if not spec.wanted and torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    return spec


def describe_spec(spec: ClusterSpec) -> str:
    """One line for the console: where the work runs."""
    if spec.scheduler:
        return f"dask cluster at {spec.scheduler}"
    threads = spec.local_torch_threads()
    return f"dask: {spec.workers} local worker process(es) x {threads} torch thread(s)"
