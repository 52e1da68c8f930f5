"""The residual RetinaNet detector (MONAI parts, no torchvision): losses, gradients and
boxes in 2D and 3D on odd, anisotropic shapes; a detector that overfits one lesion finds
it; bad parameters are refused."""

from __future__ import annotations

import sys

import pytest
import torch
from monai.data.box_utils import box_iou

from medres.errors import ConfigError
from medres.models.detection import BOX_KEY, LABEL_KEY, build_detector

CASES = [
    (2, (64, 80), [10, 12, 30, 28], "smooth_l1"),
    (2, (64, 80), [10, 12, 30, 28], "giou"),
    (3, (48, 40, 24), [8, 10, 4, 24, 26, 14], "smooth_l1"),
]


def _image_with_box(shape: tuple[int, ...], box: list[int]) -> torch.Tensor:
    dims = len(shape)
    image = torch.zeros(1, 1, *shape)
    inside = tuple(slice(box[i], box[i + dims]) for i in range(dims))
    image[(0, 0, *inside)] = 1.0
    return image


@pytest.mark.parametrize(
    ("dims", "shape", "box", "box_loss"),
    CASES,
    ids=["2d_64x80", "2d_64x80_giou", "3d_48x40x24"],
)
def test_detector_learns_one_lesion_and_finds_its_box(
    dims: int, shape: tuple[int, ...], box: list[int], box_loss: str
) -> None:
    torch.manual_seed(0)
    detector = build_detector(dims=dims, in_channels=1, n_classes=1, box_loss=box_loss)
    image = _image_with_box(shape, box)
    truth = torch.tensor([box], dtype=torch.float32)
    targets = [{BOX_KEY: truth, LABEL_KEY: torch.tensor([0])}]
    optimizer = torch.optim.AdamW(detector.network.parameters(), lr=3e-3)
    detector.train()
    for _ in range(60):
        losses = detector(image, targets)
        loss = losses["classification"] + losses["box_regression"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    detector.eval()
    with torch.no_grad():
        found = detector(image)[0]
    assert found[BOX_KEY].shape[1] == 2 * dims
    best = int(found["labels_scores"].argmax())
    assert found["labels_scores"][best] > 0.5
    assert float(box_iou(found[BOX_KEY][best : best + 1], truth)[0, 0]) > 0.7
    assert "torchvision" not in sys.modules


def test_an_image_without_lesions_trains_on_negatives() -> None:
    detector = build_detector(dims=3, in_channels=2, n_classes=2)
    detector.train()
    empty = [{BOX_KEY: torch.zeros(0, 6), LABEL_KEY: torch.zeros(0, dtype=torch.int64)}]
    losses = detector(torch.randn(1, 2, 33, 30, 17), empty)
    total = losses["classification"] + losses["box_regression"]
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in detector.network.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"dims": 4}, "dims must be 2 or 3"),
        ({"layers": [1, 1]}, "layers needs 4 values"),
        ({"returned_layers": [2, 1]}, "rising"),
        ({"returned_layers": [1, 5]}, "stages are 1..4"),
        ({"anchor_shapes": [[8, 8, 8]]}, "each anchor shape needs 2 values"),
        ({"anchor_shapes": [[8, 0]]}, "edges must be positive"),
    ],
    ids=["dims", "layers", "order", "stage", "anchor_dims", "anchor_edge"],
)
def test_bad_parameters_are_refused(params: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"dims": 2, "in_channels": 1, "n_classes": 1, **params}
    with pytest.raises(ConfigError, match=message):
        build_detector(**arguments)  # type: ignore[arg-type]
