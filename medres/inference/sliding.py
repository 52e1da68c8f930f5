"""Sliding-window inference of networks on one preprocessed image, on the CPU or a GPU.

Where the work runs is decided by small functions of the device string, so that the
decisions can be tested without a GPU:

* :func:`device_plan`: the autocast dtype (:func:`medres.runtime.amp_dtype`: bfloat16 on
  GPUs that have it, else float16, none on the CPU), where the windows are stitched
  (on the GPU first, CPU memory when the GPU runs out) and whether host-to-device copies
  go through pinned memory;
* :func:`members_per_pass` / :func:`member_groups`: how many members of one model folder
  share one pass of windows (each window is cut once and every member's network runs on
  it), and whether their outputs (and the image, flips, softmax, TTA sums) stay on the
  GPU or, when even one member's would take too much of its memory, come to the host as
  on the CPU;
* :func:`to_device`: the one host-to-device copy (pinned, asynchronous).

Copies back to the host are blocking (``.cpu()``): their results are read at once, and a
non-blocking device-to-host copy would need a synchronisation before every read. The
blocking copy is also what makes the caller's timings cover the GPU work.

Example:
    >>> device_plan("cpu")
    DevicePlan(device='cpu', amp_dtype=None, stitch_on=(None,), pin=False)
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from medres.pipeline import PipelineConfig

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Share of the GPU's free memory that the stitched outputs of one pass may take (the rest
#: is for the networks' activations, the TTA copies and fragmentation).
GPU_OUTPUT_SHARE = 0.5


def is_cuda(device: str) -> bool:
    """Whether ``device`` names a CUDA GPU (``cuda`` or ``cuda:N``)."""
    return device == "cuda" or device.startswith("cuda:")


@dataclass(frozen=True)
class DevicePlan:
    """Where and how the sliding windows of one image run.

    Attributes:
        device: Where the networks run (``cpu`` or ``cuda[:N]``).
        amp_dtype: Autocast dtype of the networks' forward passes; None: float32.
        stitch_on: Where the blended output is stitched, in the order tried: ``(None,)``
            on the CPU (where the windows run); the GPU, then CPU memory after an
            out-of-memory error.
        pin: Host-to-device copies go through pinned memory (non-blocking).
    """

    device: str
    amp_dtype: Any
    stitch_on: tuple[str | None, ...]
    pin: bool


def device_plan(device: str) -> DevicePlan:
    """The :class:`DevicePlan` for ``device`` (``cpu`` or ``cuda[:N]``, already resolved).

    A CUDA device string with no GPU visible (only in tests) gets no pinning: pinning
    needs a CUDA driver.
    """
    from medres.runtime import amp_dtype

    if not is_cuda(device):
        return DevicePlan(device=device, amp_dtype=None, stitch_on=(None,), pin=False)
    return DevicePlan(
        device=device, amp_dtype=amp_dtype(device), stitch_on=(device, "cpu"), pin=_pin(device)
    )


def _pin(device: str) -> bool:
    """Host-to-device copies to ``device`` go through pinned memory."""
    import torch

    return is_cuda(device) and bool(torch.cuda.is_available())


def to_device(tensor: Any, device: str) -> Any:
    """``tensor`` on ``device``; a CPU tensor goes to a GPU through pinned memory,
    asynchronously (later work on the default stream waits for the copy; PyTorch keeps
    the pinned block until the copy is done)."""
    if _pin(device) and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def release_cuda_memory(device: str) -> None:
    """Hand the GPU memory PyTorch caches but no tensor uses back to the driver (CUDA only;
    call it after the tensors are gone, e.g. outside an ``except`` block whose traceback
    still holds the failed attempt's tensors)."""
    if not is_cuda(device):
        return
    import torch

    gc.collect()  # frames of a failed attempt can sit in reference cycles
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def members_per_pass(
    device: str, n_members: int, *, member_bytes: int, shared_bytes: int, free_bytes: int
) -> int:
    """How many members run in one pass of windows: 1 on the CPU (each member's own pass,
    the path the CPU results are measured on); on a GPU as many as fit in
    :data:`GPU_OUTPUT_SHARE` of ``free_bytes``: 0 when not even one member's outputs fit
    (they then come to the host after stitching, as on the CPU).

    Args:
        device: ``cpu`` or ``cuda[:N]``.
        n_members: Members of the model folder.
        member_bytes: Device memory one more member's outputs take (stitched logits,
            probabilities, TTA copies).
        shared_bytes: Memory of the pass whatever its members (input, count map).
        free_bytes: Free device memory (:func:`cuda_free_bytes`).
    """
    if not is_cuda(device):
        return 1
    budget = free_bytes * GPU_OUTPUT_SHARE - shared_bytes
    return max(0, min(n_members, int(budget // max(member_bytes, 1))))


def member_groups(
    members: Sequence[_T],
    device: str,
    *,
    image_shape: tuple[int, ...],
    n_classes: int,
    tta: bool,
) -> tuple[str, list[list[_T]]]:
    """Where a folder's image and probabilities live, and its members in passes of windows.

    Per member, float32: the stitched logits and their softmax (with TTA also a flipped
    prediction and the sum); per pass: the image, a flipped copy and the count map
    (:func:`members_per_pass` with the device's free memory).

    Args:
        members: The folder's members (any items: returned in groups, in order).
        device: ``cpu`` or ``cuda[:N]``.
        image_shape: The preprocessed image ``(C_in, x, y[, z])``.
        n_classes: Output classes per member.
        tta: Flip TTA is on.

    Returns:
        ``(home, groups)``: ``home`` is ``device`` when the outputs stay on it, else
        ``cpu`` (always on the CPU: one member per group there).
    """
    voxels = 1
    for side in image_shape[1:]:
        voxels *= int(side)
    size = members_per_pass(
        device,
        len(members),
        member_bytes=4 * voxels * n_classes * (4 if tta else 2),
        shared_bytes=4 * voxels * (1 + 2 * int(image_shape[0])),
        free_bytes=cuda_free_bytes(device),
    )
    home = device if size >= 1 else "cpu"
    size = max(size, 1)
    return home, [list(members[i : i + size]) for i in range(0, len(members), size)]


def cuda_free_bytes(device: str) -> int:
    """Free memory of a CUDA device: the driver's free memory plus what PyTorch caches
    unused (0 on the CPU)."""
    if not is_cuda(device):
        return 0
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(cached, 0))


def predict_logits(
    net: Any, image: Any, cfg: PipelineConfig, *, device: str, overlap: float | None = None
) -> Any:
    """Sliding-window (Gaussian-blended) logits ``(C, ...)`` for one image ``(C_in, ...)``.

    :func:`window_logits` of one network, brought to the CPU: always a float32 CPU tensor.
    """
    return window_logits([net], image, cfg, device=device, overlap=overlap)[0].cpu()


def window_logits(
    nets: Sequence[Any],
    image: Any,
    cfg: PipelineConfig,
    *,
    device: str,
    overlap: float | None = None,
) -> Any:
    """Logits ``(M, C, ...)`` float32 of ``M`` networks over the same Gaussian-blended windows.

    Each window is cut once and every network runs on it (on CUDA in autocast with
    :func:`medres.runtime.amp_dtype`; each network's output is made float32 before it is
    weighted and stitched). The output is stitched on the GPU or, when the GPU runs out of
    memory, in CPU memory (MONAI's ``device="cpu"``; the image then stays where it was
    given), so a large volume costs time, not a crash. It stays where it was stitched,
    except that an image given on the CPU gets its logits on the CPU.

    Args:
        nets: Networks with the same input and output channels, on ``device``.
        image: ``(C_in, x, y[, z])`` on the CPU or on ``device``.
        cfg: The pipeline (roi size, window batch, overlap).
        device: ``cpu`` or ``cuda[:N]``.
        overlap: Window overlap; None: the pipeline's.

    Raises:
        ModelError: Out of GPU memory even with the output stitched in CPU memory.
    """
    import torch

    plan = device_plan(device)

    def predictor(windows: Any) -> Any:
        outputs = [net(windows).float() for net in nets]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    on_host = torch.as_tensor(image).device.type == "cpu"

    def run(stitch: str | None) -> Any:
        logits = _stitched(predictor, image, cfg, plan, stitch=stitch, overlap=overlap)
        return logits.cpu() if on_host else logits  # a blocking copy: read at once

    for stitch in plan.stitch_on[:-1]:
        try:
            logits = run(stitch)
        except torch.cuda.OutOfMemoryError:
            logits = None  # retried below, once the traceback's tensors are released
        if logits is not None:
            return _by_member(logits, len(nets))
        release_cuda_memory(device)
        logger.warning("GPU memory is short for this volume: stitching windows on the CPU")
    try:
        logits = run(plan.stitch_on[-1])
    except torch.cuda.OutOfMemoryError:
        logits = None  # raised below: a cause chained here would keep the GPU tensors alive
    if logits is not None:
        return _by_member(logits, len(nets))
    release_cuda_memory(device)
    from medres.errors import ModelError

    raise ModelError(
        f"{device}: out of GPU memory running {cfg.name}'s network on "
        f"{cfg.inference.sw_batch_size} window(s) of {tuple(cfg.roi_size)} voxels, even with "
        "the volume stitched in CPU memory; lower inference.sw_batch_size (or roi_size) "
        "in the pipeline, or predict with --device cpu"
    )


def fits_one_window(spatial_shape: Sequence[int], roi_size: Sequence[int]) -> bool:
    """Whether an image no larger than the window along every axis (one window covers it)."""
    return all(n <= r for n, r in zip(spatial_shape, roi_size, strict=True))


def one_window_logits(nets: Sequence[Any], images: Any, cfg: PipelineConfig) -> Any:
    """Logits ``(V, M, C, ...)`` float32 of ``M`` networks on ``V`` images that each fit in
    one window (:func:`fits_one_window`), run as one batch of ``V`` windows per network.

    Each image is zero-padded to the window as MONAI's sliding window pads it (half the
    difference before, the rest after) and the logits are cut back, so the result is the
    sliding window's: with a single window its Gaussian weights cancel out. The views go
    through in batches of the pipeline's ``sw_batch_size`` (the sliding window's memory).
    CPU only.
    """
    import torch
    from torch.nn import functional

    spatial = images.shape[2:]
    pad: list[int] = []
    for n, r in zip(reversed(spatial), reversed(tuple(cfg.roi_size)), strict=True):
        diff = max(r - n, 0)
        pad += [diff // 2, diff - diff // 2]
    with torch.inference_mode():
        batch = torch.as_tensor(images, dtype=torch.float32)
        if any(pad):
            batch = functional.pad(batch, pad, mode="constant", value=0.0)
        step = max(cfg.inference.sw_batch_size, 1)  # the sliding window's batch: its memory
        chunks = [batch[i : i + step] for i in range(0, len(batch), step)]
        outputs = [torch.cat([torch.as_tensor(net(c)).float() for c in chunks]) for net in nets]
        logits = torch.stack(outputs, dim=1)  # (V, M, C, *roi)
        cut = tuple(
            slice(before, before + n)
            for before, n in zip(reversed(pad[0::2]), spatial, strict=True)
        )
        index = (slice(None), slice(None), slice(None), *cut)
        return logits[index]


def _stitched(
    predictor: Any,
    image: Any,
    cfg: PipelineConfig,
    plan: DevicePlan,
    *,
    stitch: str | None,
    overlap: float | None,
) -> Any:
    """One ``sliding_window_inference`` call: ``(1, M*C, ...)`` float32 stitched on
    ``stitch`` (None: where the windows run)."""
    import torch
    from monai.inferers import sliding_window_inference

    autocast = (
        torch.autocast(torch.device(plan.device).type, dtype=plan.amp_dtype)
        if plan.amp_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode():
        batch = torch.as_tensor(image, dtype=torch.float32)[None]
        if stitch is None or stitch == plan.device:  # the whole input on the device
            batch = to_device(batch, plan.device)
        with autocast:
            logits = sliding_window_inference(
                batch,
                roi_size=cfg.roi_size,
                sw_batch_size=cfg.inference.sw_batch_size,
                predictor=predictor,
                overlap=cfg.inference.overlap if overlap is None else overlap,
                mode="gaussian",
                padding_mode="constant",
                sw_device=plan.device,
                device=stitch,
            )
        return torch.as_tensor(logits).float()


def _by_member(logits: Any, n_members: int) -> Any:
    """``(1, M*C, ...)`` -> ``(M, C, ...)`` (a view)."""
    return logits[0].reshape(n_members, -1, *logits.shape[2:])


__all__ = [
    "GPU_OUTPUT_SHARE",
    "DevicePlan",
    "cuda_free_bytes",
    "device_plan",
    "fits_one_window",
    "is_cuda",
    "member_groups",
    "members_per_pass",
    "one_window_logits",
    "predict_logits",
    "release_cuda_memory",
    "to_device",
    "window_logits",
]
