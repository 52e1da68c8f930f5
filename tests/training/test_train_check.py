"""``medres train --check``: the data checked, a few steps timed, the plan printed, nothing
written."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from medres.cli.app import app
from medres.pipeline import load_pipeline
from medres.synthetic import write_photo_set
from medres.training.plan import FoldPlan, TrainingPlan, _expect, plan_training
from tests.conftest import REPO

runner = CliRunner()
PHOTO_PIPELINE = REPO / "pipelines" / "photo_lesion_2d.yaml"


def test_check_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "photos"
    write_photo_set(data, n_cases=6)
    out = tmp_path / "model"
    args = ["train", str(PHOTO_PIPELINE), "--data", str(data), "--out", str(out), "--check"]
    result = runner.invoke(app, [*args, "--max-minutes", "0.5"])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # the console wraps at its width
    assert "6 cases, 6 patients, 6 with lesions" in printed
    assert "patch 64x64, batch 4" in printed and "iterations per minute" in printed
    assert "0.5 wall-clock minutes per member" in printed
    assert "fold_0" in printed and "fold_1" in printed
    assert not out.exists() and "nothing was written" in printed


def test_check_refuses_bad_data_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "photos"
    write_photo_set(data, n_cases=4)
    (data / "masks" / "lesion_02.png").write_bytes(b"not a png")
    args = ["train", str(PHOTO_PIPELINE), "--data", str(data), "--check"]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    printed = "".join(result.output.split())
    assert "lesion_02.png" in printed and "Traceback" not in result.output


def test_measured_rates_give_the_epochs_the_budget_allows(tmp_path: Path) -> None:
    data = tmp_path / "photos"
    write_photo_set(data, n_cases=4)
    plan = plan_training(
        load_pipeline(PHOTO_PIPELINE), data=data, device="cpu", measure_iterations=3
    )
    assert plan.seconds_per_iteration > 0 and plan.iterations_per_minute > 0
    assert [f.index for f in plan.folds] == [0, 1] and plan.n_cases == 4
    assert sum(f.val_cases for f in plan.folds) == 4  # every case validates once

    def planned(budget: float | None) -> TrainingPlan:
        made = TrainingPlan(
            pipeline="p",
            device="cpu",
            n_cases=1,
            n_groups=1,
            lesion_cases=1,
            excluded=[],
            folds=[FoldPlan(0, 1, 1, 1, 1)],
            patch_size=(8, 8),
            batch_size=1,
            iterations_per_epoch=100,
            epochs=50,
            val_every_epochs=2,
            max_minutes=budget,
            startup_s=10.0,
            seconds_per_iteration=0.5,
            validation_s=20.0,
        )
        _expect(made)
        return made

    # one epoch: 100 x 0.5 s + 20 s / 2 = 60 s; 10 minutes minus 10 s start-up: 9 epochs
    limited = planned(10.0)
    assert (limited.expected_epochs, limited.stopped_by) == (9, "time budget")
    assert limited.member_minutes == 10.0 and limited.notes
    free = planned(None)
    assert (free.expected_epochs, free.stopped_by) == (50, "epochs")
    assert abs(free.member_minutes - (10 + 50 * 60) / 60) < 1e-9
    assert planned(0.1).expected_epochs == 0 and "before the first epoch" in planned(0.1).notes[0]
    assert yaml.safe_load(PHOTO_PIPELINE.read_text())["dims"] == 2


def test_check_names_every_image_training_could_not_decode(tmp_path: Path) -> None:
    data = tmp_path / "photos"
    write_photo_set(data, n_cases=4)
    for name in ("lesion_01.png", "lesion_04.png"):  # a valid header, truncated pixels
        path = data / "images" / name
        path.write_bytes(path.read_bytes()[:300])
    result = runner.invoke(app, ["train", str(PHOTO_PIPELINE), "--data", str(data), "--check"])
    assert result.exit_code == 2
    printed = "".join(result.output.split())
    assert "2image(s)cannotbedecoded" in printed
    assert "lesion_01.png" in printed and "lesion_04.png" in printed
    assert "Traceback" not in result.output
