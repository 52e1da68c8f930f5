"""Pipeline configs: every bundled YAML validates; bad configs fail with precise messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medres.errors import ConfigError
from medres.pipeline import PipelineConfig, load_pipeline, parse_pipeline
from tests.conftest import REPO

PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))

MINIMAL = {
    "name": "t",
    "dims": 3,
    "channels": ["ct"],
    "labels": ["background", "lesion"],
    "lesion_labels": ["lesion"],
    "model": {"name": "res_unet"},
    "training": {"patch_size": [32, 32, 16]},
}


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_bundled_pipelines_validate(path: Path) -> None:
    cfg = load_pipeline(path)
    assert cfg.name == path.stem
    assert len(cfg.roi_size) == cfg.dims
    # the resolved YAML (as saved in model folders) reads back to the same config
    assert parse_pipeline(yaml.safe_load(cfg.to_yaml())) == cfg


def test_minimal_config_fills_defaults() -> None:
    cfg = parse_pipeline(MINIMAL)
    assert cfg.roi_size == (32, 32, 16)
    assert cfg.lesion_indices == (1,)
    assert cfg.training.folds == 3 and cfg.inference.overlap == 0.5


def _with(path: str, value: object) -> dict[str, object]:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("trainig", {}, r"trainig: unknown key"),
        ("training.batchsize", 4, r"training.batchsize: unknown key"),
        ("dims", 4, r"dims: Input should be 2 or 3"),
        ("training.patch_size", [32, 32], r"training.patch_size has 2 values but dims is 3"),
        ("lesion_labels", ["tumour"], r"lesion_labels \['tumour'\] are not in labels"),
        ("lesion_labels", ["background"], r"label 0 is the background"),
        ("preprocessing.intensity", {"kind": "ct_window"}, r"needs window"),
        ("preprocessing.intensity", {"kind": "hu"}, r"intensity.kind: Input should be"),
        ("preprocessing.orientation", "RAR", r"one of each"),
        ("label_map", {1: 5}, r"label_map 1: 5: target must be a label index 0..1"),
        ("training.optimizer.lr", -1, r"training.optimizer.lr: Input should be greater than 0"),
        ("augmentation.flip_axes", [3], r"flip_axes \[3\]: axes are 0..2"),
        ("inference.overlap", 1.0, r"inference.overlap: Input should be less than 1"),
    ],
    ids=[
        "unknown-top-key",
        "unknown-nested-key",
        "dims",
        "patch-length",
        "lesion-not-a-label",
        "background-lesion",
        "window-missing",
        "bad-intensity-kind",
        "bad-orientation",
        "label-map-target",
        "negative-lr",
        "flip-axis",
        "overlap",
    ],
)
def test_bad_values_are_named(path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(_with(path, value), source="my.yaml")


def test_missing_key_and_file_errors(tmp_path: Path) -> None:
    data = dict(MINIMAL)
    del data["model"]
    with pytest.raises(ConfigError, match=r"my.yaml: invalid pipeline config:\n  model: required"):
        parse_pipeline(data, source="my.yaml")
    with pytest.raises(ConfigError, match=r"nope.yaml: pipeline file not found"):
        load_pipeline(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load_pipeline(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"a pipeline must be a mapping"):
        load_pipeline(listed)


def test_config_is_frozen() -> None:
    cfg = parse_pipeline(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        cfg.dims = 2  # type: ignore[misc]
    assert isinstance(cfg, PipelineConfig)
