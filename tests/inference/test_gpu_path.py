"""The GPU path of prediction: its decisions (tested with device strings, no GPU needed),
the shared pass of several members and its CPU equivalence, and the out-of-memory
fallbacks (CUDA simulated). Tests marked ``needs_cuda`` compare GPU and CPU results and
skip without a GPU."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import monai.inferers
import numpy as np
import pytest
import torch

import medres.inference.predictor as predictor_module
import medres.inference.resample as resample
import medres.inference.sliding as sliding
from medres.errors import ModelError
from medres.inference.predictor import Ensemble
from medres.inference.resample import mapping_device, resample_to_grid
from medres.inference.sliding import (
    DevicePlan,
    device_plan,
    is_cuda,
    member_groups,
    members_per_pass,
    predict_logits,
    to_device,
    window_logits,
)
from medres.inference.tta import FlipTTA
from medres.io.nifti import read_nifti
from medres.models.folder import ModelFolder
from medres.pipeline import load_pipeline
from tests.conftest import REPO, SAMPLE_DATA, oblique_affine

DEMO = REPO / "models" / "demo_ct_3d"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _tiny_net(seed: int, in_channels: int = 1, classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, classes, 1),
    ).eval()


# --- decisions, from device strings ------------------------------------------------------


@pytest.mark.parametrize(
    "device, expected",
    [("cpu", False), ("cuda", True), ("cuda:1", True), ("cudax", False)],
    ids=["cpu", "cuda", "cuda-index", "not-a-cuda-name"],
)
def test_is_cuda(device: str, expected: bool) -> None:
    assert is_cuda(device) is expected


def test_the_cpu_plan_is_float32_stitched_in_place_and_unpinned() -> None:
    assert device_plan("cpu") == DevicePlan("cpu", amp_dtype=None, stitch_on=(None,), pin=False)


@pytest.mark.parametrize(
    "bf16, dtype",
    [(True, torch.bfloat16), (False, torch.float16)],
    ids=["ampere-or-later", "older-gpu"],
)
def test_the_cuda_plan(monkeypatch: pytest.MonkeyPatch, bf16: bool, dtype: Any) -> None:
    """bf16 autocast where the GPU has it (runtime.amp_dtype), GPU stitching first, pinning."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = device_plan("cuda:1")
    assert plan == DevicePlan("cuda:1", amp_dtype=dtype, stitch_on=("cuda:1", "cpu"), pin=True)


def test_no_pinning_without_a_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_plan("cuda").pin is False
    tensor = torch.zeros(3)
    assert to_device(tensor, "cpu") is tensor  # the CPU path copies nothing


@pytest.mark.parametrize(
    "device, free_bytes, expected",
    [("cpu", 0, 1), ("cuda", 10_000, 3), ("cuda", 500, 2), ("cuda", 300, 1), ("cuda", 100, 0)],
    ids=["cpu-one-each", "all-fit", "two-fit", "one-fits", "none-fit"],
)
def test_members_per_pass(device: str, free_bytes: int, expected: int) -> None:
    # half the free memory, less 50 bytes shared, in units of 100 bytes per member
    got = members_per_pass(device, 3, member_bytes=100, shared_bytes=50, free_bytes=free_bytes)
    assert got == expected


def test_member_groups_on_cpu_one_each_on_gpu_by_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    members = ["fold_0", "fold_1", "fold_2"]
    shape = (1, 10, 10, 10)  # 1000 voxels: 16 kB per member without TTA (2 classes)
    home, groups = member_groups(members, "cpu", image_shape=shape, n_classes=2, tta=False)
    assert home == "cpu" and groups == [["fold_0"], ["fold_1"], ["fold_2"]]
    per_member, shared = 4 * 1000 * 2 * 2, 4 * 1000 * 3
    monkeypatch.setattr(sliding, "cuda_free_bytes", lambda _: 2 * (shared + 2 * per_member))
    home, groups = member_groups(members, "cuda", image_shape=shape, n_classes=2, tta=False)
    assert home == "cuda" and groups == [["fold_0", "fold_1"], ["fold_2"]]
    # with TTA a member needs twice as much: one per pass
    home, groups = member_groups(members, "cuda", image_shape=shape, n_classes=2, tta=True)
    assert home == "cuda" and [len(g) for g in groups] == [1, 1, 1]
    # not even one member's outputs fit: they come to the host, one member at a time
    monkeypatch.setattr(sliding, "cuda_free_bytes", lambda _: 2 * shared)
    home, groups = member_groups(members, "cuda:0", image_shape=shape, n_classes=2, tta=False)
    assert home == "cpu" and [len(g) for g in groups] == [1, 1, 1]


@pytest.mark.parametrize(
    "device, n_values, expected",
    [
        ("cpu", 10**9, "cpu"),
        ("cuda:0", 256 * 256, "cpu"),
        ("cuda:0", 512 * 512 * 300, "cuda:0"),
    ],
    ids=["cpu", "gpu-small-slice", "gpu-large-ct"],
)
def test_mapping_device(device: str, n_values: int, expected: str) -> None:
    assert mapping_device(device, n_values) == expected


# --- several members in one pass of windows (runs on the CPU too) ------------------------


def test_one_pass_of_several_members_equals_their_own_passes() -> None:
    cfg = load_pipeline(REPO / "pipelines" / "demo_ct_3d.yaml")
    nets = [_tiny_net(seed) for seed in range(3)]
    image = torch.randn((1, 61, 50, 23), generator=torch.Generator().manual_seed(0))
    together = window_logits(nets, image, cfg, device="cpu")
    assert together.shape == (3, 2, 61, 50, 23) and together.dtype == torch.float32
    for index, net in enumerate(nets):
        alone = predict_logits(net, image, cfg, device="cpu")
        torch.testing.assert_close(together[index], alone, rtol=0, atol=1e-6)


def test_flip_tta_of_several_members_equals_each_members_own() -> None:
    nets = [_tiny_net(seed) for seed in range(2)]

    def one(net: torch.nn.Module) -> Any:
        return lambda x: net(x[None])[0]

    def both(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x[None])[0] for net in nets])

    image = torch.randn((1, 9, 7, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        joint = FlipTTA(both, spatial_axes=(0, 2))(image)
        assert joint.shape == (2, 2, 9, 7, 5)
        for index, net in enumerate(nets):
            own = FlipTTA(one(net), spatial_axes=(0, 2))(image)
            torch.testing.assert_close(joint[index], own, rtol=0, atol=1e-6)


def test_the_ensemble_gives_the_same_result_with_members_sharing_a_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The GPU's grouping, forced on the CPU: same labels, same probabilities."""
    image = read_nifti(SAMPLE_DATA / "ct_phantom.nii.gz")
    ensemble = Ensemble([ModelFolder.open(DEMO)], tta=True)
    alone = ensemble.predict(image, keep_members=True)
    stages: list[str] = []

    def one_pass(members: Any, device: str, **_: Any) -> tuple[str, list[Any]]:
        return device, [list(members)]

    monkeypatch.setattr(predictor_module, "member_groups", one_pass)
    shared = ensemble.predict(image, keep_members=True, on_stage=stages.append)
    assert "predict demo_ct_3d/fold_0+fold_1+fold_2" in stages
    np.testing.assert_array_equal(shared.label_map, alone.label_map)
    np.testing.assert_array_equal(shared.member_hits, alone.member_hits)
    np.testing.assert_allclose(shared.probabilities, alone.probabilities, atol=1e-3)
    for mine, theirs in zip(shared.member_label_maps, alone.member_label_maps, strict=True):
        np.testing.assert_array_equal(mine, theirs)


# --- out of GPU memory (simulated) -------------------------------------------------------


def _fake_windows(calls: list[Any], fail_on: tuple[str, ...]) -> Any:
    def fake(inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs["device"])
        if str(kwargs["device"]).startswith(fail_on):
            raise torch.cuda.OutOfMemoryError("simulated")
        return torch.zeros((1, 4, *inputs.shape[2:]))

    return fake


def test_two_members_fall_back_to_cpu_stitching_together(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_pipeline(REPO / "pipelines" / "demo_ct_3d.yaml")
    calls: list[Any] = []
    monkeypatch.setattr(monai.inferers, "sliding_window_inference", _fake_windows(calls, ("cuda",)))
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)  # no CUDA here
    with warnings.catch_warnings():  # autocast warns that this torch has no CUDA
        warnings.simplefilter("ignore", UserWarning)
        logits = window_logits(
            [torch.nn.Identity()] * 2, torch.zeros((1, 6, 5, 4)), cfg, device="cuda"
        )
    assert calls == ["cuda", "cpu"]
    assert logits.shape == (2, 2, 6, 5, 4) and logits.device.type == "cpu"


def test_out_of_memory_on_both_attempts_says_what_to_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = load_pipeline(REPO / "pipelines" / "demo_ct_3d.yaml")
    calls: list[Any] = []
    fake = _fake_windows(calls, ("cuda", "cpu"))
    monkeypatch.setattr(monai.inferers, "sliding_window_inference", fake)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ModelError, match=r"cuda:0: out of GPU memory .*sw_batch_size"):
            window_logits([torch.nn.Identity()], torch.zeros((1, 6, 5, 4)), cfg, device="cuda:0")
    assert calls == ["cuda:0", "cpu"]


def test_mapping_falls_back_to_the_cpu_when_the_gpu_is_short(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(3)
    source = rng.random((1, 12, 10, 8)).astype(np.float32)
    source_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    target_affine = np.diag([0.9, 1.1, 1.3, 1.0])
    expected = resample_to_grid(source, source_affine, target_affine, (25, 19, 17))
    devices: list[str] = []
    real = resample._resample_separable

    def separable(*args: Any, device: str = "cpu", **kwargs: Any) -> None:
        devices.append(device)
        if device != "cpu":
            raise torch.cuda.OutOfMemoryError("simulated")
        real(*args, device=device, **kwargs)

    monkeypatch.setattr(resample, "_resample_separable", separable)
    monkeypatch.setattr(resample, "GPU_MAPPING_MIN_VALUES", 1)
    with caplog.at_level(logging.WARNING, logger="medres.inference.resample"):
        got = resample_to_grid(source, source_affine, target_affine, (25, 19, 17), device="cuda")
    assert devices == ["cuda", "cpu"]
    np.testing.assert_array_equal(got, expected)
    assert "GPU memory is short" in caplog.text


def test_element_wise_coordinates_equal_the_matrix_product() -> None:
    """The GPU's TF32-proof coordinates (element-wise) against the CPU's matrix product."""
    lin = torch.tensor(oblique_affine((0.7, 1.1, 3.0))[:3, :3], dtype=torch.float32)
    grids = torch.meshgrid(
        *[torch.arange(n, dtype=torch.float32) for n in (40, 30, 20)], indexing="ij"
    )
    index = torch.stack(grids, dim=-1)
    product = resample._source_index(index, lin, on_cpu=True)
    element_wise = resample._source_index(index, lin, on_cpu=False)
    torch.testing.assert_close(element_wise, product, rtol=1e-6, atol=1e-4)


# --- on a GPU: the same results as on the CPU ----------------------------------------------


@needs_cuda
@pytest.mark.parametrize("nearest", [False, True], ids=["linear", "nearest"])
@pytest.mark.parametrize("separable", [True, False], ids=["per-axis", "general"])
def test_gpu_mapping_equals_the_cpu(
    monkeypatch: pytest.MonkeyPatch, nearest: bool, separable: bool
) -> None:
    rng = np.random.default_rng(4)
    dtype = np.uint32 if nearest else np.float32  # member bits of > 16 members
    source = rng.integers(0, 2**31, size=(2, 30, 26, 14)).astype(dtype)
    if not nearest:
        source = rng.random((2, 30, 26, 14)).astype(np.float32)
    source_affine = np.diag([-1.8, 1.8, 2.5, 1.0])
    source_affine[:3, 3] = [30.0, -12.0, 4.0]
    target_affine = oblique_affine((0.93, 0.71, 2.07), angle_deg=0.0 if separable else 17.0)
    target_affine[:3, 3] = [5.03, -10.07, 3.02]
    shape = (61, 57, 19)
    out = np.float16 if not nearest else dtype
    cpu = resample_to_grid(source, source_affine, target_affine, shape, nearest=nearest, dtype=out)
    monkeypatch.setattr(resample, "GPU_MAPPING_MIN_VALUES", 1)
    gpu = resample_to_grid(
        source, source_affine, target_affine, shape, nearest=nearest, dtype=out, device="cuda"
    )
    assert gpu.dtype == cpu.dtype
    if nearest:  # ties may break differently: almost every voxel identical
        assert float((gpu == cpu).mean()) > 0.999
    else:
        np.testing.assert_allclose(gpu.astype(np.float32), cpu.astype(np.float32), atol=2e-3)


@needs_cuda
def test_gpu_windows_equal_the_cpu_up_to_autocast() -> None:
    cfg = load_pipeline(REPO / "pipelines" / "demo_ct_3d.yaml")
    nets = [_tiny_net(seed) for seed in range(2)]
    image = torch.randn((1, 61, 50, 23), generator=torch.Generator().manual_seed(0))
    cpu = window_logits(nets, image, cfg, device="cpu")
    gpu = window_logits([n.to("cuda") for n in nets], image.to("cuda"), cfg, device="cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0.05, atol=0.05)


@needs_cuda
def test_gpu_ensemble_equals_the_cpu() -> None:
    image = read_nifti(SAMPLE_DATA / "ct_phantom.nii.gz")
    cpu = Ensemble([ModelFolder.open(DEMO)], tta=True).predict(image)
    gpu = Ensemble([ModelFolder.open(DEMO)], tta=True, device="cuda").predict(image)
    a, b = cpu.label_map > 0, gpu.label_map > 0
    dice = 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)
    assert dice >= 0.99
