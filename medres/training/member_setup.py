"""Setting up one member: a seeded network with its optimiser and loss, and its data.

:class:`_MemberModel` seeds from ``(training.seed + fold)`` before the network is built, so
its initial weights are reproducible; :class:`_MemberData` caches the fold's training cases
(deterministic transforms once), transforms its validation cases and weights the sampling
towards cases with a lesion.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import TrainingError
from medres.models.registry import build_pipeline_network
from medres.pipeline import LossName, PipelineConfig
from medres.training.datasets import TrainingCase


def _loss(cfg: PipelineConfig) -> Any:
    """The pipeline's MONAI loss (softmax over the label channels, background excluded)."""
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    if cfg.training.loss == LossName.DICE_CE:
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    if cfg.training.loss == LossName.DICE_FOCAL:
        return DiceFocalLoss(to_onehot_y=True, softmax=True, include_background=False)
    return DiceLoss(to_onehot_y=True, softmax=True, include_background=False)


def _seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global random streams."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class _MemberModel:
    """The network of one member with what trains it (AMP on CUDA)."""

    net: Any
    optimizer: Any
    scaler: Any
    loss_fn: Any
    device: str
    use_amp: bool

    @classmethod
    def build(cls, cfg: PipelineConfig, *, fold: int, device: str) -> _MemberModel:
        """Seed from ``(training.seed + fold)``, then build the network, AdamW and the loss."""
        import torch

        tcfg = cfg.training
        use_amp = device.startswith("cuda")
        _seed_everything(tcfg.seed + fold)
        net = build_pipeline_network(cfg).to(device)
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=tcfg.optimizer.lr, weight_decay=tcfg.optimizer.weight_decay
        )
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        return cls(net, optimizer, scaler, _loss(cfg), device, use_amp)


@dataclass
class _MemberData:
    """The cases of one fold: cached training data, validation items, sampling weights."""

    train_cases: list[TrainingCase]
    val_cases: list[TrainingCase]
    train_ds: Any  # monai CacheDataset with the training transforms
    val_items: list[dict[str, Any]]
    weights: npt.NDArray[np.float64]  # sampling weight per training case

    @classmethod
    def load(
        cls,
        cfg: PipelineConfig,
        cases: Sequence[TrainingCase],
        train_groups: Sequence[str],
        val_groups: Sequence[str],
        lesion_cases: set[str],
        *,
        fold: int,
    ) -> _MemberData:
        """Cache the training cases, transform the validation cases, weight the sampling.

        Cases with a lesion are drawn ``training.positive_fraction`` of the time (when
        there are cases with and without one).

        Raises:
            TrainingError: The fold has no training cases.
        """
        from monai.data import CacheDataset, Dataset

        from medres.transforms.presets import (
            training_transforms,
            unwrap_transform_errors,
            validation_transforms,
        )

        train_set, val_set = set(train_groups), set(val_groups)
        train_cases = [c for c in cases if c.group in train_set]
        val_cases = [c for c in cases if c.group in val_set]
        if not train_cases:
            raise TrainingError(f"fold {fold}: no training cases")
        with warnings.catch_warnings(), unwrap_transform_errors():
            warnings.filterwarnings("ignore", message=".*Num foregrounds 0.*")
            train_ds = CacheDataset(
                [c.record() for c in train_cases],
                transform=training_transforms(cfg),
                cache_rate=1.0,
                num_workers=0,
                progress=False,
            )
            val_items = list(
                Dataset([c.record() for c in val_cases], transform=validation_transforms(cfg))
            )
        positive = np.array([c.case_id in lesion_cases for c in train_cases])
        weights = np.ones(len(train_cases))
        if positive.any() and (~positive).any():
            p = cfg.training.positive_fraction
            weights[positive] = p / positive.sum()
            weights[~positive] = (1.0 - p) / (~positive).sum()
        return cls(train_cases, val_cases, train_ds, val_items, weights)
