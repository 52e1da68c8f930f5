"""Training end to end on tiny synthetic data: model folder, learning, resume, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from medres.cli.app import app
from medres.errors import ConfigError, ModelError, TrainingError
from medres.models.folder import ModelFolder
from medres.pipeline import PipelineConfig, parse_pipeline
from medres.synthetic import disc_image
from medres.training.loop import CHECKPOINT, TrainingProgress, learning_rate
from medres.training.run import train_pipeline
from tests.conftest import SAMPLE_DATA

TINY_3D = {
    "name": "tiny_ct",
    "dims": 3,
    "channels": ["ct"],
    "labels": ["background", "lesion"],
    "lesion_labels": ["lesion"],
    "preprocessing": {
        "orientation": "RAS",
        "target_spacing_mm": [2.4, 2.4, 2.5],
        "intensity": {"kind": "ct_window", "window": [-160, 240]},
    },
    "model": {"name": "res_unet", "params": {"channels": [4, 8, 16], "strides": [2, 2]}},
    "training": {
        "folds": 3,
        "epochs": 3,
        "iterations_per_epoch": 2,
        "batch_size": 2,
        "patch_size": [24, 24, 8],
    },
    "inference": {"overlap": 0.0},
}


def _cfg(data: dict, **training: object) -> PipelineConfig:
    merged = yaml.safe_load(yaml.safe_dump(data))
    merged["training"].update(training)
    return parse_pipeline(merged)


def test_model_folder_is_self_describing(tmp_path: Path) -> None:
    out = tmp_path / "model"
    run = train_pipeline(_cfg(TINY_3D), data=SAMPLE_DATA / "ct_train", out=out, folds=[0, 2])
    assert [m["name"] for m in run.members] == ["fold_0", "fold_2"]
    for name in ("model.json", "pipeline.yaml", "split.json"):
        assert (out / name).is_file()
    for name in ("model.pt", "metrics.json", "curve.csv"):
        assert (out / "fold_0" / name).is_file()
    assert any((out / "fold_0" / "tensorboard").iterdir())
    assert not (out / "fold_0" / CHECKPOINT).exists()  # removed once complete
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["labels"] == ["background", "lesion"]
    assert manifest["versions"]["torch"] == torch.__version__
    assert len(manifest["members"][0]["weights_sha256"]) == 64
    split = json.loads((out / "split.json").read_text())
    assert split["folds"][0]["val_groups"] == manifest["members"][0]["summary"]["val_groups"]
    curve = (out / "fold_0" / "curve.csv").read_text().splitlines()
    assert curve[0] == "epoch,iteration,elapsed_s,lr,train_loss,val_dice"
    assert len(curve) == 4  # 3 epochs

    # the folder alone is enough to rebuild every member
    moved = tmp_path / "elsewhere"
    shutil.move(out, moved)
    folder = ModelFolder.open(moved)
    assert folder.labels == ("background", "lesion") and len(folder.members) == 2
    net = folder.load_network(folder.members[0])
    assert not net.training
    with torch.inference_mode():
        assert net(torch.zeros(1, 1, 24, 24, 8)).shape == (1, 2, 24, 24, 8)

    weights = moved / "fold_2" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelError, match=r"fold_2/model.pt: sha256 .* does not match the manifest"):
        ModelFolder.open(moved)
    with pytest.raises(ModelError, match=r"not a medres model folder \(no model.json\)"):
        ModelFolder.open(tmp_path)


class _Interrupt:
    """Raise KeyboardInterrupt at the first iteration of epoch ``at_epoch`` (0-based)."""

    def __init__(self, at_epoch: int) -> None:
        self.at_epoch = at_epoch
        self.events: list[TrainingProgress] = []

    def __call__(self, event: TrainingProgress) -> None:
        self.events.append(event)
        if event.kind == "iteration" and event.epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_resume_continues_from_the_last_checkpoint(tmp_path: Path) -> None:
    cfg = _cfg(TINY_3D)
    data = SAMPLE_DATA / "ct_train"
    straight = tmp_path / "straight"
    train_pipeline(cfg, data=data, out=straight, folds=[1])

    out = tmp_path / "interrupted"
    stop = _Interrupt(at_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        train_pipeline(cfg, data=data, out=out, folds=[1], on_progress=stop)
    checkpoint = torch.load(out / "fold_1" / CHECKPOINT, weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["iteration"] == 4
    assert not (out / "fold_1" / "metrics.json").exists()

    with pytest.raises(
        TrainingError, match=r"already holds a model of pipeline 'tiny_ct'; pass --resume"
    ):
        train_pipeline(cfg, data=data, out=out, folds=[1])
    other = _cfg(TINY_3D, seed=5)
    with pytest.raises(TrainingError, match=r"different pipeline config"):
        train_pipeline(other, data=data, out=out, folds=[1], resume=True)

    seen: list[TrainingProgress] = []
    train_pipeline(cfg, data=data, out=out, folds=[1], resume=True, on_progress=seen.append)
    iterations = [e.iteration for e in seen if e.kind == "iteration"]
    assert iterations == [5, 6]  # only the last epoch was trained again
    curve = (out / "fold_1" / "curve.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in curve] == ["1", "2", "3"]
    # epochs re-seed from (seed, fold, epoch): the resumed run equals the straight one
    a = torch.load(straight / "fold_1" / "model.pt", weights_only=True)
    b = torch.load(out / "fold_1" / "model.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    # a complete member is skipped on a further resume
    seen.clear()
    train_pipeline(cfg, data=data, out=out, folds=[1], resume=True, on_progress=seen.append)
    assert seen == []


def _disc_data(root: Path) -> None:
    for patient in range(4):
        for n in range(3):
            image, mask = disc_image(size=(64, 64), n_discs=1 + n % 2, seed=10 * patient + n)
            folder = root / f"pat{patient}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"pat{patient}_{n}.png")
            Image.fromarray(mask).save(folder / f"pat{patient}_{n}_mask.png")


def test_2d_model_learns_bright_discs(tmp_path: Path) -> None:
    _disc_data(tmp_path / "data")
    cfg = parse_pipeline(
        {
            "name": "discs",
            "dims": 2,
            "channels": ["r", "g", "b"],
            "labels": ["background", "disc"],
            "lesion_labels": ["disc"],
            "model": {"name": "res_unet", "params": {"channels": [8, 16, 32], "strides": [2, 2]}},
            "training": {
                "folds": 2,
                "epochs": 6,
                "iterations_per_epoch": 10,
                "batch_size": 4,
                "patch_size": [48, 48],
                "optimizer": {"lr": 0.01},
            },
            "inference": {"roi_size": [64, 64]},
        }
    )
    run = train_pipeline(cfg, data=tmp_path / "data", out=tmp_path / "model", folds=[0])
    summary = run.members[0]["summary"]
    assert summary["best_val_dice"] > 0.7, summary
    assert set(summary["val_dice_per_group"]) == set(summary["val_groups"])


def test_learning_rate_schedules() -> None:
    cfg = _cfg(TINY_3D, warmup_iterations=10)
    base = cfg.training.optimizer.lr
    assert learning_rate(cfg, 0.0, 0) == pytest.approx(base / 10)
    assert learning_rate(cfg, 0.0, 10) == pytest.approx(base)
    assert learning_rate(cfg, 0.5, 100) == pytest.approx(base * 0.5**0.9)
    assert learning_rate(cfg, 1.0, 100) == 0.0
    cosine = _cfg(TINY_3D, schedule="cosine")
    assert learning_rate(cosine, 0.5, 100) == pytest.approx(base / 2)


def test_train_bad_fold_and_device(tmp_path: Path) -> None:
    with pytest.raises(
        TrainingError, match=r"fold\(s\) \[3\] do not exist; the pipeline has folds 0..2"
    ):
        train_pipeline(_cfg(TINY_3D), data=SAMPLE_DATA / "ct_train", out=tmp_path / "m", folds=[3])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device 'cuda' requested but .* sees no CUDA GPU"):
            train_pipeline(
                _cfg(TINY_3D), data=SAMPLE_DATA / "ct_train", out=tmp_path / "m", device="cuda"
            )


def test_cli_train_and_its_errors(tmp_path: Path) -> None:
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(yaml.safe_dump(_cfg(TINY_3D, epochs=1).model_dump(mode="json")))
    runner = CliRunner()
    out = tmp_path / "model"
    result = runner.invoke(
        app,
        [
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
        ],
    )
    assert result.exit_code == 0, result.output
    assert "fold_0" in result.stdout and (out / "model.json").is_file()

    bad = tmp_path / "bad.yaml"
    bad.write_text(pipeline.read_text().replace("batch_size", "batchsize"))
    result = runner.invoke(
        app,
        ["train", str(bad), "--data", str(SAMPLE_DATA / "ct_train"), "--out", str(tmp_path / "x")],
    )
    assert result.exit_code == 2
    assert "training.batchsize: unknown key" in result.output

    result = runner.invoke(
        app,
        [
            "train",
            str(pipeline),
            "--data",
            str(SAMPLE_DATA / "images2d"),
            "--out",
            str(tmp_path / "y"),
        ],
    )
    assert result.exit_code == 2
    assert "2D image" in result.output and "pipeline is 3D" in result.output
    assert not (tmp_path / "y").exists()  # nothing is written when the data are bad


def test_cli_ctrl_c_then_resume(tmp_path: Path) -> None:
    """A real process interrupted with SIGINT keeps its checkpoint; --resume finishes it."""
    import signal
    import subprocess
    import sys
    import time

    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(
        # long enough epochs that the SIGINT lands mid-run even on a loaded machine (40 x 4
        # iterations took 2 s and could end before a starved poll saw the first checkpoint)
        yaml.safe_dump(_cfg(TINY_3D, epochs=40, iterations_per_epoch=40).model_dump(mode="json"))
    )
    out = tmp_path / "model"
    args = ["train", str(pipeline), "--data", str(SAMPLE_DATA / "ct_train"), "--out", str(out)]
    args += ["--folds", "0", "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from medres.cli.app import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a job started in the background (nohup, a batch queue) inherits SIGINT ignored,
        # and Python then installs no KeyboardInterrupt handler: give the child the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = out / "fold_0" / CHECKPOINT
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run the same command with --resume" in " ".join(stderr.split())
    done = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= done < 40

    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    curve = (out / "fold_0" / "curve.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in curve] == list(range(1, 41))
    assert json.loads((out / "fold_0" / "metrics.json").read_text())["epochs_done"] == 40
