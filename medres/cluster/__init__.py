"""Work beyond one process on a Dask cluster: scans and ensemble members as tasks.

* :class:`ClusterExecutor`: ``medres predict --workers N | --scheduler ADDRESS``.
* :func:`train_on_cluster`: ``medres train --workers N | --scheduler ADDRESS`` (members
  side by side; one member across GPUs is DDP under torchrun, :mod:`medres.training.ddp`).
* :func:`open_client` / :class:`ClusterSpec`: an embedded ``LocalCluster`` or an existing
  scheduler.
"""

from medres.cluster.client import SCHEDULER_ENV, ClusterSpec, open_client
from medres.cluster.predict import ClusterExecutor
from medres.cluster.train import train_on_cluster

__all__ = ["SCHEDULER_ENV", "ClusterExecutor", "ClusterSpec", "open_client", "train_on_cluster"]
