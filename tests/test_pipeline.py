"""Pipeline configs: every bundled YAML validates; bad configs fail with precise messages.

Hostile files (pipes, devices, huge files, alias bombs, recursive aliases) and configs that
ask for absurd sizes end as one ConfigError line naming the file, and a property-based
test throws random YAML and mutations of a valid pipeline at :func:`load_pipeline`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medres.errors import ConfigError
from medres.limits import MAX_CONFIG_BYTES
from medres.pipeline import PipelineConfig, load_pipeline, parse_pipeline, parse_yaml
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
        (
            "inference.overlap",
            0.99,
            r"inference.overlap: 0.99 is above 0.9: each axis would need 100x as many windows",
        ),
        ("inference.overlap", -0.1, r"inference.overlap: Input should be greater than or equal"),
        ("inference.threshold", 1.0, r"inference.threshold: Input should be less than 1"),
        ("inference.threshold", 0.0, r"inference.threshold: Input should be greater than 0"),
        ("inference.threshold", float("nan"), r"inference.threshold: Input should be a finite"),
        ("postprocessing.min_lesion_size", float("inf"), r"min_lesion_size: .* finite number"),
        (
            "model.params",
            {"channels": [8] * 17},
            r"model.params.channels: 17 values, at most 16 are accepted",
        ),
        (
            "model.params",
            {"channels": [8, 16, 5000]},
            r"model.params.channels: 5000 is outside 0..4096",
        ),
        ("model.params", {"strides": [2, 64]}, r"model.params.strides: 64 is outside 0..8"),
        ("model.params", {"channels": [[8, 8]]}, r"model.params.channels: lists of lists"),
        ("model.params", {"norm": {"a": 1}}, r"model.params.norm: a dict is not accepted"),
        ("model.params", {"dropout": float("nan")}, r"model.params.dropout: nan is not a finite"),
        ("model.params", {"norm": "x" * 100}, r"model.params.norm: text of 100 characters"),
        (
            "training.patch_size",
            [2000, 32, 16],
            r"training.patch_size: \[2000, 32, 16\]: every side must be <= 1024 voxels",
        ),
        (
            "training.patch_size",
            [1024, 1024, 64],
            r"training.patch_size: .*: 67108864 voxels per patch, above the 16777216",
        ),
        ("inference.roi_size", [0, 32, 16], r"inference.roi_size: \[0, 32, 16\]: every side"),
        ("training.batch_size", 10_000, r"training.batch_size: Input should be less than or"),
        ("inference.sw_batch_size", 1000, r"inference.sw_batch_size: Input should be less than"),
        (
            "preprocessing.target_spacing_mm",
            [1e-6, 1, 1],
            r"every entry must be between 0.01 and 100.0 mm",
        ),
        ("labels", ["background", *[f"l{i}" for i in range(300)]], r"labels: .*at most 256"),
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
        "overlap-0.99",
        "overlap-negative",
        "threshold-1",
        "threshold-0",
        "threshold-nan",
        "min-lesion-inf",
        "params-long-list",
        "params-huge-channel",
        "params-huge-stride",
        "params-nested-list",
        "params-dict",
        "params-nan",
        "params-long-text",
        "patch-side",
        "patch-voxels",
        "roi-zero",
        "batch-size",
        "sw-batch-size",
        "spacing-tiny",
        "too-many-labels",
    ],
)
def test_bad_values_are_named(path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(_with(path, value), source="my.yaml")


def test_missing_key_and_file_errors(tmp_path: Path) -> None:
    data = dict(MINIMAL)
    del data["model"]
    with pytest.raises(
        ConfigError, match=r"^my.yaml: invalid pipeline config: model: required key is missing$"
    ):
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


def test_many_problems_are_one_line() -> None:
    data = {**MINIMAL, **{f"bad{i}": i for i in range(8)}}
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(data, source="my.yaml")
    text = str(caught.value)
    assert "\n" not in text and text.endswith("; ... and 3 more")
    assert text.startswith("my.yaml: invalid pipeline config: bad0: unknown key")


def test_batch_voxels_are_capped() -> None:
    data = _with("training.batch_size", 256)
    data["training"]["patch_size"] = [256, 256, 16]  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"training: batch_size 256 x patch_size .* per batch"):
        parse_pipeline(data, source="my.yaml")
    data = _with("inference.sw_batch_size", 64)
    data["inference"]["roi_size"] = [256, 256, 64]  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"inference.sw_batch_size 64 x window .* per forward"):
        parse_pipeline(data, source="my.yaml")


# --- hostile files -------------------------------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    """``a0`` is 10 scalars; each next level lists the previous one 10 times (10^levels)."""
    lines = ["name: t", "dims: 3", "model:", "  name: res_unet", "  params:"]
    lines.append("    channels: &a0 [8, 8, 8, 8, 8, 8, 8, 8, 8, 8]")
    for i in range(1, levels):
        lines.append(f"    l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_it_is_built(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    assert path.stat().st_size < 1000  # 10^9 scalars once expanded
    with pytest.raises(
        ConfigError,
        match=r"bomb.yaml: refused: more than 100000 YAML nodes with aliases expanded",
    ):
        load_pipeline(path)
    # a few harmless aliases are still fine
    assert parse_yaml("a: &x [1, 2]\nb: *x\n", source="t.yaml") == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &a [1, *a]\n", r"refused: recursive alias at line 1"),
        ("a: &a {b: *a}\n", r"refused: recursive alias at line 1"),
        ("a: " + "[" * 40 + "]" * 40 + "\n", r"refused: nested more than 32 levels deep"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"not valid YAML: nested too deeply"),
        ("a: !!python/object/apply:os.system [ls]\n", r"not valid YAML: could not determine a"),
        ("a: 2021-02-30\n", r"not valid YAML: day is out of range for month"),
        ("a: 1" + "0" * 5000 + "\n", r"not valid YAML: an integer with thousands of digits"),
        ("--- a\n--- b\n", r"not valid YAML: but found another document \(line 2, column 1\)"),
        ("? [a]\n: b\n", r"not valid YAML: found unhashable key"),
        ("a: b: c\n", r"not valid YAML: mapping values are not allowed here \(line 1, column 5\)"),
    ],
    ids=[
        "recursive-list",
        "recursive-mapping",
        "deep",
        "very-deep",
        "python-tag",
        "bad-date",
        "huge-int",
        "two-documents",
        "unhashable-key",
        "syntax",
    ],
)
def test_hostile_yaml_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_pipeline(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_fifo_and_devices_are_never_opened(tmp_path: Path, no_open_of: set[str]) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    no_open_of.update({os.path.realpath(fifo), "/dev/zero"})
    with pytest.raises(ConfigError, match=r"fifo.yaml: pipeline file is a FIFO \(named pipe\)"):
        load_pipeline(fifo)
    with pytest.raises(
        ConfigError, match=r"zero.yaml: pipeline file is a character device, not a regular"
    ):
        load_pipeline(zero)
    with pytest.raises(ConfigError, match=r"pipeline file is a directory, not a regular file"):
        load_pipeline(tmp_path)
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "gone.yaml")
    with pytest.raises(ConfigError, match=r"dangling.yaml: pipeline file not found"):
        load_pipeline(dangling)


def test_large_and_binary_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match=r"big.yaml: pipeline file is 1048577 bytes, above the"):
        load_pipeline(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"binary.yaml: not UTF-8 text \(byte 0xff at offset 6\)"):
        load_pipeline(binary)


# --- property-based: random YAML and mutations of a valid pipeline ---------------------

_VALID = (REPO / "models" / "demo_ct_3d" / "pipeline.yaml").read_text()
_LINES = _VALID.splitlines()
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats()
    | st.text(max_size=12)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
_NOISE = st.text(alphabet=":&*[]{}-!#|>'\"%@`?,\t\n ab01.~\\", min_size=1, max_size=8)


@st.composite
def _mutated_pipeline(draw: st.DrawFn) -> str:
    lines = list(_LINES)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        action = draw(
            st.sampled_from(["delete", "duplicate", "noise", "value", "anchor", "alias", "bomb"])
        )
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "noise":
            line = lines[i]
            at = draw(st.integers(min_value=0, max_value=len(line)))
            lines[i] = line[:at] + draw(_NOISE) + line[at:]
        elif action == "value" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            value = yaml.safe_dump(draw(_VALUES), default_flow_style=True).strip()
            value = value.removesuffix("...").strip()
            lines[i] = f"{key}: {value}"
        elif action == "anchor" and lines[i].rstrip().endswith(":"):
            lines[i] = lines[i].rstrip() + " &x"
        elif action == "alias" and ":" in lines[i]:
            lines[i] = lines[i].split(":", 1)[0] + ": *x"
        elif action == "bomb":
            lines.insert(i, "x: &x [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]")
            lines.insert(i + 1, "y: &y [*x, *x, *x, *x, *x, *x, *x, *x, *x, *x]")
        if not lines:
            break
    return "\n".join(lines) + "\n"


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.one_of(
        _VALUES.map(lambda v: yaml.safe_dump(v)),
        st.text(max_size=60),
        _mutated_pipeline(),
    )
)
def test_random_yaml_loads_or_raises_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "random.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_pipeline(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        return
    assert isinstance(cfg, PipelineConfig)
