"""``medres train --workers N``: members trained side by side on an embedded Dask cluster
give the model folder of the sequential run: with the same torch thread count (1, as on
the workers) and no time budget, the same weights bit for bit; progress streams back from
the workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medres.cluster import ClusterSpec, open_client, train_on_cluster
from medres.models.folder import ModelFolder
from medres.training.loop import TrainingProgress
from medres.training.run import train_pipeline
from tests.conftest import SAMPLE_DATA
from tests.training.test_train import TINY_3D, _cfg


def _members(out: Path) -> dict[str, dict[str, object]]:
    manifest = json.loads((out / "model.json").read_text(encoding="utf-8"))
    return {m["name"]: m["summary"] for m in manifest["members"]}


@pytest.mark.parametrize("workers", [2], ids=["2_workers"])
def test_members_side_by_side_equal_the_sequential_folder(tmp_path: Path, workers: int) -> None:
    cfg = _cfg(TINY_3D, epochs=3, val_every_epochs=1)
    data = SAMPLE_DATA / "ct_train"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of 2 workers gets on this 2-core machine
    try:
        sequential = train_pipeline(cfg, data=data, out=tmp_path / "sequential", folds=[0, 1])
    finally:
        torch.set_num_threads(threads)
    events: list[TrainingProgress] = []
    spec = ClusterSpec(workers=workers, torch_threads=1)
    with open_client(spec) as client:
        parallel = train_pipeline(
            cfg,
            data=data,
            out=tmp_path / "parallel",
            folds=[0, 1],
            runner=train_on_cluster(client, spec, on_progress=events.append),
        )
    assert [m["name"] for m in parallel.members] == [m["name"] for m in sequential.members]
    for name in ("split.json", "pipeline.yaml"):
        assert (tmp_path / "parallel" / name).read_text() == (
            tmp_path / "sequential" / name
        ).read_text()
    ours, theirs = _members(tmp_path / "parallel"), _members(tmp_path / "sequential")
    for name, summary in ours.items():
        reference = theirs[name]
        for key in ("fold", "epochs_done", "iterations", "val_groups", "train_groups"):
            assert summary[key] == reference[key], (name, key)
        assert summary["best_val_dice"] == reference["best_val_dice"], name
        ours_weights = torch.load(tmp_path / "parallel" / name / "model.pt", weights_only=True)
        their_weights = torch.load(tmp_path / "sequential" / name / "model.pt", weights_only=True)
        assert ours_weights.keys() == their_weights.keys()
        for key, value in ours_weights.items():
            assert torch.equal(value, their_weights[key]), (name, key)
    # progress came back from both workers' members, epoch ends included
    assert {e.fold for e in events} == {0, 1}
    assert {e.kind for e in events} >= {"epoch", "validation"}
    folder = ModelFolder.open(tmp_path / "parallel")
    assert [m.name for m in folder.members] == ["fold_0", "fold_1"]


def test_cli_train_workers_and_its_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from typer.testing import CliRunner

    from medres.cli.app import app

    runner = CliRunner()
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(yaml.safe_dump(_cfg(TINY_3D, epochs=1).model_dump(mode="json")))
    args = ["train", str(pipeline), "--data", str(SAMPLE_DATA / "ct_train")]
    out = tmp_path / "model"
    result = runner.invoke(app, [*args, "--out", str(out), "--folds", "0,2", "--workers", "2"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "dask: 2 local worker process(es)" in text
    assert "model folder" in text and "(cpu)" in text
    assert sorted(_members(out)) == ["fold_0", "fold_2"]

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    both = runner.invoke(app, [*args, "--out", str(tmp_path / "m2"), "--workers", "2"])
    assert both.exit_code != 0
    assert "under torchrun every process trains the same member" in " ".join(both.output.split())
    assert "Traceback" not in both.output
