"""The choices a pipeline config names: ``StrEnum`` members that also accept plain strings."""

from __future__ import annotations

from medres.types import StrEnum


class IntensityKind(StrEnum):
    """How image intensities are normalised before the network sees them."""

    #: Clip to a window (CT HU) and scale to [0, 1].
    CT_WINDOW = "ct_window"
    #: Subtract the mean and divide by the standard deviation, per channel.
    ZSCORE = "zscore"
    #: Clip each channel to its 0.5-99.5 percentiles and scale to [0, 1].
    PERCENTILE = "percentile"
    #: Leave values as they are (already normalised data).
    NONE = "none"


class LossName(StrEnum):
    """Training loss (all from MONAI, softmax over the label channels)."""

    DICE_CE = "dice_ce"
    DICE = "dice"
    DICE_FOCAL = "dice_focal"


class ScheduleName(StrEnum):
    """Learning-rate schedule over the training budget (epochs or minutes, whichever ends first)."""

    POLY = "poly"
    COSINE = "cosine"
    CONSTANT = "constant"


class EnsembleMode(StrEnum):
    """How the members of a model folder are combined at prediction time."""

    MEAN = "mean"
    VOTE = "vote"


class TaskKind(StrEnum):
    """What a pipeline's networks learn: lesion masks or lesion boxes."""

    #: A label per voxel (a segmentation network, lesions are its connected components).
    SEGMENTATION = "segmentation"
    #: A box and a score per lesion (a RetinaNet-style detector).
    DETECTION = "detection"


class BoxLoss(StrEnum):
    """The detector's box regression loss (MONAI's RetinaNetDetector)."""

    #: Generalised IoU of the decoded boxes.
    GIOU = "giou"
    #: Smooth L1 of the encoded box offsets.
    SMOOTH_L1 = "smooth_l1"


#: Registry names of the detection networks (:mod:`medres.models.registry`).
DETECTION_MODELS = ("retinanet",)
