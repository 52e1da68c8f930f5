"""``medres predict --workers N | --scheduler ADDRESS``: the scans as tasks on a Dask cluster.

The driver (the ``medres predict`` process) discovers the scans and submits one task per
scan; :class:`ClusterExecutor` is the :class:`~medres.inference.batch.ScanExecutor` that
does it. Each worker opens the model folders once (a worker plugin, on its first scan),
then predicts its scans exactly as :func:`~medres.inference.batch.predict_scan` does in
one process: resume check, prediction, masks, record and report, written atomically into
the scan's own folder. Rows stream back as scans finish; the driver alone writes
``summary.csv``, ``run.json`` and ``index.html``.

A worker that dies (killed, out of memory) loses only its scan in flight: the scheduler
sends that scan to another worker (a fresh one for an embedded cluster), which redoes it
from the start. A scan whose worker died ``distributed.scheduler.allowed-failures`` + 1
times (default 4) fails with that reason and the batch goes on.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin

from medres.cluster.client import (
    ClusterSpec,
    WorkerShare,
    check_shared_paths,
    describe_cluster,
    prepare_worker,
    worker_share,
)
from medres.inference.batch import open_ensembles
from medres.inference.inputs import ScanInput
from medres.inference.options import PredictOptions
from medres.inference.predictor import Ensemble
from medres.inference.scan_step import AfterScanCallback, ScanJob, failed_result, predict_scan
from medres.predictions.records import ScanResult

if TYPE_CHECKING:
    from distributed import Client, Worker

logger = logging.getLogger(__name__)


class _PredictPlugin(WorkerPlugin):
    """Held by every worker of one run: the ensembles, opened once on its first scan."""

    def __init__(
        self, model_dirs: Sequence[str], options: PredictOptions, share: WorkerShare
    ) -> None:
        self.model_dirs = list(model_dirs)
        self.options = options
        self.share = share
        self._worker: Worker | None = None
        self._lock: threading.Lock | None = None  # made on the worker (locks do not pickle)
        self._opened: tuple[list[Ensemble], AfterScanCallback | None] | None = None

    def setup(self, worker: Worker) -> None:
        """Remember the worker; nothing is loaded until it gets a scan."""
        self._worker = worker
        self._lock = threading.Lock()

    def teardown(self, worker: Worker) -> None:
        """Drop the ensembles (the run is over)."""
        self._opened = None

    def prepared(self) -> tuple[list[Ensemble], AfterScanCallback | None]:
        """The ensembles and the report step, opened on the first call."""
        assert self._lock is not None, "setup() runs before any task"
        with self._lock:
            if self._opened is None:
                self._opened = self._open()
            return self._opened

    def _open(self) -> tuple[list[Ensemble], AfterScanCallback | None]:
        worker = self._worker
        assert worker is not None, "setup() runs before any task"
        device = prepare_worker(worker, self.share, self.options.device)
        options = replace(self.options, device=device)
        ensembles = open_ensembles(self.model_dirs, options=options)
        after_scan = None
        if options.report:
            from medres.report.build import report_hook

            after_scan = report_hook(
                ensembles,
                show_phi=options.report_phi,
                pdf=options.report_pdf,
                explain=options.explain,
            )
        logger.info("worker %s: models opened on %s", worker.name, device)
        return ensembles, after_scan


def _predict_on_worker(plugin_name: str, item: ScanInput, job: ScanJob) -> ScanResult:
    """The task: one scan on this worker, with the run's ensembles."""
    from distributed import get_worker

    plugin = get_worker().plugins[plugin_name]
    assert isinstance(plugin, _PredictPlugin)
    ensembles, after_scan = plugin.prepared()
    return predict_scan(item, ensembles, job, after_scan=after_scan)


def _worker_peak_mib() -> float:
    from medres.runtime import peak_rss_bytes

    return round(peak_rss_bytes() / 2**20, 1)


class ClusterExecutor:
    """Predicts the scans of a run as tasks on the cluster of ``client``.

    Args:
        client: A connected client (:func:`~medres.cluster.client.open_client`).
        spec: How the cluster was asked for (recorded, and the thread split).
        model_dirs: The model folders, as the driver opened them.
        options: The run options (``device`` is what every worker uses).
    """

    def __init__(
        self,
        client: Client,
        spec: ClusterSpec,
        model_dirs: Sequence[str | Path],
        options: PredictOptions,
    ) -> None:
        self.client = client
        self.spec = spec
        self.model_dirs = [str(Path(m).resolve()) for m in model_dirs]
        self.options = options
        self._peaks: dict[str, float] = {}

    def results(
        self, inputs: Sequence[ScanInput], job: ScanJob
    ) -> Iterator[tuple[int, ScanResult]]:
        """Submit one task per scan; yield each row as its scan finishes.

        Raises:
            ClusterError: A worker does not see the models, scans or output folder.
        """
        from distributed import as_completed

        if not inputs:
            return
        check_shared_paths(self.client, [*self.model_dirs, str(job.root), str(job.run_folder.path)])
        name = f"medres-predict-{uuid.uuid4().hex[:12]}"
        plugin = _PredictPlugin(self.model_dirs, self.options, worker_share(self.client, self.spec))
        self.client.register_plugin(plugin, name=name)
        futures = {
            self.client.submit(
                _predict_on_worker, name, item, job, key=f"{name}-{index}", pure=False
            ): index
            for index, item in enumerate(inputs)
        }
        try:
            for future in as_completed(futures):
                index = futures[future]
                yield index, self._row(future, inputs[index], job)
        finally:
            self.client.cancel(list(futures))
            self._peaks = self._gather_peaks()
            self.client.unregister_worker_plugin(name)

    def _row(self, future: Any, item: ScanInput, job: ScanJob) -> ScanResult:
        """The scan's row, or a failed row saying why its task did not finish."""
        from distributed import KilledWorker

        try:
            result = future.result()
        except KilledWorker:
            return failed_result(
                item,
                job.root,
                f"{item.name}: the workers predicting it died each time (out of memory, or "
                "killed); see the worker logs",
            )
        except Exception as exc:  # a worker that cannot open the models, a lost task
            return failed_result(item, job.root, f"{item.name}: {type(exc).__name__}: {exc}")
        assert isinstance(result, ScanResult)
        return result

    def _gather_peaks(self) -> dict[str, float]:
        try:
            return {str(k): v for k, v in self.client.run(_worker_peak_mib).items()}
        except Exception:  # a cluster going down at the end of the run
            return {}

    def describe(self) -> dict[str, Any]:
        """The cluster and each worker's peak memory (MiB), for ``run.json``."""
        return {
            **describe_cluster(self.client, self.spec),
            "worker_peak_memory_mib": self._peaks,
        }


__all__ = ["ClusterExecutor"]
