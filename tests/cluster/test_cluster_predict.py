"""``medres predict --workers N``: scans as tasks on an embedded Dask cluster give the
outputs of the single-process run, survive a worker killed mid-scan, and resume."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medres.cli.app import app
from medres.cluster import ClusterExecutor, ClusterSpec, open_client
from medres.cluster.client import WorkerShare, check_shared_paths, worker_share
from medres.errors import ClusterError
from medres.inference.batch import PredictOptions, predict_batch

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DATA = ROOT / "sample_data"
DEMO = ROOT / "models" / "demo_ct_3d"
runner = CliRunner()


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven CT scans: a DICOM series, the phantom NIfTI and the five training volumes."""
    folder = tmp_path_factory.mktemp("cluster_scans")
    shutil.copytree(SAMPLE_DATA / "ct_phantom_dicom", folder / "dicom")
    shutil.copy(SAMPLE_DATA / "ct_phantom.nii.gz", folder / "phantom.nii.gz")
    for path in sorted((SAMPLE_DATA / "ct_train" / "imagesTr").glob("*.nii.gz"))[:5]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def single_process(scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same command without --workers."""
    out = tmp_path_factory.mktemp("single") / "out"
    result = runner.invoke(
        app, ["predict", str(scans), "-m", str(DEMO), "-o", str(out), "--no-pdf", "--members"]
    )
    assert result.exit_code == 0, result.output
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(encoding="utf-8") as handle:
        return [
            {k: v for k, v in row.items() if k != "scan_seconds"} for row in csv.DictReader(handle)
        ]


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "outputs")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _assert_same_outputs(a: Path, b: Path) -> int:
    """Same files, voxel-identical NIfTIs, same lesion records; the NIfTI count."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    niftis = 0
    for rel in files_a:
        if rel.name.endswith(".nii.gz"):
            x, y = (np.asarray(nib.load(root / rel).dataobj) for root in (a, b))
            assert x.shape == y.shape and np.array_equal(x, y), rel
            niftis += 1
        elif rel.name == "lesions.json":
            records = [json.loads((root / rel).read_text(encoding="utf-8")) for root in (a, b)]
            assert _without_timings(records[0]) == _without_timings(records[1]), rel
    assert _rows(a) == _rows(b)
    return niftis


def test_workers_give_the_single_process_outputs(
    scans: Path, single_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["predict", str(scans), "-m", str(DEMO), "-o", str(out), "--no-pdf", "--members"]
    result = runner.invoke(app, [*args, "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "dask: 2 local worker process(es)" in " ".join(result.output.split())
    assert _assert_same_outputs(single_process, out) >= 14  # ensemble + member masks
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["execution"]["workers"] == 2
    assert len(run["execution"]["worker_peak_memory_mib"]) == 2
    assert (out / "index.html").is_file()

    again = runner.invoke(app, [*args, "--workers", "2", "--resume"])
    assert again.exit_code == 0, again.output
    assert {row["status"] for row in _rows(out)} == {"resumed"}


def test_a_worker_killed_mid_scan_loses_nothing(
    scans: Path, single_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    spec = ClusterSpec(workers=2)
    options = PredictOptions(keep_members=True, report=True)
    killed: list[str] = []
    with open_client(spec) as client:
        assert worker_share(client, ClusterSpec(scheduler="x")).workers_per_host == {"127.0.0.1": 2}
        pids = client.run(os.getpid)
        # one malloc arena per worker, set before the process started (WORKER_ENV)
        assert set(client.run(os.environ.get, "MALLOC_ARENA_MAX").values()) == {"1"}

        def kill_a_busy_worker(done: int, total: int, scan_id: str, stage: str) -> None:
            if killed or stage != "done":
                return
            busy = [w for w, keys in client.processing().items() if keys]
            assert busy, "no scan in flight to lose"
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

        from medres.report.build import report_hook  # noqa: F401  (the workers import it)

        run = predict_batch(
            scans,
            [DEMO],
            out,
            options=options,
            executor=ClusterExecutor(client, spec, [DEMO], options),
            on_progress=kill_a_busy_worker,
        )
    assert killed
    assert [str(r.status) for r in run.results] == ["ok"] * 7
    # every mask of the killed worker's scan was redone to the reference
    for rel in single_process.rglob("seg.nii.gz"):
        ours = out / rel.relative_to(single_process)
        assert np.array_equal(
            np.asarray(nib.load(rel).dataobj), np.asarray(nib.load(ours).dataobj)
        ), rel


def test_workers_that_do_not_see_the_files_are_named(tmp_path: Path) -> None:
    with (
        open_client(ClusterSpec(workers=1)) as client,
        pytest.raises(ClusterError, match=r"does not see .*nowhere.*shares"),
    ):
        check_shared_paths(client, [str(tmp_path), str(tmp_path / "nowhere")])


def test_cluster_options_are_checked() -> None:
    with pytest.raises(ClusterError, match="not both"):
        ClusterSpec(workers=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(ClusterError, match="1 or more"):
        ClusterSpec(workers=0)
    with pytest.raises(ClusterError, match="--torch-threads 0"):
        ClusterSpec(workers=2, torch_threads=0)
    assert not ClusterSpec().wanted
    assert ClusterSpec(workers=64).local_torch_threads() == 1
    assert ClusterSpec(workers=64, torch_threads=3).local_torch_threads() == 3


def test_threads_split_between_the_workers_of_a_host() -> None:
    share = WorkerShare(torch_threads=None, workers_per_host={"a": 2, "b": 1})
    cores = len(os.sched_getaffinity(0))
    assert share.threads_here("a", 1) == max(1, cores // 2)
    assert share.threads_here("b", 1) == cores
    assert share.threads_here("a", 4) == max(1, cores // 8)
    assert WorkerShare(torch_threads=3, workers_per_host={}).threads_here("a", 1) == 3


def test_cli_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["predict", str(SAMPLE_DATA), "-m", str(DEMO), "-o", str(tmp_path / "o")]
    both = runner.invoke(app, [*args, "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"])
    assert both.exit_code != 0
    assert "not both" in " ".join(both.output.split())
    assert "Traceback" not in both.output

    import medres.cluster.client as client_module

    monkeypatch.setattr(client_module, "CONNECT_TIMEOUT_S", 2.0)
    unreachable = runner.invoke(app, [*args, "--scheduler", "tcp://127.0.0.1:9"])
    text = " ".join(unreachable.output.split())
    assert unreachable.exit_code != 0
    assert "dask scheduler tcp://127.0.0.1:9: cannot connect" in text
    assert "Traceback" not in unreachable.output


def test_a_bad_scan_on_a_worker_is_one_line_and_the_batch_goes_on(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(SAMPLE_DATA / "ct_phantom.nii.gz", scans / "good.nii.gz")
    data = (SAMPLE_DATA / "ct_phantom.nii.gz").read_bytes()
    (scans / "truncated.nii.gz").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", str(scans), "-m", str(DEMO), "-o", str(out), "--no-pdf", "--workers", "1"]
    )
    assert result.exit_code == 1, result.output
    rows = {row["scan_id"]: row for row in _rows(out)}
    assert rows["good"]["status"] == "ok"
    assert rows["truncated"]["status"] == "failed"
    assert "truncated.nii.gz" in rows["truncated"]["error"]
    assert "\n" not in rows["truncated"]["error"]
    assert "Traceback" not in result.output
