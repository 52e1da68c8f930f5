"""``medres train --workers N | --scheduler ADDRESS``: ensemble members side by side.

Members are independent (own fold, own seeds, own folder), so each
:class:`~medres.training.run.MemberJob` is one task; a worker trains it with its share of
the cores (or its GPU) into the member's folder on the shared file system, and the
driver writes ``model.json`` as members finish, exactly as the sequential run does.
Progress (iterations, validation) streams back as Dask events.

A task always runs with ``resume``: the driver has already removed stale member folders
when not resuming, so a checkpoint found is one this run wrote, and a member whose worker
died continues on another worker from its last checkpoint instead of starting over.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from medres.cluster.client import ClusterSpec, WorkerShare, prepare_worker, worker_share
from medres.errors import TrainingError
from medres.training.loop import MemberResult, TrainingProgress
from medres.training.run import MemberJob, MemberRunner

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

#: Iteration events are sent at most this often per member (s); epoch ends always.
PROGRESS_INTERVAL_S = 1.0


def _train_on_worker(job: MemberJob, share: WorkerShare, topic: str) -> MemberResult:
    """The task: one member on this worker, its progress sent as events on ``topic``."""
    from distributed import get_worker

    worker = get_worker()
    job = dataclasses.replace(job, device=prepare_worker(worker, share, job.device))
    last = [0.0]

    def send(event: TrainingProgress) -> None:
        now = time.monotonic()
        if event.kind == "iteration" and now - last[0] < PROGRESS_INTERVAL_S:
            return
        last[0] = now
        worker.log_event(topic, dataclasses.asdict(event))

    return job.train(on_progress=send)


def train_on_cluster(
    client: Client,
    spec: ClusterSpec,
    *,
    on_progress: Callable[[TrainingProgress], None] | None = None,
) -> MemberRunner:
    """A runner for :func:`~medres.training.run.train_pipeline` that trains every member
    as a task on ``client``'s cluster and yields each result as it finishes.

    Raises (from the runner):
        TrainingError: A member failed (its error), or its workers kept dying.
    """

    def run(jobs: Sequence[MemberJob]) -> Iterator[MemberResult]:
        from distributed import KilledWorker, as_completed

        if not jobs:
            return
        topic = f"medres-train-{uuid.uuid4().hex[:12]}"
        if on_progress is not None:
            fields = {f.name for f in dataclasses.fields(TrainingProgress)}

            def forward(event: Any) -> None:
                _, message = event  # Dask adds the sending worker to the message
                on_progress(TrainingProgress(**{k: message[k] for k in fields}))

            client.subscribe_topic(topic, forward)
        share = worker_share(client, spec)
        futures = {
            client.submit(
                _train_on_worker,
                dataclasses.replace(job, resume=True),
                share,
                topic,
                key=f"{topic}-fold-{job.fold}",
                pure=False,
            ): job
            for job in jobs
        }
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    result = future.result()
                except KilledWorker:
                    raise TrainingError(
                        f"fold {job.fold}: the workers training it died each time (out of "
                        "memory, or killed); see the worker logs, then rerun with --resume"
                    ) from None
                assert isinstance(result, MemberResult)
                yield result
        finally:
            client.cancel(list(futures))
            if on_progress is not None:
                client.unsubscribe_topic(topic)

    return run


__all__ = ["PROGRESS_INTERVAL_S", "train_on_cluster"]
