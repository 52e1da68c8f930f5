"""Setting up one member: a seeded network with its optimiser and loss, and its data.

:class:`_MemberModel` seeds from ``(training.seed + fold)`` before the network is built, so
its initial weights are reproducible; :class:`_MemberData` caches the fold's training cases
(deterministic transforms once), transforms its validation cases and weights the sampling
towards cases with a lesion. :func:`_epoch_seed`, :func:`_rank_seed` and
:func:`_epoch_indices` give each epoch (and each rank of a distributed run) its seeds and
its share of the epoch's weighted draw.
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
from medres.runtime import amp_dtype
from medres.training.datasets import TrainingCase


def _loss(cfg: PipelineConfig) -> Any:
    """The pipeline's MONAI loss (softmax over the label channels, background excluded);
    None for a detector, whose losses its own forward computes."""
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    if cfg.is_detection:
        return None
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


def _epoch_seed(cfg: PipelineConfig, fold: int, epoch: int) -> int:
    """The seed of one epoch of one member, from ``(training.seed, fold, epoch)``."""
    return (cfg.training.seed * 1_000_003 + fold * 10_007 + epoch) % (2**31 - 1)


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's augmentations in an epoch (``seed`` itself on rank 0)."""
    return (seed + rank * 7_919) % (2**31 - 1)


def _epoch_indices(
    weights: Sequence[float], *, samples: int, seed: int, rank: int, world_size: int
) -> list[int]:
    """The training cases one rank draws in an epoch, by weight, with replacement.

    One draw of ``samples * world_size`` indices from ``seed`` (the same on every rank),
    of which rank ``rank`` takes positions ``rank::world_size``: the ranks share one
    epoch's sample as DistributedSampler shares a data set. With one rank this is the
    draw of a WeightedRandomSampler of ``samples`` seeded with ``seed``.
    """
    import torch

    sampler = torch.utils.data.WeightedRandomSampler(
        list(weights),
        num_samples=samples * world_size,
        replacement=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return list(sampler)[rank::world_size]


@dataclass
class _MemberModel:
    """The network of one member with what trains it.

    On CUDA it trains with mixed precision in :func:`~medres.runtime.amp_dtype`'s dtype
    (bfloat16 where the GPU has it, else float16); the gradient scaler is enabled for
    float16 only (bfloat16 has float32's range and needs none). CPU trains in float32.
    """

    net: Any
    optimizer: Any
    scaler: Any
    loss_fn: Any
    device: str
    autocast_dtype: Any  # torch.dtype of autocast, or None without AMP

    @property
    def use_amp(self) -> bool:
        """Whether steps run under autocast."""
        return self.autocast_dtype is not None

    @classmethod
    def build(cls, cfg: PipelineConfig, *, fold: int, device: str) -> _MemberModel:
        """Seed from ``(training.seed + fold)``, then build the network, AdamW and the loss."""
        import torch

        tcfg = cfg.training
        dtype = amp_dtype(device)
        _seed_everything(tcfg.seed + fold)
        net = build_pipeline_network(cfg).to(device)
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=tcfg.optimizer.lr, weight_decay=tcfg.optimizer.weight_decay
        )
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        return cls(net, optimizer, scaler, _loss(cfg), device, dtype)


@dataclass
class _MemberData:
    """The cases of one fold: cached training data, validation items, sampling weights."""

    train_cases: list[TrainingCase]
    val_cases: list[TrainingCase]
    train_ds: Any  # monai CacheDataset with the training transforms
    val_items: list[dict[str, Any]]
    weights: npt.NDArray[np.float64]  # sampling weight per training case
    detection: bool = False  # a detector's data (instance maps, validated by CPM)

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
        load_validation: bool = True,
    ) -> _MemberData:
        """Cache the training cases, transform the validation cases, weight the sampling.

        Cases with a lesion are drawn ``training.positive_fraction`` of the time (when
        there are cases with and without one). With ``load_validation`` False (the ranks
        of a distributed run that do not validate) ``val_items`` stays empty while
        ``val_cases`` still lists the held-out cases.

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
            val_items = (
                list(Dataset([c.record() for c in val_cases], transform=validation_transforms(cfg)))
                if load_validation
                else []
            )
        positive = np.array([c.case_id in lesion_cases for c in train_cases])
        weights = np.ones(len(train_cases))
        if positive.any() and (~positive).any():
            p = cfg.training.positive_fraction
            weights[positive] = p / positive.sum()
            weights[~positive] = (1.0 - p) / (~positive).sum()
        return cls(train_cases, val_cases, train_ds, val_items, weights, cfg.is_detection)
