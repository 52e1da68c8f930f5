"""One member trained by two processes (torchrun, gloo on CPU): files, resume, rank 0 alone.

The runs go through ``python -m torch.distributed.run`` as a user would start them; the
tiny pipeline trains 3 epochs of 2 steps, a few seconds per launch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medres.errors import TrainingError
from medres.models.folder import ModelFolder
from medres.training.ddp import (
    DistributedContext,
    current_context,
    distributed_session,
    init_distributed,
    launch_from_env,
)
from medres.training.loop import CHECKPOINT
from medres.training.member_setup import _epoch_indices
from tests.conftest import REPO, SAMPLE_DATA
from tests.training.test_train import TINY_3D, _cfg

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
TORCHRUN_VARIABLES += ("MASTER_ADDR", "MASTER_PORT")

#: A torchrun script for a crash: rank 1 dies at the first step of epoch ``stop_epoch``
#: (0-based), after rank 0 checkpointed the epochs before it.
CRASHING_WORKER = """
import os, sys
from medres.pipeline import load_pipeline
from medres.training.run import train_pipeline

pipeline, data, out, stop_epoch = sys.argv[1:5]

def crash(event):
    if event.kind == "iteration" and event.epoch == int(stop_epoch):
        if os.environ["RANK"] == "1":
            os._exit(3)

train_pipeline(load_pipeline(pipeline), data=data, out=out, folds=[0], device="cpu",
               on_progress=crash)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _torchrun(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """Two CPU processes under torchrun, one thread each; the launch's output.

    A launch that hangs (ranks waiting for each other) fails the test and is stopped.
    """
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MEDRES_PROGRESS_INTERVAL="0")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), *args]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its workers (each in its own session) on SIGTERM
        try:
            stderr = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            stderr = "(torchrun did not stop on SIGTERM; its workers may be left running)"
        pytest.fail(f"torchrun {' '.join(args)} hung; its output:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _train_args(pipeline: Path, out: Path) -> list[str]:
    return [
        "-m",
        "medres",
        "train",
        str(pipeline),
        "--data",
        str(SAMPLE_DATA / "ct_train"),
        "--out",
        str(out),
        "--folds",
        "0",
        "--device",
        "cpu",
    ]


def _curve_rows(member_dir: Path) -> list[list[str]]:
    lines = (member_dir / "curve.csv").read_text().splitlines()
    assert lines[0] == "epoch,iteration,elapsed_s,lr,train_loss,val_dice"
    return [line.split(",") for line in lines[1:]]


def _event_steps(event_file: Path) -> list[int]:
    """The iterations at which a TensorBoard event file recorded ``train/loss``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_file))
    events.Reload()
    return [scalar.step for scalar in events.Scalars("train/loss")]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "tiny.yaml"
    path.write_text(yaml.safe_dump(_cfg(TINY_3D).model_dump(mode="json")))
    return path


@pytest.fixture(scope="module")
def straight(pipeline: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """An uninterrupted 2-process run of fold 0."""
    out = pipeline.parent / "straight"
    return out, _torchrun(*_train_args(pipeline, out))


def test_two_processes_train_one_member(
    straight: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = straight
    assert proc.returncode == 0, proc.stderr[-3000:]
    member = out / "fold_0"
    for name in ("model.pt", "metrics.json", "curve.csv"):
        assert (member / name).is_file()
    assert not (member / CHECKPOINT).exists()
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["training"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert json.loads((member / "metrics.json").read_text())["epochs_done"] == 3
    # rank 0 alone wrote: one curve row per epoch, one event file, one table
    assert [row[:2] for row in _curve_rows(member)] == [["1", "2"], ["2", "4"], ["3", "6"]]
    assert len(list((member / "tensorboard").iterdir())) == 1
    assert proc.stdout.count("tiny_ct: model folder") == 1, proc.stdout

    folder = ModelFolder.open(out)
    assert [m.name for m in folder.members] == ["fold_0"]
    net = folder.load_network(folder.members[0])
    with torch.inference_mode():
        logits = net(torch.zeros(1, 1, 24, 24, 8))
    assert logits.shape == (1, 2, 24, 24, 8) and torch.isfinite(logits).all()


def test_a_crashed_run_resumes_across_both_ranks(
    pipeline: Path,
    straight: tuple[Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    worker = tmp_path / "crashing_worker.py"
    worker.write_text(CRASHING_WORKER)
    out = tmp_path / "model"
    data = str(SAMPLE_DATA / "ct_train")
    crashed = _torchrun(str(worker), str(pipeline), data, str(out), "2")
    assert crashed.returncode != 0, crashed.stderr[-3000:]
    member = out / "fold_0"
    assert torch.load(member / CHECKPOINT, weights_only=True)["epoch"] == 2
    assert not (member / "metrics.json").exists()
    before = _curve_rows(member)
    assert [row[0] for row in before] == ["1", "2"]

    resumed = _torchrun(*_train_args(pipeline, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _curve_rows(member)
    assert [row[:2] for row in rows] == [["1", "2"], ["2", "4"], ["3", "6"]]
    assert rows[:2] == before  # the epochs before the crash were not trained again
    assert not (member / CHECKPOINT).exists()
    # one event file per launch (rank 0's); the resumed one holds only the last epoch
    events = sorted((member / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(events) == 2
    assert _event_steps(events[1]) == [6]
    # epochs re-seed from (seed, fold, epoch) on every rank: the same member as straight
    a = torch.load(straight[0] / "fold_0" / "model.pt", weights_only=True)
    b = torch.load(member / "model.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_the_time_budget_stops_both_ranks_at_the_same_step(tmp_path: Path) -> None:
    """Rank 0's clock decides; a rank that went on alone would wait for ever (a hang)."""
    pipeline = tmp_path / "long.yaml"
    pipeline.write_text(yaml.safe_dump(_cfg(TINY_3D, epochs=500).model_dump(mode="json")))
    out = tmp_path / "model"
    proc = _torchrun(*_train_args(pipeline, out), "--max-minutes", "0.02", timeout_s=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert summary["stopped_by"] == "time" and summary["iterations"] < 1000, summary
    assert _curve_rows(out / "fold_0")[-1][1] == str(summary["iterations"])


def test_without_torchrun_nothing_is_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert launch_from_env() == DistributedContext()
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}).world_size == 1
    ctx, created = init_distributed("cpu")
    assert (ctx.world_size, ctx.rank, ctx.is_main, ctx.enabled, created) == (
        1,
        0,
        True,
        False,
        False,
    )
    assert ctx.backend is None and ctx.device == "cpu"
    with distributed_session("cpu") as session:
        assert session == ctx
        assert not torch.distributed.is_initialized()
        session.barrier()
        assert session.broadcast({"dice": 0.5}) == {"dice": 0.5}
        assert session.mean(2.5) == 2.5
        assert session.mean_with_main(1.0, (3.0, 1.0)) == (1.0, [3.0, 1.0])
    assert not torch.distributed.is_initialized()
    assert current_context("cpu") == ctx


_LAUNCH = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
_LAUNCH |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_launch_environment_and_its_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert launch_from_env(_LAUNCH) == DistributedContext(
        rank=1, world_size=2, local_rank=1, local_world_size=2
    )
    assert not launch_from_env(_LAUNCH).is_main
    with pytest.raises(
        TrainingError,
        match=r"WORLD_SIZE=2 is set but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not; "
        r"launch with torchrun",
    ):
        launch_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(TrainingError, match=r"RANK=2, LOCAL_RANK=1 do not fit WORLD_SIZE=2"):
        launch_from_env(_LAUNCH | {"RANK": "2"})
    with pytest.raises(TrainingError, match=r"LOCAL_RANK='x' is not an integer"):
        launch_from_env(_LAUNCH | {"LOCAL_RANK": "x"})

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        TrainingError,
        match=r"^torchrun started 2 processes on this machine but torch sees 1 CUDA GPU\(s\); "
        r"pass --nproc_per_node 1 or fewer .* or train with --device cpu$",
    ):
        init_distributed("cuda", environ=_LAUNCH)
    with pytest.raises(TrainingError, match=r"--device cuda:1 names one GPU but torchrun runs 2"):
        init_distributed("cuda:1", environ=_LAUNCH)
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("world_size", [1, 2, 3], ids=["one", "two", "three"])
def test_ranks_share_one_weighted_draw(world_size: int) -> None:
    weights = [0.1, 0.5, 0.2, 0.2]
    parts = [
        _epoch_indices(weights, samples=6, seed=11, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert all(len(part) == 6 for part in parts)
    draw = torch.multinomial(
        torch.tensor(weights, dtype=torch.double),
        6 * world_size,
        True,
        generator=torch.Generator().manual_seed(11),
    ).tolist()
    assert [parts[i % world_size][i // world_size] for i in range(len(draw))] == draw
