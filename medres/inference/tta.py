"""Flip test-time augmentation around any network inference (MONAI's style: the
wrapper takes the function that runs the network, and returns probabilities).

:class:`FlipTTA` averages the softmax of the prediction of the image and of every
combination of mirror images along the axes the model saw mirrored in training (each
prediction flipped back first). With no axes it is the plain softmax.

The network inference may return the logits of several members at once, ``(M, K, ...)``
(one pass of windows for every member, see
:func:`~medres.inference.sliding.window_logits`): the softmax is then over ``K`` and the
result ``(M, K, ...)``. The probabilities stay on the device the logits come from (a GPU:
flips, softmax and sums run there); a flip whose windows had to be stitched in CPU
memory is added where the sum is.

Example:
    >>> import torch
    >>> tta = FlipTTA(lambda x: torch.stack([x[0], -x[0]]), spatial_axes=(0,))
    >>> tta(torch.zeros(1, 4, 3)).shape
    torch.Size([2, 4, 3])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class FlipTTA:
    """Mean probabilities over the image and its mirror images.

    Args:
        infer: Channel-first image ``(C, x, y[, z])`` -> logits ``(K, x, y[, z])`` on the
            same grid (the sliding-window inference of one network), or ``(M, K, ...)``
            for ``M`` networks.
        spatial_axes: Spatial axes (0 = x) to mirror along; every non-empty combination
            of them is one more prediction. Empty: no augmentation.
        infer_views: Optional: the image and all its mirror images at once, ``(V, C,
            ...)`` -> logits ``(V, K, ...)`` or ``(V, M, K, ...)`` (one network call per
            member for every view, when the image fits in one window); used instead of
            ``infer`` for the same result.
    """

    def __init__(
        self,
        infer: Callable[[torch.Tensor], torch.Tensor],
        *,
        spatial_axes: Sequence[int] = (),
        infer_views: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.infer = infer
        self.infer_views = infer_views
        axes = [axis + 1 for axis in spatial_axes]  # the tensors are channel-first
        self.flips = [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes of one (unflipped) prediction."""
        import torch

        logits = self.infer(image)
        return torch.softmax(logits, logits.ndim - image.ndim)  # K: 0, or 1 after M

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(K, ...)`` (or ``(M, K, ...)``) averaged over the image and its
        flips."""
        import torch

        if self.infer_views is not None:
            return self._all_views(image)
        probs = self.probabilities(image)
        if not self.flips:
            return probs
        shift = probs.ndim - image.ndim  # the member axis, when there is one
        for dims in self.flips:
            flipped = self.probabilities(torch.flip(image, dims))
            probs += torch.flip(flipped, tuple(d + shift for d in dims)).to(probs.device)
        return probs / (len(self.flips) + 1)

    def _all_views(self, image: torch.Tensor) -> torch.Tensor:
        """The same mean, with every view predicted in one batch by ``infer_views``."""
        import torch

        assert self.infer_views is not None
        views = torch.stack([image, *(torch.flip(image, dims) for dims in self.flips)])
        logits = self.infer_views(views)
        probs = torch.softmax(logits, logits.ndim - image.ndim)  # over K
        shift = probs.ndim - 1 - image.ndim  # the member axis, when there is one
        total = probs[0].clone()
        for n, dims in enumerate(self.flips, start=1):
            total += torch.flip(probs[n], tuple(d + shift for d in dims))
        return total / (len(self.flips) + 1)


__all__ = ["FlipTTA"]
