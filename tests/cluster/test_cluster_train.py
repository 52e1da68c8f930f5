"""``medres train --workers N``: members trained side by side on an embedded Dask cluster
give the model folder of the sequential run (same folds, splits, schedule; val Dice
within noise), with progress streamed back from the workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    sequential = train_pipeline(cfg, data=data, out=tmp_path / "sequential", folds=[0, 1])
    events: list[TrainingProgress] = []
    spec = ClusterSpec(workers=workers)
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
        assert summary["best_val_dice"] is not None
        assert abs(summary["best_val_dice"] - reference["best_val_dice"]) <= 0.15, name
    # progress came back from both workers' members, epoch ends included
    assert {e.fold for e in events} == {0, 1}
    assert {e.kind for e in events} >= {"epoch", "validation"}
    folder = ModelFolder.open(tmp_path / "parallel")
    assert [m.name for m in folder.members] == ["fold_0", "fold_1"]
