"""Benchmark ``medres predict`` in one process against ``--workers N`` (an embedded Dask
cluster), on the same scans, side by side in one run; then Dask's own cost per task and
an estimate for large cohorts.

Run from the repository root (with the project's environment active)::

    python benchmarks/bench_cluster.py                               # sample CT scans
    python benchmarks/bench_cluster.py --lgg-model MODEL --ct-512 4  # + LGG slices, big CT

Inputs (each skipped with a note when missing):

* ``sample CT``: the 7 CT scans of ``sample_data/`` (a DICOM series, the phantom, the
  training volumes) with the bundled ``models/demo_ct_3d`` (3 members);
* ``LGG test slices``: the 175 slices of the 6 canonical LGG test patients
  (``../shared/data/lgg_flair_2d``) with a model folder of ``pipelines/lgg_flair_2d.yaml``;
* ``CT 512x512x300``: ``--ct-512 K`` copies of a synthetic 512x512x300 CT phantom.

Each method runs ``medres predict``, reports on (HTML and PDF), as a user would:
``1 process`` uses every core in one process; ``N workers`` starts N worker processes
with the cores split between them; ``N shards`` is nnU-Net's way (``-num_parts N
-part_id k``): the scans split by hand into N folders, N ``medres predict`` processes
started side by side with ``--torch-threads cores/N``, wall time until the last ends
(batch s: the slowest shard's). "wall s" is the whole command (start-up,
models, cluster); "batch s" is the scans only (``run.json``'s ``seconds_total``); "scan s"
is the mean time one scan takes where it runs (its row's seconds). "idle s/scan" is
what the cluster run spends beyond its workers' scan time, ``batch s x N / scans - scan
s``: each worker opening the models on its first scan, workers left idle at the end of a
short batch, and Dask. Dask's own cost is measured apart: 2000 empty tasks on the same
cluster, the scheduler's time per task.

The estimate for 10 000 scans on 50 workers (one core each, like the workers here) is
``max(10 000 x scan s / 50, 10 000 x task s) + start-up``: the scans spread over the
workers, unless the scheduler's serial work per task is the limit; start-up is the
cluster run's ``wall s - batch s`` plus one model opening. Shared storage bandwidth is
not modelled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEMO = ROOT / "models" / "demo_ct_3d"
LGG_TEST = ROOT / "pipelines" / "lgg_flair_2d.test_patients.txt"


def _predict(scans: Path, model: Path, out: Path, workers: int | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "medres", "predict", str(scans), "-m", str(model)]
    command += ["-o", str(out)] + (["--workers", str(workers)] if workers else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return _figures([out], wall)


def _figures(outs: list[Path], wall: float) -> dict[str, Any]:
    """What the runs' ``run.json`` files say (several for shards): the table's columns."""
    runs = [json.loads((out / "run.json").read_text(encoding="utf-8")) for out in outs]
    seconds = [float(s["seconds"]) for r in runs for s in r["scans"] if s["status"] == "ok"]
    peaks = [
        p for r in runs for p in r.get("execution", {}).get("worker_peak_memory_mib", {}).values()
    ]
    return {
        "wall_s": wall,
        "batch_s": max(float(r["seconds_total"]) for r in runs),
        "scans": len(seconds),
        "scan_s": sum(seconds) / max(len(seconds), 1),
        "peak_mib": max([*(r["peak_memory_mib"] for r in runs), *peaks]),
    }


def _predict_shards(scans: Path, model: Path, out: Path, shards: int) -> dict[str, Any]:
    """The scans split into ``shards`` folders (symlinks, round robin), one process each."""
    from medres.cluster.client import available_cores

    entries = sorted(scans.iterdir())
    threads = max(1, available_cores() // shards)
    procs, outs = [], []
    start = time.perf_counter()
    for k in range(shards):
        part = out / f"part_{k}"
        part.mkdir(parents=True)
        for entry in entries[k::shards]:
            os.symlink(entry.resolve(), part / entry.name)
        target = out / f"out_{k}"
        outs.append(target)
        command = [sys.executable, "-m", "medres", "predict", str(part), "-m", str(model)]
        command += ["-o", str(target), "--torch-threads", str(threads)]
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for proc in procs:
        _, stderr = proc.communicate()
        if proc.returncode not in (0, 1):
            raise SystemExit(f"shard failed ({proc.returncode}):\n{stderr.decode()[-2000:]}")
    wall = time.perf_counter() - start
    return _figures(outs, wall)


def _noop() -> None:
    return None


def noop_task_seconds(workers: int, n_tasks: int = 2000) -> float:
    """Seconds per empty task on an embedded cluster (submit to result, amortised)."""
    from distributed import wait

    from medres.cluster import ClusterSpec, open_client

    with open_client(ClusterSpec(workers=workers)) as client:
        client.gather(client.map(lambda i: i, range(workers * 4), pure=False))  # warm up
        start = time.perf_counter()
        futures = [client.submit(_noop, pure=False) for _ in range(n_tasks)]
        wait(futures)
        return (time.perf_counter() - start) / n_tasks


def _inputs(work: Path, lgg_model: Path | None, ct_512: int) -> list[tuple[str, Path, Path]]:
    cases = []
    sample = work / "sample_ct"
    shutil.copytree(ROOT / "sample_data" / "ct_phantom_dicom", sample / "dicom")
    shutil.copy(ROOT / "sample_data" / "ct_phantom.nii.gz", sample / "phantom.nii.gz")
    for path in sorted((ROOT / "sample_data" / "ct_train" / "imagesTr").glob("*.nii.gz")):
        shutil.copy(path, sample / path.name)
    cases.append(("sample CT", sample, DEMO))
    lgg = SHARED / "lgg_flair_2d"
    if lgg_model is not None and lgg.is_dir():
        test = work / "lgg_test"
        test.mkdir()
        for line in LGG_TEST.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                os.symlink(lgg / line.strip(), test / line.strip())
        cases.append(("LGG test slices", test, lgg_model))
    else:
        print("LGG skipped: " + ("no --lgg-model" if lgg_model is None else f"no {lgg}"))
    if ct_512:
        from medres.io.nifti import write_nifti
        from medres.io.volume import Volume
        from medres.synthetic import ct_phantom

        big = work / "ct_512"
        big.mkdir()
        ct, _ = ct_phantom(shape=(512, 512, 300), spacing_mm=(0.8, 0.8, 1.0), n_lesions=6, seed=3)
        write_nifti(big / "ct_0.nii.gz", Volume(ct.array, ct.affine))
        for k in range(1, ct_512):
            shutil.copy(big / "ct_0.nii.gz", big / f"ct_{k}.nii.gz")
        cases.append(("CT 512x512x300", big, DEMO))
    return cases


def _estimate(name: str, scan_s: float, startup_s: float, noop_s: float) -> str:
    """Wall time for 10 000 scans like these on 50 workers (one core each, as here)."""
    n, workers = 10_000, 50
    spread_s, scheduler_s = n * scan_s / workers, n * noop_s
    total_min = (max(spread_s, scheduler_s) + startup_s) / 60
    return (
        f"{name}: 10 000 scans on 50 one-core workers ~ {total_min:.1f} min "
        f"({scan_s:.2f} s per scan per worker; scheduler {scheduler_s:.0f} s in all, "
        f"start-up {startup_s:.0f} s)"
    )


def main() -> None:
    """Run every input with both methods and print the table and the estimates."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lgg-model", type=Path, default=None)
    parser.add_argument("--ct-512", type=int, default=0, help="copies of a 512x512x300 CT")
    args = parser.parse_args()
    rows: list[tuple[str, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, scans, model in _inputs(work, args.lgg_model, args.ct_512):
            for label, workers in (("1 process", None), (f"{args.workers} workers", args.workers)):
                out = work / f"out_{len(rows)}"
                rows.append((name, label, _predict(scans, model, out, workers)))
            out = work / f"out_{len(rows)}"
            shards = _predict_shards(scans, model, out, args.workers)
            rows.append((name, f"{args.workers} shards", shards))
        noop_s = noop_task_seconds(args.workers)
    header = f"{'input':<18} {'method':<10} {'scans':>5} {'wall s':>7} {'batch s':>7}"
    header += f" {'scans/min':>9} {'scan s':>7} {'peak MiB':>8} {'idle s/scan':>11}"
    print(header)
    print("-" * len(header))
    cluster_runs: dict[str, tuple[float, float]] = {}
    for name, label, r in rows:
        per_minute = 60.0 * r["scans"] / r["batch_s"]
        overhead = ""
        if label.endswith("workers"):
            value = r["batch_s"] * args.workers / r["scans"] - r["scan_s"]
            cluster_runs[name] = (r["scan_s"], r["wall_s"] - r["batch_s"] + value)
            overhead = f"{value:.3f}"
        print(
            f"{name:<18} {label:<10} {r['scans']:>5} {r['wall_s']:>7.1f} {r['batch_s']:>7.1f}"
            f" {per_minute:>9.1f} {r['scan_s']:>7.2f} {r['peak_mib']:>8.0f} {overhead:>11}"
        )
    print(f"\nDask: an empty task on {args.workers} local workers takes {noop_s * 1000:.2f} ms")
    for name, (scan_s, startup_s) in cluster_runs.items():
        print(_estimate(name, scan_s, startup_s, noop_s))


if __name__ == "__main__":
    main()
