"""Exported networks (medres export) and predict --runtime: the same masks as torch eager,
checksums and checks recorded, and clear errors for what is missing or changed.

Tiny res-UNets with random weights on odd, anisotropic grids: a 3D one whose volume
takes several sliding windows, and a 2D one whose images fit in one window (the batched
flip path). Skipped where the optional runtimes are not installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medres.cli.app import app
from medres.errors import ConfigError, ModelError
from medres.inference.predictor import Ensemble
from medres.inference.runtimes import choose_runtime
from medres.inference.sliding import fits_one_window, one_window_logits, window_logits
from medres.inference.tta import FlipTTA
from medres.io.volume import Volume
from medres.models import exported
from medres.models.folder import PIPELINE, WEIGHTS, ModelFolder, write_manifest
from medres.models.registry import build_pipeline_network
from medres.pipeline import parse_pipeline
from medres.training.export import export_model
from tests.conftest import oblique_affine

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf")

PIPELINE_3D = {
    "name": "tiny_3d",
    "dims": 3,
    "channels": ["ct"],
    "labels": ["background", "lesion"],
    "lesion_labels": ["lesion"],
    "preprocessing": {"intensity": {"kind": "ct_window", "window": [-160, 240]}},
    "augmentation": {"flip_axes": [0]},
    "model": {"name": "res_unet", "params": {"channels": [4, 8, 16], "strides": [2, 2]}},
    "training": {"folds": 2, "patch_size": [24, 16, 8]},
    "inference": {"tta": True, "sw_batch_size": 2, "overlap": 0.25},
}
PIPELINE_2D = {
    "name": "tiny_2d",
    "dims": 2,
    "channels": ["a", "b", "c"],
    "labels": ["background", "tumour"],
    "lesion_labels": ["tumour"],
    "preprocessing": {"intensity": {"kind": "zscore", "foreground_only": True}},
    "augmentation": {"flip_axes": [0, 1]},
    "model": {"name": "res_unet", "params": {"channels": [4, 8, 16], "strides": [2, 2]}},
    "training": {"folds": 2, "patch_size": [32, 32]},
    "inference": {"tta": True, "roi_size": [40, 36], "sw_batch_size": 4},
}


def _folder(root: Path, spec: dict, n_members: int) -> Path:
    cfg = parse_pipeline(yaml.safe_load(yaml.safe_dump(spec)))
    folder = root / cfg.name
    folder.mkdir()
    (folder / PIPELINE).write_text(cfg.to_yaml())
    members = []
    for fold in range(n_members):
        torch.manual_seed(fold)
        (folder / f"fold_{fold}").mkdir()
        net = build_pipeline_network(cfg)
        with torch.no_grad():  # a bias that makes some voxels foreground
            for param in net.parameters():
                param.mul_(3.0)
        torch.save(net.state_dict(), folder / f"fold_{fold}" / WEIGHTS)
        members.append({"name": f"fold_{fold}", "fold": fold, "val_dice": None, "summary": {}})
    write_manifest(folder, cfg, members)
    return folder


def _calibration_2d(root: Path) -> Path:
    """Two patients of 2D image/mask pairs (the LGG layout), odd sizes."""
    from PIL import Image

    data = root / "calibration_2d"
    rng = np.random.default_rng(3)
    for patient in ("p1", "p2"):
        (data / patient).mkdir(parents=True)
        for n, shape in enumerate([(33, 29), (40, 36)], start=1):
            image = (rng.random((*shape, 3)) * 255).astype(np.uint8)
            mask = np.zeros(shape, np.uint8)
            mask[5:12, 6:15] = 255
            Image.fromarray(image).save(data / patient / f"{patient}_{n}.png")
            Image.fromarray(mask).save(data / patient / f"{patient}_{n}_mask.png")
    return data


@pytest.fixture(scope="module")
def exported_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    three_d = _folder(root, PIPELINE_3D, 2)
    two_d = _folder(root, PIPELINE_2D, 1)
    export_model(three_d, formats=["onnx", "openvino"])
    export_model(two_d, formats=["onnx", "openvino"], int8=True, calibration=_calibration_2d(root))
    return {"3d": three_d, "2d": two_d}


def _volume_3d() -> Volume:
    rng = np.random.default_rng(0)
    array = rng.normal(40, 120, (1, 37, 29, 11)).astype(np.float32)
    return Volume(array, oblique_affine((0.7, 1.3, 3.0)))


def _volume_2d() -> Volume:
    rng = np.random.default_rng(1)
    array = rng.normal(0, 1, (3, 31, 27, 1)).astype(np.float32)
    return Volume(array, np.diag([0.9, 1.2, 1.0, 1.0]))


def test_export_records_checked_files_with_their_checksums(
    exported_folders: dict[str, Path],
) -> None:
    folder = ModelFolder.open(exported_folders["2d"])
    entries = {(e.member, e.runtime, e.precision): e for e in folder.manifest.exports}
    assert set(entries) == {
        ("fold_0", runtime, precision)
        for runtime in ("onnx", "openvino")
        for precision in ("fp32", "int8")
    }
    for entry in entries.values():
        member_dir = folder.path / entry.member
        assert exported.sha256_file(member_dir / entry.file) == entry.sha256
        assert entry.weights_sha256 == folder.members[0].weights_sha256
        assert entry.window == (3, 40, 36)
        assert "windows of 4 cases" in entry.check_input
        if entry.precision == "fp32":
            assert entry.max_abs_logit_difference < 1e-2 and entry.label_agreement > 0.999
            assert entry.foreground_dice > 0.99
        if entry.runtime == "openvino":
            assert (member_dir / entry.data_file).is_file()
    assert not list(folder.path.rglob(".export-*"))  # no temporary file left behind
    three_d = ModelFolder.open(exported_folders["3d"]).manifest.exports
    assert {e.check_input for e in three_d} == {"2 random windows (seed 0)"}
    assert len(three_d) == 4  # 2 members x onnx, openvino, no int8 without --int8


@pytest.mark.parametrize("kind", ["3d", "2d"])
def test_fp32_runtimes_give_torch_masks_on_odd_grids(
    exported_folders: dict[str, Path], kind: str
) -> None:
    folder = ModelFolder.open(exported_folders[kind])
    volume = _volume_3d() if kind == "3d" else _volume_2d()
    reference = Ensemble([folder], runtime="torch").predict(volume)
    assert reference.label_map.any() and not reference.label_map.all()  # a real test
    runtimes = ["onnx", "openvino"] + (["onnx-int8", "openvino-int8"] if kind == "2d" else [])
    for runtime in runtimes:
        ensemble = Ensemble([folder], runtime=runtime)
        assert ensemble.runtime == runtime
        result = ensemble.predict(volume)
        assert result.label_map.shape == reference.label_map.shape
        assert result.label_map.size == int(np.prod(volume.spatial_shape))
        np.testing.assert_array_equal(result.affine, volume.affine)
        if "int8" in runtime:
            agreement = (result.label_map == reference.label_map).mean()
            assert agreement > 0.9, (runtime, agreement)
            continue
        difference = np.abs(
            result.probabilities.astype(np.float32) - reference.probabilities.astype(np.float32)
        )
        assert float(difference.max()) < 2e-3, runtime
        assert (result.label_map != reference.label_map).mean() < 1e-3, runtime


def _with_int8_dice(source: Path, target: Path, dice: float) -> ModelFolder:
    shutil.copytree(source, target)
    manifest = json.loads((target / "model.json").read_text())
    for entry in manifest["exports"]:
        if entry["precision"] == "int8":
            entry["foreground_dice"] = dice
    (target / "model.json").write_text(json.dumps(manifest))
    return ModelFolder.open(target)


def test_auto_takes_int8_only_when_it_agrees_with_torch(
    exported_folders: dict[str, Path], tmp_path: Path
) -> None:
    fp32_only = ModelFolder.open(exported_folders["3d"])
    assert choose_runtime([fp32_only], "auto", device="cpu") == "torch"  # fp32: not faster
    agreeing = _with_int8_dice(exported_folders["2d"], tmp_path / "good", 0.99)
    assert choose_runtime([agreeing], "auto", device="cpu") == "openvino-int8"
    assert choose_runtime([agreeing], "auto", device="cuda") == "torch"
    assert Ensemble([agreeing], runtime="auto").runtime == "openvino-int8"
    assert Ensemble([agreeing]).runtime == "torch"  # the library default: the reference
    poor = _with_int8_dice(exported_folders["2d"], tmp_path / "poor", 0.9)
    assert choose_runtime([poor], "auto", device="cpu") == "torch"
    assert choose_runtime([poor], "openvino-int8", device="cpu") == "openvino-int8"
    plain = _folder(tmp_path, PIPELINE_3D, 1)
    with pytest.raises(ModelError, match="run: medres export .* --format onnx"):
        choose_runtime([ModelFolder.open(plain)], "onnx", device="cpu")
    with pytest.raises(ModelError, match="--int8"):
        choose_runtime([fp32_only], "openvino-int8", device="cpu")
    with pytest.raises(ConfigError, match="runs on the CPU only"):
        choose_runtime([fp32_only], "openvino", device="cuda")
    with pytest.raises(ConfigError, match="use auto, torch, onnx"):
        choose_runtime([fp32_only], "tensorrt", device="cpu")


def test_exports_of_other_weights_are_never_used(
    exported_folders: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "retrained"
    shutil.copytree(exported_folders["3d"], copy)
    manifest = json.loads((copy / "model.json").read_text())
    for entry in manifest["exports"]:
        entry["weights_sha256"] = "0" * 64  # exported from weights since replaced
    (copy / "model.json").write_text(json.dumps(manifest))
    folder = ModelFolder.open(copy)
    assert choose_runtime([folder], "auto", device="cpu") == "torch"
    with pytest.raises(ModelError, match="holds no onnx export"):
        Ensemble([folder], runtime="onnx")


def test_a_changed_exported_file_is_refused(
    exported_folders: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "changed"
    shutil.copytree(exported_folders["3d"], copy)
    with open(copy / "fold_1" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match=r"fold_1/model\.onnx: sha256 does not match"):
        Ensemble([ModelFolder.open(copy)], runtime="onnx")
    (copy / "fold_0" / "model.bin").unlink()
    with pytest.raises(ModelError, match=r"fold_0/model\.bin: the exported file is missing"):
        Ensemble([ModelFolder.open(copy)], runtime="openvino")


def test_a_missing_runtime_names_its_extra(
    exported_folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exported, "runtime_installed", lambda engine: engine == "torch")
    with pytest.raises(ModelError, match=r"pip install 'medres\[openvino\]'"):
        Ensemble([ModelFolder.open(exported_folders["3d"])], runtime="openvino")
    with pytest.raises(ModelError, match=r"pip install 'medres\[onnx\]'"):
        export_model(exported_folders["3d"])


def test_one_window_batch_equals_the_sliding_window() -> None:
    cfg = parse_pipeline(yaml.safe_load(yaml.safe_dump(PIPELINE_2D)))
    torch.manual_seed(0)
    nets = [build_pipeline_network(cfg).eval() for _ in range(2)]
    image = torch.randn(3, 31, 27)
    assert fits_one_window(image.shape[1:], cfg.roi_size)
    assert not fits_one_window((41, 27), cfg.roi_size)
    sliding = window_logits(nets, image, cfg, device="cpu")
    batched = one_window_logits(nets, image[None], cfg)[0]
    assert batched.shape == sliding.shape == (2, 2, 31, 27)
    torch.testing.assert_close(batched, sliding, atol=1e-4, rtol=1e-4)

    def infer(x: torch.Tensor) -> torch.Tensor:
        return window_logits(nets, x, cfg, device="cpu")

    flips = FlipTTA(infer, spatial_axes=(0, 1))
    at_once = FlipTTA(
        infer, spatial_axes=(0, 1), infer_views=lambda v: one_window_logits(nets, v, cfg)
    )
    torch.testing.assert_close(at_once(image), flips(image), atol=1e-5, rtol=1e-5)


def test_cli_export_and_predict_on_a_runtime(
    exported_folders: dict[str, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    scans = tmp_path / "scans"
    scans.mkdir()
    volume = _volume_3d()
    nib.save(nib.Nifti1Image(volume.array[0], volume.affine), scans / "odd.nii.gz")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "predict",
            str(scans),
            "--model",
            str(exported_folders["3d"]),
            "--out",
            str(out),
            "--runtime",
            "openvino",
            "--no-report",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "runtime openvino" in result.output
    run = json.loads((out / "run.json").read_text())
    assert run["models"][0]["runtime"] == "openvino"
    result = runner.invoke(
        app,
        [
            "predict",
            str(scans),
            "--model",
            str(exported_folders["3d"]),
            "--out",
            str(tmp_path / "o2"),
            "--runtime",
            "fast",
        ],
    )
    assert result.exit_code != 0 and "runtime 'fast': use auto, torch" in result.output
    result = runner.invoke(app, ["export", str(exported_folders["3d"]), "--int8"])
    assert result.exit_code != 0 and "--int8 needs --calibration DATA" in result.output
    result = runner.invoke(app, ["export", str(exported_folders["3d"]), "--format", "tflite"])
    assert result.exit_code != 0 and "--format tflite: use onnx and/or openvino" in result.output


def test_an_export_replaces_the_earlier_one(
    exported_folders: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "again"
    shutil.copytree(exported_folders["2d"], copy)
    result = export_model(copy, formats=["onnx"])
    assert [(e.runtime, e.precision) for e in result.entries] == [("onnx", "fp32")]
    files = sorted(p.name for p in (copy / "fold_0").iterdir() if p.name.startswith("model."))
    assert files == ["model.onnx", "model.pt"]  # the int8 and OpenVINO files are gone
    assert len(ModelFolder.open(copy).manifest.exports) == 1
