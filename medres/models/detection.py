"""Residual RetinaNet-style lesion detectors, 2D and 3D, built from MONAI parts only.

The network is a MONAI ``ResNet`` whose stages feed MONAI's ``FeaturePyramidNetwork``
(:class:`ResNetFPN`), under MONAI's ``RetinaNet`` heads; :class:`LesionDetector` is MONAI's
``RetinaNetDetector`` (anchors, box coder, ATSS matcher, hard-negative sampler, focal
loss, box NMS) with the two pieces that need torchvision replaced:

* MONAI's ``resnet_fpn_feature_extractor`` / ``BackboneWithFPN`` take a backbone's stages
  through torchvision's ``IntermediateLayerGetter``; :class:`ResNetFPN` runs the stages
  itself.
* ``RetinaNetDetector.compute_anchor_matched_idxs`` tests ``isinstance(matcher,
  torchvision Matcher)`` before it looks at the ATSS matcher, which raises without
  torchvision; :class:`LesionDetector` matches with ATSS directly.

So medres installs anywhere a CPU torch does (torchvision would pull a CUDA torch here).

Boxes follow MONAI's detection convention: ``(N, 2 * dims)`` in voxel coordinates of the
input array, mode ``xyzxyz`` (``xyxy`` in 2D): the first corner's indices along each axis,
then the second's.

Example:
    >>> detector = build_detector(dims=2, in_channels=1, n_classes=1)  # doctest: +SKIP
    >>> detector.eval()  # doctest: +SKIP
    >>> detector(torch.zeros(1, 1, 64, 64))  # doctest: +SKIP
    [{'boxes': tensor(...), 'labels': tensor(...), 'labels_scores': tensor(...)}]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from medres.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

#: Keys of the detector's targets and outputs (MONAI's defaults, stated once).
BOX_KEY = "boxes"
LABEL_KEY = "labels"


def _resnet_fpn_class() -> type:
    import torch
    from monai.networks.blocks.feature_pyramid_network import (
        FeaturePyramidNetwork,
        LastLevelMaxPool,
    )
    from torch import nn

    class ResNetFPN(nn.Module):
        """A MONAI ResNet's stages with a feature pyramid on top (no torchvision).

        Args:
            backbone: A ``monai.networks.nets.resnet.ResNet`` (its pooling and classifier
                are not used).
            spatial_dims: 2 or 3.
            returned_layers: Which stages (1..4) feed the pyramid, shallow first.
            stage_channels: Output channels of stages 1..4.
            out_channels: Channels of every pyramid level.
        """

        def __init__(
            self,
            backbone: nn.Module,
            *,
            spatial_dims: int,
            returned_layers: Sequence[int],
            stage_channels: Sequence[int],
            out_channels: int,
        ) -> None:
            super().__init__()
            self.backbone = backbone
            self.returned_layers = tuple(returned_layers)
            self.fpn = FeaturePyramidNetwork(
                spatial_dims=spatial_dims,
                in_channels_list=[stage_channels[k - 1] for k in self.returned_layers],
                out_channels=out_channels,
                extra_blocks=LastLevelMaxPool(spatial_dims),
            )
            #: what RetinaNet reads to size its heads
            self.out_channels = out_channels

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            """Pyramid levels, highest resolution first."""
            net: Any = self.backbone  # a MONAI ResNet: conv1, bn1, act, maxpool, layer1..4
            x = net.act(net.bn1(net.conv1(x)))
            if not net.no_max_pool:
                x = net.maxpool(x)
            stages: OrderedDict[str, torch.Tensor] = OrderedDict()
            for k in range(1, max(self.returned_layers) + 1):
                x = getattr(net, f"layer{k}")(x)
                if k in self.returned_layers:
                    stages[str(k)] = x
            levels: dict[str, torch.Tensor] = self.fpn(stages)
            return levels

    return ResNetFPN


def _detector_class() -> type:
    import torch
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    class LesionDetector(RetinaNetDetector):  # type: ignore[misc]
        """MONAI's RetinaNetDetector matching anchors with ATSS, without torchvision."""

        def compute_anchor_matched_idxs(
            self,
            anchors: list[torch.Tensor],
            targets: list[dict[str, torch.Tensor]],
            num_anchor_locs_per_level: Sequence[int],
        ) -> list[torch.Tensor]:
            """Per image, the truth box each anchor matches (-1: none), by ATSS."""
            matched = []
            for anchors_per_image, target in zip(anchors, targets, strict=True):
                boxes = target[self.target_box_key]
                if boxes.numel() == 0:
                    matched.append(
                        torch.full(
                            (anchors_per_image.size(0),),
                            -1,
                            dtype=torch.int64,
                            device=anchors_per_image.device,
                        )
                    )
                    continue
                _, idxs = self.proposal_matcher(
                    boxes.to(anchors_per_image.device),
                    anchors_per_image,
                    num_anchor_locs_per_level,
                    self.num_anchors_per_loc,
                )
                matched.append(idxs)
            return matched

    return LesionDetector


def _check(name: str, values: Sequence[Any], length: int | None = None) -> None:
    if length is not None and len(values) != length:
        raise ConfigError(f"retinanet: {name} needs {length} values, got {len(values)}")


def _anchor_shapes(
    dims: int,
    layers: Sequence[int],
    block_inplanes: Sequence[int],
    returned_layers: Sequence[int],
    anchor_shapes: Sequence[Sequence[float]] | None,
) -> list[list[float]]:
    """Check the parameters that must fit together; the anchor shapes (default 8 voxels).

    Raises:
        ConfigError: Names the parameter and what it needs.
    """
    if dims not in (2, 3):
        raise ConfigError(f"retinanet: dims must be 2 or 3, got {dims}")
    _check("layers", layers, 4)
    _check("block_inplanes", block_inplanes, 4)
    if not returned_layers or sorted(set(returned_layers)) != list(returned_layers):
        raise ConfigError(f"retinanet: returned_layers {list(returned_layers)}: give 1..4 rising")
    if not all(1 <= k <= 4 for k in returned_layers):
        raise ConfigError(f"retinanet: returned_layers {list(returned_layers)}: stages are 1..4")
    shapes = [list(map(float, a)) for a in (anchor_shapes or [[8.0] * dims])]
    for shape in shapes:
        _check("each anchor shape", shape, dims)
        if not all(edge > 0 for edge in shape):
            raise ConfigError(f"retinanet: anchor shape {shape}: edges must be positive")
    return shapes


def _features(
    dims: int,
    in_channels: int,
    layers: Sequence[int],
    block_inplanes: Sequence[int],
    returned_layers: Sequence[int],
    fpn_channels: int,
) -> nn.Module:
    """The MONAI ResNet (basic residual blocks, stride-2 stem) under its pyramid."""
    from monai.networks.nets import resnet

    backbone = resnet.ResNet(
        block="basic",
        layers=list(layers),
        block_inplanes=list(block_inplanes),
        spatial_dims=dims,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        num_classes=1,  # the classifier is not used
    )
    features: nn.Module = _resnet_fpn_class()(
        backbone,
        spatial_dims=dims,
        returned_layers=returned_layers,
        stage_channels=list(block_inplanes),
        out_channels=fpn_channels,
    )
    return features


def _set_box_loss(detector: Any, box_loss: str) -> None:
    """GIoU on decoded boxes, or smooth L1 on encoded offsets (MONAI's two set-ups)."""
    import torch
    from monai.losses.giou_loss import BoxGIoULoss

    if box_loss == "giou":
        detector.set_box_regression_loss(
            BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True
        )
    elif box_loss == "smooth_l1":
        detector.set_box_regression_loss(
            torch.nn.SmoothL1Loss(beta=1.0 / 9, reduction="mean"), encode_gt=True, decode_pred=False
        )
    else:
        raise ConfigError(f"retinanet: box_loss {box_loss!r}: use giou or smooth_l1")


def build_detector(
    *,
    dims: int,
    in_channels: int,
    n_classes: int,
    layers: Sequence[int] = (1, 1, 1, 1),
    block_inplanes: Sequence[int] = (16, 32, 64, 128),
    returned_layers: Sequence[int] = (1, 2),
    fpn_channels: int = 32,
    anchor_shapes: Sequence[Sequence[float]] | None = None,
    atss_candidates: int = 4,
    negatives_per_image: int = 64,
    positive_fraction: float = 0.3,
    box_loss: str = "smooth_l1",
    score_threshold: float = 0.05,
    nms_iou: float = 0.2,
    detections_per_image: int = 32,
) -> nn.Module:
    """A residual RetinaNet detector for ``dims``-D images of ``in_channels`` channels.

    Args:
        dims: 2 or 3.
        in_channels: Image channels.
        n_classes: Lesion classes (background is not a class).
        layers: Residual blocks per ResNet stage (4 stages).
        block_inplanes: Channels of the 4 stages.
        returned_layers: Stages that feed the pyramid (the pyramid adds one coarser level).
        fpn_channels: Channels of every pyramid level.
        anchor_shapes: The anchors of one location at the finest pyramid level, edge
            lengths in voxels (one tuple of ``dims`` values per anchor); each coarser
            level doubles them. Default: one anchor of 8 voxels per edge.
        atss_candidates: ATSS candidates per level and truth box.
        negatives_per_image: Anchors sampled per image for the classification loss.
        positive_fraction: Share of positives among them.
        box_loss: ``smooth_l1`` (of the encoded offsets, MONAI's default set-up) or
            ``giou`` (generalised IoU of the decoded boxes, MONAI's BoxGIoULoss; it can stall
            from a random start in 3D, where decoded boxes blow up to the whole image).
        score_threshold: Detections below this score are dropped.
        nms_iou: Boxes overlapping a better one by more than this IoU are dropped.
        detections_per_image: At most this many detections per image.

    Returns:
        A :class:`LesionDetector`: ``detector(images, targets)`` in train mode returns its
        losses (``classification``, ``box_regression``); in eval mode a list with, per
        image, ``boxes`` (voxel corners, ``xyzxyz``), ``labels`` and ``labels_scores``.

    Raises:
        ConfigError: Parameters that do not fit together.
    """
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    shapes = _anchor_shapes(dims, layers, block_inplanes, returned_layers, anchor_shapes)
    n_levels = len(returned_layers) + 1
    features = _features(dims, in_channels, layers, block_inplanes, returned_layers, fpn_channels)
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**level for level in range(n_levels)], base_anchor_shapes=shapes
    )
    network = RetinaNet(
        spatial_dims=dims,
        num_classes=n_classes,
        num_anchors=len(shapes),
        feature_extractor=features,
        size_divisible=2 ** (max(returned_layers) + 2),
    )
    detector = _detector_class()(network, anchors, spatial_dims=dims, num_classes=n_classes)
    detector.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=negatives_per_image, positive_fraction=positive_fraction
    )
    detector.set_target_keys(box_key=BOX_KEY, label_key=LABEL_KEY)
    _set_box_loss(detector, box_loss)
    detector.set_box_selector_parameters(
        score_thresh=score_threshold,
        nms_thresh=nms_iou,
        detections_per_img=detections_per_image,
    )
    result: nn.Module = detector
    return result


__all__ = ["BOX_KEY", "LABEL_KEY", "build_detector"]
