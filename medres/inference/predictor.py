"""Predict with the members of a model folder and map probabilities back to the scan's grid.

A scan record goes through the model's own preprocessing (the deterministic part of its
pipeline), each member predicts with Gaussian-blended sliding windows (optionally averaged
over mirrored copies, flip TTA), and the class probabilities are inverted through the
geometric steps (``Invertd``: crop, spacing, orientation) onto the input grid, so that
``probabilities.shape[1:] == scan.spatial_shape`` with the scan's own affine.

Example:
    >>> folder = ModelFolder.open("pipelines/models/demo_ct_3d")  # doctest: +SKIP
    >>> predictor = Predictor(folder, device="cpu")  # doctest: +SKIP
    >>> result = predictor.predict({"image": ["sample_data/ct_phantom.nii.gz"]})  # doctest: +SKIP
    >>> result.labels.shape  # (x, y, z) on the input grid  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.inference.sliding import predict_logits
from medres.models.folder import MemberInfo, ModelFolder


@dataclass
class Prediction:
    """Ensemble prediction of one scan on its own grid.

    Attributes:
        probabilities: Mean class probabilities ``(C, x, y[, z])`` float32.
        member_probabilities: Per member, the same (empty unless requested).
        labels: Argmax label map ``(x, y[, z])`` uint8.
        affine: RAS affine of the input grid.
    """

    probabilities: npt.NDArray[np.float32]
    member_probabilities: list[npt.NDArray[np.float32]]
    labels: npt.NDArray[np.uint8]
    affine: npt.NDArray[np.float64]


class Predictor:
    """Run a model folder's members on preprocessed scans and invert to the input grid."""

    def __init__(
        self,
        folder: ModelFolder,
        *,
        device: str = "cpu",
        members: Sequence[MemberInfo] | None = None,
        tta: bool | None = None,
    ) -> None:
        from medres.transforms.presets import validation_transforms

        self.folder = folder
        self.cfg = folder.pipeline
        self.device = device
        self.members = list(members if members is not None else folder.members)
        self.tta = self.cfg.inference.tta if tta is None else tta
        self.networks = [folder.load_network(m, device=device) for m in self.members]
        self.preprocess = validation_transforms(self.cfg, with_label=False)

    def _member_logits(self, net: Any, image: Any) -> Any:
        import torch

        logits = predict_logits(net, image, self.cfg, device=self.device)
        if not self.tta or not self.cfg.augmentation.flip_axes:
            return torch.softmax(logits, 0)
        probs = torch.softmax(logits, 0)
        # mirror only along the axes the model saw mirrored in training
        axes = [axis + 1 for axis in self.cfg.augmentation.flip_axes]
        flips = [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]
        for dims in flips:
            flipped = torch.flip(torch.as_tensor(image), dims)
            out = predict_logits(net, flipped, self.cfg, device=self.device)
            probs += torch.flip(torch.softmax(out, 0), dims)
        return probs / (len(flips) + 1)

    def predict(self, record: Mapping[str, Any], *, keep_members: bool = False) -> Prediction:
        """Predict one record (``{"image": [paths...]}``) with every member."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        from medres.transforms.presets import unwrap_transform_errors

        with unwrap_transform_errors():
            data = self.preprocess(dict(record))
        image = data["image"]
        inverter = Invertd(
            keys="pred", transform=self.preprocess, orig_keys="image", nearest_interp=False
        )
        total: npt.NDArray[np.float32] | None = None
        kept: list[npt.NDArray[np.float32]] = []
        for net in self.networks:
            probs = self._member_logits(net, image.as_tensor()).cpu()
            meta = {k: v for k, v in image.meta.items() if k != "affine"}
            pred = MetaTensor(probs, affine=image.affine, meta=meta)
            pred.applied_operations = list(image.applied_operations)
            if image.applied_operations:
                inverted = inverter({"image": image, "pred": pred})["pred"]
            else:  # nothing geometric was applied (2D slices at their own size)
                inverted = pred
            array = np.asarray(inverted.detach().cpu().numpy(), dtype=np.float32)
            if keep_members:
                kept.append(array)
            total = array if total is None else total + array
        assert total is not None
        mean = (total / np.float32(len(self.networks))).astype(np.float32, copy=False)
        original = np.asarray(image.meta["original_affine"], dtype=np.float64)
        return Prediction(
            probabilities=mean,
            member_probabilities=kept,
            labels=mean.argmax(0).astype(np.uint8),
            affine=original,
        )


__all__ = ["Prediction", "Predictor"]
