"""Model folders refuse hostile or damaged contents with one ModelError line naming the file.

Each test copies the bundled demo folder into ``tmp_path``, damages one thing, and checks
the message: tampered weights and manifests, files reaching outside the folder, pipes and
devices, non-finite weights, labels that contradict the weights, and a pipeline.yaml
edited after training. Two property-based tests throw random manifests and random
mutations of the valid one at :meth:`ModelFolder.open`.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medres.errors import ModelError
from medres.models.folder import MANIFEST, PIPELINE, WEIGHTS, ModelFolder, write_manifest
from medres.pipeline import load_pipeline
from tests.conftest import REPO

DEMO = REPO / "models" / "demo_ct_3d"
MARKER_NAME = "unpickled_marker"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A valid copy of the bundled demo model folder."""
    target = tmp_path / "model"
    shutil.copytree(DEMO, target, ignore=shutil.ignore_patterns("tensorboard", "*.csv"))
    return target


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    return data


def _write_manifest(folder: Path, data: object) -> None:
    (folder / MANIFEST).write_text(json.dumps(data, indent=2))


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    data = _manifest(folder)
    edit(data)
    _write_manifest(folder, data)


def _replace_weights(folder: Path, payload: bytes, member: int = 0) -> Path:
    """Write ``payload`` as a member's model.pt and record its sha256, as a forger would."""
    weights = folder / f"fold_{member}" / WEIGHTS
    weights.write_bytes(payload)
    _edit_manifest(
        folder, lambda m: m["members"][member].__setitem__("weights_sha256", _sha(weights))
    )
    return weights


def _torch_bytes(obj: object, tmp_path: Path) -> bytes:
    path = tmp_path / "saved.pt"
    torch.save(obj, path)
    return path.read_bytes()


def _demo_state() -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(
        DEMO / "fold_0" / WEIGHTS, map_location="cpu", weights_only=True
    )
    return state


def _load_all(folder: Path) -> ModelFolder:
    opened = ModelFolder.open(folder)
    for member in opened.members:
        opened.load_network(member)
    return opened


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: executing it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (builtins.open, (str(self.marker), "w"))


def test_the_pickle_payload_is_live(tmp_path: Path) -> None:
    """Sanity check of the payload used below: plain unpickling does run it."""
    marker = tmp_path / MARKER_NAME
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


# --- the valid folder -------------------------------------------------------------------


def test_valid_copy_opens_and_loads(folder: Path) -> None:
    opened = _load_all(folder)
    assert [m.name for m in opened.members] == ["fold_0", "fold_1", "fold_2"]
    assert opened.unverified == ()
    assert opened.manifest.pipeline_sha256 == _sha(folder / PIPELINE)


def test_bundled_manifest_records_its_pipeline() -> None:
    manifest = json.loads((DEMO / MANIFEST).read_text())
    assert manifest["pipeline_sha256"] == _sha(DEMO / PIPELINE)
    # readable: indent 2, as write_manifest writes it
    assert (DEMO / MANIFEST).read_text() == json.dumps(manifest, indent=2) + "\n"


# --- finding 1: tampered weights and manifests ------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda tmp, marker: pickle.dumps(_Payload(marker)),
            r"not a PyTorch weights file \(torch.save zip format expected\)",
        ),
        (
            lambda tmp, marker: _torch_bytes({"w": _Payload(marker)}, tmp),
            r"holds pickled objects other than tensors, which medres never unpickles",
        ),
        (lambda tmp, marker: os.urandom(4096), r"not a PyTorch weights file"),
        (lambda tmp, marker: b"", r"not a PyTorch weights file"),
        (
            lambda tmp, marker: (DEMO / "fold_0" / WEIGHTS).read_bytes()[:20_000],
            r"not a PyTorch weights file \(a damaged zip archive\)",
        ),
        (
            lambda tmp, marker: _torch_bytes({**_demo_state(), "epoch": 3}, tmp),
            r"entry 'epoch' is an int, not a tensor; model.pt must be a plain state dict",
        ),
        (
            lambda tmp, marker: _torch_bytes(torch.zeros(3), tmp),
            r"holds a Tensor, not a state dict of tensors",
        ),
        (
            lambda tmp, marker: _torch_bytes({"model": _demo_state(), "epoch": 3}, tmp),
            r"entry 'model' is an OrderedDict, not a tensor",
        ),
    ],
    ids=[
        "raw-pickle-payload",
        "torch-zip-pickle-payload",
        "garbage",
        "empty",
        "truncated-zip",
        "non-tensor-value",
        "bare-tensor",
        "training-checkpoint",
    ],
)
def test_damaged_weights_are_one_model_error(
    folder: Path,
    tmp_path: Path,
    make: Callable[[Path, Path], bytes],
    message: str,
) -> None:
    marker = tmp_path / MARKER_NAME
    weights = _replace_weights(folder, make(tmp_path, marker))
    opened = ModelFolder.open(folder)  # checksums match: the forger updated them
    with pytest.raises(ModelError, match=message) as caught:
        opened.load_network(opened.members[0])
    text = str(caught.value)
    assert text.startswith(f"{weights}: ") and "\n" not in text
    assert "weights_only" not in text and "retrain it or restore the file" in text
    assert not marker.exists(), "the pickle payload was executed"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["members"][0].pop("weights_sha256"), r"members.0.weights_sha256: required"),
        (lambda m: m["members"][0].pop("name"), r"members.0.name: required key is missing"),
        (
            lambda m: m["members"][0].__setitem__("fold", "zero"),
            r"members.0.fold: Input should be a valid integer",
        ),
        (lambda m: m["members"][0].__setitem__("fold", -1), r"members.0.fold: .*greater than"),
        (
            lambda m: m["members"][0].__setitem__("weights_sha256", "AB" * 32),
            r"members.0.weights_sha256: String should match pattern",
        ),
        (lambda m: m["members"][0].__setitem__("val_dice", "high"), r"members.0.val_dice"),
        (lambda m: m.__setitem__("members", "fold_0"), r"members: Input should be a valid tuple"),
        (lambda m: m["members"].append(m["members"][0]), r"\['fold_0'\] are listed more than once"),
        (lambda m: m.pop("labels"), r"labels: required key is missing"),
        (lambda m: m.__setitem__("format_version", 99), r"format_version: .*less than or equal"),
        (lambda m: m["members"][0].__setitem__("extra", 1), r"members.0.extra: unknown key"),
    ],
    ids=[
        "no-sha",
        "no-name",
        "fold-zero",
        "fold-negative",
        "sha-upper-case",
        "val-dice-text",
        "members-string",
        "member-twice",
        "no-labels",
        "newer-format",
        "member-extra-key",
    ],
)
def test_invalid_manifest_is_named(
    folder: Path, edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    _edit_manifest(folder, edit)
    with pytest.raises(ModelError, match=message) as caught:
        ModelFolder.open(folder)
    text = str(caught.value)
    assert text.startswith(f"{folder / MANIFEST}: invalid manifest: ") and "\n" not in text
    assert text.endswith("restore the manifest written by medres train")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", r"a manifest must be a JSON object, got a list"),
        ('"model"', r"a manifest must be a JSON object, got a string"),
        ('{"members": [', r"not valid JSON: Expecting value \(line 1, column 14\)"),
        ("[" * 50_000, r"not valid JSON: nested too deeply"),
        ('{"dims": 3, "dims": 3}', r"not valid JSON: key 'dims' appears twice"),
        ('{"dims": NaN}', r"not valid JSON: NaN is not a number JSON allows"),
        ('{"dims": 1' + "0" * 5000 + "}", r"not valid JSON: an integer with thousands of digits"),
        (" " * (2 << 20), r"manifest is 2097152 bytes, above the 1048576 byte limit"),
    ],
    ids=["list", "string", "truncated", "deep", "duplicate-key", "nan", "huge-int", "huge"],
)
def test_unreadable_manifest_is_named(folder: Path, text: str, message: str) -> None:
    (folder / MANIFEST).write_text(text)
    with pytest.raises(ModelError, match=message) as caught:
        ModelFolder.open(folder)
    assert str(caught.value).startswith(f"{folder / MANIFEST}: ")


def test_not_utf8_manifest(folder: Path) -> None:
    original = (folder / MANIFEST).read_bytes()
    (folder / MANIFEST).write_bytes(b"\xef\xbb\xbf" + original)  # a byte-order mark is fine
    assert ModelFolder.open(folder).members
    (folder / MANIFEST).write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ModelError, match=r"model.json: not UTF-8 text \(byte 0xff at offset 7\)"):
        ModelFolder.open(folder)


# --- finding 2: files outside the folder ------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../x", "/etc", "fold_0/../../..", "..", ".", "a\\b", ""], ids=str
)
def test_member_names_must_be_plain_folder_names(folder: Path, name: str) -> None:
    _edit_manifest(folder, lambda m: m["members"][0].__setitem__("name", name))
    with pytest.raises(ModelError, match=r"members.0.name: .* is not a plain folder name"):
        ModelFolder.open(folder)


def test_member_folder_linked_outside_is_refused(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.move(folder / "fold_1", outside)
    (folder / "fold_1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(
        ModelError, match=r"fold_1/model.pt: the member's weights file resolves to .*elsewhere"
    ) as caught:
        ModelFolder.open(folder)
    assert "outside the model folder" in str(caught.value)


@pytest.mark.parametrize("name", [MANIFEST, PIPELINE], ids=["manifest", "pipeline"])
def test_config_linked_outside_is_refused(folder: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / f"outside_{name}"
    shutil.move(folder / name, outside)
    (folder / name).symlink_to(outside)
    with pytest.raises(ModelError, match=rf"{name}: .* resolves to .*outside_.*, outside the"):
        ModelFolder.open(folder)


def test_links_inside_the_folder_are_fine(folder: Path) -> None:
    (folder / PIPELINE).rename(folder / "resolved.yaml")
    (folder / PIPELINE).symlink_to("resolved.yaml")
    assert ModelFolder.open(folder).unverified == ()


def test_weights_that_are_a_folder_are_refused(folder: Path) -> None:
    weights = folder / "fold_2" / WEIGHTS
    weights.unlink()
    weights.mkdir()
    with pytest.raises(ModelError, match=r"fold_2/model.pt: the member's weights file is not a"):
        ModelFolder.open(folder)


def test_missing_weights_are_named(folder: Path) -> None:
    (folder / "fold_2" / WEIGHTS).unlink()
    with pytest.raises(ModelError, match=r"fold_2/model.pt: the member's weights file is missing"):
        ModelFolder.open(folder)


def test_missing_folder_and_manifest(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "nope", tmp_path / "file.txt"):
        if path.name == "file.txt":
            path.write_text("x")
        with pytest.raises(ModelError, match=r"not a medres model folder \(no model.json\)"):
            ModelFolder.open(path)


# --- finding 3: pipes, devices and alias bombs -------------------------------------------


def test_fifo_pipeline_fails_fast(folder: Path, no_open_of: set[str]) -> None:
    pipe = folder / PIPELINE
    pipe.unlink()
    os.mkfifo(pipe)
    no_open_of.add(os.path.realpath(pipe))
    with pytest.raises(ModelError, match=r"pipeline.yaml: the pipeline config is not a regular"):
        ModelFolder.open(folder)


def test_pipeline_linked_to_dev_zero_fails_fast(folder: Path, no_open_of: set[str]) -> None:
    (folder / PIPELINE).unlink()
    (folder / PIPELINE).symlink_to("/dev/zero")
    no_open_of.add("/dev/zero")
    with pytest.raises(
        ModelError, match=r"pipeline.yaml: the pipeline config resolves to /dev/zero"
    ):
        ModelFolder.open(folder)


def test_fifo_manifest_fails_fast(folder: Path, no_open_of: set[str]) -> None:
    (folder / MANIFEST).unlink()
    os.mkfifo(folder / MANIFEST)
    no_open_of.add(os.path.realpath(folder / MANIFEST))
    with pytest.raises(ModelError, match=r"model.json: the manifest is not a regular file"):
        ModelFolder.open(folder)


def test_alias_bomb_in_the_folder_pipeline(folder: Path) -> None:
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (folder / PIPELINE).write_text("\n".join(lines) + "\n")
    with pytest.raises(ModelError, match=r"pipeline.yaml: refused: more than 100000 YAML nodes"):
        ModelFolder.open(folder)


# --- finding 4: nonsense that used to be accepted ----------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused(folder: Path, tmp_path: Path, bad: float) -> None:
    state = _demo_state()
    key = "model.2.0.conv.weight"
    state[key].view(-1)[:12] = bad
    weights = _replace_weights(folder, _torch_bytes(state, tmp_path))
    opened = ModelFolder.open(folder)
    with pytest.raises(ModelError) as caught:
        opened.load_network(opened.members[0])
    assert str(caught.value) == (
        f"{weights}: 12 non-finite values in '{key}'; the member is damaged: retrain it or "
        "restore the file"
    )


def _edit_pipeline(folder: Path, old: str, new: str, *, record: bool) -> None:
    path = folder / PIPELINE
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    if record:
        _edit_manifest(folder, lambda m: m.__setitem__("pipeline_sha256", _sha(path)))


def test_output_channels_must_match_the_labels(folder: Path) -> None:
    _edit_pipeline(
        folder, "- lesion\nlesion_labels", "- lesion\n- cyst\nlesion_labels", record=True
    )
    _edit_manifest(folder, lambda m: m.__setitem__("labels", ["background", "lesion", "cyst"]))
    opened = ModelFolder.open(folder)
    with pytest.raises(
        ModelError,
        match=r"fold_0/model.pt: the weights have 2 output channels but pipeline.yaml lists 3 "
        r"labels \['background', 'lesion', 'cyst'\]; the labels contradict the weights",
    ):
        opened.load_network(opened.members[0])


def test_other_architecture_is_named(folder: Path) -> None:
    _edit_pipeline(folder, "num_res_units: 1", "num_res_units: 2", record=True)
    opened = ModelFolder.open(folder)
    with pytest.raises(ModelError, match=r"weights do not fit the pipeline's model \(res_unet\)"):
        opened.load_network(opened.members[0])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("labels", ["background", "tumour"], r"labels differ: model.json has \['background', 'tu"),
        ("dims", 2, r"dims differ: model.json has 2, pipeline.yaml has 3"),
        ("channels", ["t1", "t2"], r"channels differ: model.json has \['t1', 't2'\]"),
        ("model", "segresnet", r"model differ: model.json has 'segresnet'"),
    ],
    ids=["labels", "dims", "channels", "model"],
)
def test_manifest_and_pipeline_must_agree(
    folder: Path, key: str, value: object, message: str
) -> None:
    _edit_manifest(folder, lambda m: m.__setitem__(key, value))
    with pytest.raises(ModelError, match=message) as caught:
        ModelFolder.open(folder)
    assert str(caught.value).startswith(f"{folder / PIPELINE}: does not match model.json: ")


# --- finding 5: the pipeline is covered by the manifest ----------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [("threshold: 0.5", "threshold: 0.999"), ("min_lesion_size: 30.0", "min_lesion_size: 100000")],
    ids=["threshold", "min-lesion-size"],
)
def test_pipeline_edited_after_training_is_refused(folder: Path, old: str, new: str) -> None:
    _edit_pipeline(folder, old, new, record=False)
    with pytest.raises(
        ModelError,
        match=r"pipeline.yaml: edited after training \(sha256 [0-9a-f]{12}\.\.\. where model.json "
        r"records e1b7d2e3b907\.\.\.\); restore the original pipeline.yaml, or retrain",
    ):
        ModelFolder.open(folder)
    # without verification it opens, and says what was not checked
    opened = ModelFolder.open(folder, verify=False)
    assert opened.unverified == (f"{folder}: checksums not verified (opened with verify=False)",)


def test_edited_labels_name_the_field(folder: Path) -> None:
    _edit_pipeline(
        folder,
        "- lesion\nlesion_labels:\n- lesion",
        "- nodule\nlesion_labels:\n- nodule",
        record=False,
    )
    with pytest.raises(ModelError, match=r"edited after training .*; labels differ: model.json"):
        ModelFolder.open(folder)


def test_old_manifest_without_pipeline_checksum_is_flagged(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _edit_manifest(folder, lambda m: m.pop("pipeline_sha256"))
    with caplog.at_level(logging.WARNING, logger="medres.models.folder"):
        opened = ModelFolder.open(folder)
    expected = (
        f"{folder / PIPELINE}: not verified: model.json has no pipeline_sha256 (written by an "
        "older medres); check its settings by hand, or retrain to record it"
    )
    assert opened.unverified == (expected,)
    assert [r.getMessage() for r in caplog.records] == [expected]


def test_write_manifest_records_the_pipeline(folder: Path) -> None:
    members = [
        {k: m[k] for k in ("name", "fold", "val_dice", "summary")}
        for m in _manifest(folder)["members"]
    ]
    cfg = load_pipeline(folder / PIPELINE)
    (folder / MANIFEST).unlink()
    write_manifest(folder, cfg, members, extra={"training": {"device": "cpu"}})
    text = (folder / MANIFEST).read_text()
    written = json.loads(text)
    assert written["pipeline_sha256"] == _sha(folder / PIPELINE)
    assert text == json.dumps(written, indent=2) + "\n"
    assert ModelFolder.open(folder).manifest.model_extra == {"training": {"device": "cpu"}}
    # a pipeline.yaml that is not the config being recorded is refused
    _edit_pipeline(folder, "threshold: 0.5", "threshold: 0.6", record=False)
    with pytest.raises(ModelError, match=r"pipeline.yaml: holds another config than the one"):
        write_manifest(folder, cfg, members)


# --- property-based: random and mutated manifests ---------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["../", "../../etc/passwd", "/abs", "fold_0", "fold_9", "a" * 64]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_NAMES = st.sampled_from(["background", "lesion", "nodule", "ct", "t1", ""])
_HEX = st.sampled_from(
    ["0" * 64, "a" * 64, "5c3adf83aa024955f7d2ab11b4e6aca1e9c05bd07171df4ed140c3946921ac4d"]
)
_PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "labels": st.lists(_NAMES, min_size=1, max_size=4),
    "channels": st.lists(_NAMES, min_size=1, max_size=3),
    "lesion_labels": st.lists(_NAMES, max_size=2),
    "dims": st.sampled_from([2, 3, 3]),
    "model": st.sampled_from(["res_unet", "segresnet", "unet"]),
    "pipeline": st.sampled_from(["demo_ct_3d", "other"]),
    "format_version": st.sampled_from([0, 1, 2]),
    "pipeline_sha256": _HEX | st.none(),
    "name": st.sampled_from(["fold_0", "fold_1", "fold_2", "fold_9", "tensorboard", "fold_0/."]),
    "fold": st.integers(min_value=-1, max_value=3),
    "weights_sha256": _HEX,
    "val_dice": st.none() | st.floats(min_value=-0.5, max_value=1.5),
    "summary": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    "members": st.lists(
        st.sampled_from(json.loads((DEMO / MANIFEST).read_text())["members"]), max_size=4
    ),
}
_TOP_KEYS = sorted(json.loads((DEMO / MANIFEST).read_text()))
_MEMBER_KEYS = ["name", "fold", "weights_sha256", "val_dice", "summary"]


@st.composite
def _mutated_manifest(draw: st.DrawFn) -> object:
    manifest = json.loads((DEMO / MANIFEST).read_text())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if draw(st.booleans()):
            target: dict[str, Any] = manifest
            key = draw(st.sampled_from([*_TOP_KEYS, "extra_key"]))
        else:
            members = manifest.get("members")
            if not isinstance(members, list) or not members:
                continue
            item = members[draw(st.integers(min_value=0, max_value=len(members) - 1))]
            if not isinstance(item, dict):
                continue
            target, key = item, draw(st.sampled_from([*_MEMBER_KEYS, "extra_key"]))
        action = draw(
            st.sampled_from(["delete", "replace", "wrong-type", "huge", "path", "plausible"])
        )
        if action == "plausible":  # the right type, possibly the wrong value: reaches later checks
            target[key] = draw(_PLAUSIBLE.get(key, _JSON))
        elif action == "delete":
            target.pop(key, None)
        elif action == "replace":
            target[key] = draw(_JSON)
        elif action == "wrong-type":
            old = target.get(key)
            target[key] = [old] if not isinstance(old, list) else {"x": old}
        elif action == "huge":
            target[key] = draw(st.sampled_from([10**400, -(10**20), 1e308, -1, 2**63]))
        else:
            target[key] = draw(
                st.sampled_from(["../fold_0", "../../x", "/etc/passwd", "fold_0/.."])
            )
    return manifest


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.one_of(_JSON, _mutated_manifest()))
def test_random_manifests_open_or_raise_model_error(folder: Path, data: object) -> None:
    (folder / MANIFEST).write_text(json.dumps(data, indent=2))
    try:
        opened = ModelFolder.open(folder)
    except ModelError as exc:
        assert str(folder) in str(exc) and "\n" not in str(exc)
        return
    assert opened.members and all((folder / m.name / WEIGHTS).is_file() for m in opened.members)
