"""Model registry: explicit names -> builders of 2D/3D residual segmentation networks.

Every builder takes ``dims`` (2 or 3), ``in_channels`` and ``out_channels`` from the
pipeline and its own keyword parameters from ``model.params``. Unknown or ill-typed
parameters are refused with the list of accepted ones.

=================  ==============================================================
name               network
=================  ==============================================================
``res_unet``       MONAI ``UNet`` with residual units (Kerfoot et al. 2018)
``segresnet``      MONAI ``SegResNet`` (Myronenko 2018), residual encoder-decoder
``resenc_unet``    MONAI ``DynUNet`` with residual blocks (nnU-Net ResEnc style)
``retinanet``      residual RetinaNet lesion detector (``task: detection``; MONAI
                   ResNet + feature pyramid + RetinaNet heads, ATSS matching, see
                   :mod:`medres.models.detection`)
=================  ==============================================================

A detector's ``out_channels`` is its number of lesion classes (the pipeline's
``lesion_labels``); its anchors, matching and box settings come from the pipeline's
``detection`` section.

Example:
    >>> net = build_model("res_unet", dims=2, in_channels=3, out_channels=2,
    ...                   params={"channels": [8, 16, 32], "strides": [2, 2]})
    >>> sum(p.numel() for p in net.parameters()) > 0
    True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from medres.errors import ConfigError
from medres.pipeline import PipelineConfig

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[..., "nn.Module"]


def _res_unet(
    *,
    dims: int,
    in_channels: int,
    out_channels: int,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 2,
    kernel_size: int = 3,
    norm: str = "instance",
    dropout: float = 0.0,
) -> nn.Module:
    from monai.networks.nets import UNet

    if len(strides) != len(channels) - 1:
        raise ConfigError(
            f"res_unet: strides needs len(channels) - 1 = {len(channels) - 1} values, "
            f"got {len(strides)}"
        )
    net: nn.Module = UNet(
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        kernel_size=kernel_size,
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )
    return net


def _segresnet(
    *,
    dims: int,
    in_channels: int,
    out_channels: int,
    init_filters: int = 16,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout_prob: float | None = None,
    norm: str = "instance",
) -> nn.Module:
    from monai.networks.nets import SegResNet

    if len(blocks_up) != len(blocks_down) - 1:
        raise ConfigError(
            f"segresnet: blocks_up needs len(blocks_down) - 1 = {len(blocks_down) - 1} values"
        )
    net: nn.Module = SegResNet(
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
        dropout_prob=dropout_prob,
        norm=norm,
    )
    return net


def _resenc_unet(
    *,
    dims: int,
    in_channels: int,
    out_channels: int,
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] | None = None,
    kernel_size: int = 3,
    norm: str = "instance",
    dropout: float | None = None,
) -> nn.Module:
    from monai.networks.nets import DynUNet

    n = len(filters)
    stage_strides: list[int] = list(strides) if strides is not None else [1] + [2] * (n - 1)
    if len(stage_strides) != n:
        raise ConfigError(
            f"resenc_unet: strides needs one value per stage ({n}), got {len(stage_strides)}"
        )
    net: nn.Module = DynUNet(
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[kernel_size] * n,
        strides=stage_strides,
        upsample_kernel_size=stage_strides[1:],
        filters=list(filters),
        norm_name=norm,
        dropout=dropout,
        res_block=True,
    )
    return net


def _retinanet(
    *,
    dims: int,
    in_channels: int,
    out_channels: int,
    layers: Sequence[int] = (1, 1, 1, 1),
    block_inplanes: Sequence[int] = (16, 32, 64, 128),
    returned_layers: Sequence[int] = (1, 2),
    fpn_channels: int = 32,
    **detection: Any,
) -> nn.Module:
    from medres.models.detection import build_detector

    return build_detector(
        dims=dims,
        in_channels=in_channels,
        n_classes=out_channels,
        layers=layers,
        block_inplanes=block_inplanes,
        returned_layers=returned_layers,
        fpn_channels=fpn_channels,
        **detection,
    )


MODELS: dict[str, Builder] = {
    "res_unet": _res_unet,
    "segresnet": _segresnet,
    "resenc_unet": _resenc_unet,
    "retinanet": _retinanet,
}

_FIXED = ("dims", "in_channels", "out_channels")


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def model_parameters(name: str) -> list[str]:
    """The parameters ``model.params`` may set for ``name``."""
    builder = _builder(name)
    return [
        p.name
        for p in inspect.signature(builder).parameters.values()
        if p.name not in _FIXED and p.kind != inspect.Parameter.VAR_KEYWORD
    ]


def _builder(name: str) -> Builder:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(
            f"model {name!r} is not registered; choose one of {', '.join(model_names())}"
        ) from None


def build_model(
    name: str, *, dims: int, in_channels: int, out_channels: int, params: dict[str, Any]
) -> nn.Module:
    """Build a registered network.

    Args:
        name: Registry name (see the module table).
        dims: 2 or 3 spatial dimensions.
        in_channels: Input channels (the pipeline's ``channels``).
        out_channels: Output channels (the pipeline's ``labels``, background included).
        params: The builder's keyword parameters.

    Raises:
        ConfigError: Unknown name, unknown parameter, or parameters MONAI rejects.
    """
    builder = _builder(name)
    allowed = model_parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"model {name!r}: unknown parameter(s) {unknown}; accepted: {', '.join(allowed)}"
        )
    try:
        return builder(dims=dims, in_channels=in_channels, out_channels=out_channels, **params)
    except ConfigError:
        raise
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"model {name!r} with params {params}: {exc}") from None


def detector_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`~medres.models.detection.build_detector` that a
    detection pipeline's ``detection`` section sets."""
    det = cfg.detection
    if det is None:
        raise ConfigError(f"{cfg.name}: not a detection pipeline (task: {cfg.task})")
    return {
        "anchor_shapes": [list(a) for a in det.anchor_shapes] if det.anchor_shapes else None,
        "atss_candidates": det.atss_candidates,
        "negatives_per_image": det.negatives_per_image,
        "positive_fraction": det.positive_fraction,
        "box_loss": str(det.box_loss),
        "score_threshold": det.score_threshold,
        "nms_iou": det.nms_iou,
        "detections_per_image": det.detections_per_image,
    }


def build_pipeline_network(cfg: PipelineConfig) -> nn.Module:
    """The (untrained) network a pipeline describes: its model, channels and labels
    (a detector: its lesion classes and its ``detection`` settings)."""
    if cfg.is_detection:
        params = dict(cfg.model.params)
        unknown = sorted(set(params) - set(model_parameters(cfg.model.name)))
        if unknown:
            raise ConfigError(
                f"model {cfg.model.name!r}: unknown parameter(s) {unknown}; accepted: "
                f"{', '.join(model_parameters(cfg.model.name))}"
            )
        try:
            return _builder(cfg.model.name)(
                dims=cfg.dims,
                in_channels=len(cfg.channels),
                out_channels=len(cfg.lesion_labels),
                **params,
                **detector_settings(cfg),
            )
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"model {cfg.model.name!r} with params {params}: {exc}") from None
    return build_model(
        cfg.model.name,
        dims=cfg.dims,
        in_channels=len(cfg.channels),
        out_channels=len(cfg.labels),
        params=dict(cfg.model.params),
    )


def size_divisor(name: str, params: dict[str, Any]) -> int:
    """The factor every input side must be divisible by (product of the down-sampling strides)."""
    _builder(name)
    if name == "res_unet":
        strides = params.get("strides", (2, 2, 2))
    elif name == "segresnet":
        strides = [2] * (len(params.get("blocks_down", (1, 2, 2, 4))) - 1)
    elif name == "retinanet":  # stem and max-pool, the stages, the pyramid's extra level
        return int(2 ** (max(params.get("returned_layers", (1, 2))) + 2))
    else:
        filters = params.get("filters", (16, 32, 64, 128, 256))
        strides = params.get("strides") or [1] + [2] * (len(filters) - 1)
    divisor = 1
    for s in strides:
        divisor *= int(s)
    return divisor


__all__ = [
    "MODELS",
    "build_model",
    "build_pipeline_network",
    "detector_settings",
    "model_names",
    "model_parameters",
    "size_divisor",
]
