"""Ensemble prediction of one scan, brought back onto the scan's own grid.

An :class:`Ensemble` is one or more model folders with the same input (dimensions,
channel count) and the same labels; every member of every folder votes. For one scan:

1. each folder preprocesses the scan with its own saved transforms (orientation, spacing,
   crop, intensity) into its "model grid";
2. each member predicts class probabilities there with Gaussian-blended sliding windows,
   optionally averaged over mirrored copies (flip TTA along the axes it was trained with);
   on CUDA the image, flips and softmax stay on the GPU and a folder's members share passes
   of windows as far as its memory allows (:func:`~medres.inference.sliding.member_groups`);
3. on the model grid we keep running sums only: the sum and the sum of squares of the
   members' foreground probabilities, and a bit mask of which member predicts which label;
4. those are mapped onto the scan's grid once per folder
   (:func:`~medres.inference.resample.resample_to_grid`, slab by slab, straight into
   float16 / integer arrays): the ensemble mean, the members' standard deviation, and the
   member bits;
5. the label map is the thresholded mean (binary tasks) or its argmax, or with
   ``ensemble="vote"`` the majority of the members' own label maps; the members' logits
   are first divided by their temperatures and the post-processing applied after, as
   cross-validation chose them (:mod:`medres.training.tuning`).

Peak memory beyond the scan itself is therefore one model-grid probability volume per
member being run plus, on the scan grid, 1 byte (labels) + per foreground class 2 (mean)
+ 2 (spread) + 1 (member bits) bytes per voxel: about 6 bytes per voxel for a binary
task, against 8 per class per copy for float32 probability maps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import ConfigError, ModelError
from medres.inference.accumulate import FolderSums, ScanGridSums
from medres.inference.decide import decide_labels, majority_vote
from medres.inference.postprocess import remove_small_lesions
from medres.inference.resample import resample_to_grid
from medres.inference.sliding import (
    fits_one_window,
    member_groups,
    one_window_logits,
    to_device,
    window_logits,
)
from medres.inference.tta import FlipTTA
from medres.io.grid import Grid, affine_2d_as_4x4, squeeze_single_slice_shape
from medres.io.volume import Volume
from medres.models.folder import MemberInfo, ModelFolder
from medres.pipeline import MAX_OVERLAP, EnsembleMode, PipelineConfig

#: Most members one ensemble can hold (their agreement is kept as bits of a uint32).
MAX_MEMBERS = 32


@dataclass
class EnsemblePrediction:
    """An ensemble's prediction of one scan, on the scan's own grid.

    Attributes:
        label_map: Label map ``(x, y[, z])`` uint8, small lesions removed.
        probabilities: ``(C-1, x, y[, z])`` float16: mean probability of labels 1..C-1
            (the background is what is left).
        uncertainty: ``(C-1, ...)`` float16: standard deviation of the members'
            probabilities (0 where they agree).
        member_hits: ``(C-1, ...)`` unsigned ints: bit ``m`` is set where member ``m``
            predicts that label (sampled nearest from the model grid).
        member_label_maps: Each member's own label map (only with ``keep_members``).
        member_probabilities: Each member's ``(C-1, ...)`` float16 probabilities on the scan
            grid (only with ``keep_members``: 2 bytes per voxel and class per member).
        member_names: ``<pipeline>/<member>`` for each member, in bit order.
        affine: The scan's voxel -> RAS mm affine.
        seconds: Time per stage (``preprocess``, ``inference``, ``to_scan_grid``).
    """

    label_map: npt.NDArray[np.uint8]
    probabilities: npt.NDArray[np.float16]
    uncertainty: npt.NDArray[np.float16]
    member_hits: npt.NDArray[np.unsignedinteger[Any]]
    member_label_maps: list[npt.NDArray[np.uint8]]
    member_names: list[str]
    affine: npt.NDArray[np.float64]
    member_probabilities: list[npt.NDArray[np.float16]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


_Group = list[tuple[MemberInfo, Any]]


@dataclass
class _FolderRunner:
    folder: ModelFolder
    members: list[MemberInfo]
    networks: list[Any]
    preprocess: Any


def check_compatible(folders: Sequence[ModelFolder]) -> None:
    """Refuse folders that cannot vote together (different labels, dims or inputs).

    Raises:
        ModelError: Names the two folders and what differs.
    """
    first = folders[0]
    for other in folders[1:]:
        a, b = first.pipeline, other.pipeline
        for what, left, right in (
            ("labels", a.labels, b.labels),
            ("dimensions", a.dims, b.dims),
            ("input channel count", len(a.channels), len(b.channels)),
        ):
            if left != right:
                raise ModelError(
                    f"{other.path}: cannot join an ensemble with {first.path}: {what} differ "
                    f"({right} vs {left})"
                )


@dataclass
class _MemberMaps:
    """Each member's own maps on the scan grid, kept only when needed (``keep``: asked for;
    ``vote``: the ensemble votes with the members' label maps)."""

    keep: bool
    vote: bool
    device: str = "cpu"
    label_maps: list[npt.NDArray[np.uint8]] = field(default_factory=list)
    probabilities: list[npt.NDArray[np.float16]] = field(default_factory=list)

    def add(
        self,
        foreground: npt.NDArray[np.float32],
        model_affine: npt.NDArray[np.float64],
        volume: Volume,
        threshold: float,
    ) -> None:
        """Map one member's probabilities onto the scan grid and decide its labels."""
        if not (self.keep or self.vote):
            return
        shape = volume.spatial_shape
        native = resample_to_grid(
            foreground, model_affine, volume.affine, shape, dtype=np.float16, device=self.device
        )
        self.label_maps.append(decide_labels(native, threshold=threshold))
        if self.keep:
            self.probabilities.append(native)


class Ensemble:
    """Members of one or more model folders that predict together.

    Args:
        folders: Opened model folders (same labels, dims and channel count).
        device: ``cpu`` or ``cuda[:N]``.
        tta: Flip test-time augmentation; None uses each pipeline's setting.
        mode: ``mean`` (of probabilities) or ``vote``; None uses the first pipeline's.
        overlap: Sliding-window overlap; None uses each pipeline's setting.
        runtime: What runs the member networks: ``torch`` (eager, the reference),
            ``onnx``, ``openvino``, ``onnx-int8`` or ``openvino-int8`` (exported files
            of ``medres export``), or ``auto``: the fastest of those that every folder
            holds and that is installed (:func:`~medres.inference.runtimes.choose_runtime`).

    Raises:
        ModelError: Incompatible folders, more than :data:`MAX_MEMBERS` members, or a
            runtime the folders hold no export for (or whose package is missing).
    """

    #: False: labels on voxels (a DetectionEnsemble puts boxes on lesions)
    is_detector: bool = False

    def __init__(
        self,
        folders: Sequence[ModelFolder],
        *,
        device: str = "cpu",
        tta: bool | None = None,
        mode: EnsembleMode | str | None = None,
        overlap: float | None = None,
        runtime: str = "torch",
    ) -> None:
        from medres.inference.runtimes import choose_runtime, load_member_network
        from medres.transforms.presets import validation_transforms

        if not folders:
            raise ModelError("an ensemble needs at least one model folder")
        check_compatible(folders)
        self.folders = list(folders)
        self.cfg: PipelineConfig = folders[0].pipeline
        self.device = device
        self.mode = EnsembleMode(mode) if mode is not None else self.cfg.inference.ensemble
        self.tta = tta
        if overlap is not None and not 0.0 <= overlap <= MAX_OVERLAP:
            raise ConfigError(
                f"overlap {overlap}: use 0 to {MAX_OVERLAP} (0.99 would mean about 10^4 "
                "windows per volume for the same result as 0.5)"
            )
        self.overlap = overlap
        #: the runtime the members run on (``auto`` resolved)
        self.runtime = (
            "torch" if self.is_detector else choose_runtime(self.folders, runtime, device=device)
        )
        self.runners: list[_FolderRunner] = []
        for folder in self.folders:
            members = list(folder.members)
            self.runners.append(
                _FolderRunner(
                    folder=folder,
                    members=members,
                    networks=[
                        load_member_network(folder, m, self.runtime, device=device) for m in members
                    ],
                    preprocess=validation_transforms(folder.pipeline, with_label=False),
                )
            )
        if self.n_members > MAX_MEMBERS:
            raise ModelError(f"{self.n_members} members: an ensemble holds at most {MAX_MEMBERS}")

    @property
    def n_members(self) -> int:
        """Members over all folders."""
        return sum(len(r.members) for r in self.runners)

    @property
    def member_names(self) -> list[str]:
        """``<pipeline name>/<member>`` in bit order."""
        return [f"{r.folder.pipeline.name}/{m.name}" for r in self.runners for m in r.members]

    @property
    def labels(self) -> tuple[str, ...]:
        """Label names; index 0 is the background."""
        return self.cfg.labels

    def input_problem(self, volume: Volume) -> str | None:
        """Why this ensemble cannot take ``volume`` (None when it can)."""
        dims = self.cfg.dims
        shape = volume.spatial_shape
        ndim = len(squeeze_single_slice_shape(shape) if dims == 2 else shape)
        expected = len(self.cfg.channels)
        if ndim != dims or volume.n_channels != expected:
            return (
                f"{ndim}D scan with {volume.n_channels} channel(s), but {self.cfg.name} takes "
                f"{dims}D scans with {expected} channel(s) ({', '.join(self.cfg.channels)})"
            )
        return None

    def _flips(self, runner: _FolderRunner) -> tuple[int, ...]:
        """The axes flip TTA mirrors along: those the model saw mirrored in training."""
        cfg = runner.folder.pipeline
        tta = cfg.inference.tta if self.tta is None else self.tta
        return tuple(cfg.augmentation.flip_axes) if tta else ()

    def _tta(
        self,
        runner: _FolderRunner,
        nets: Sequence[Any],
        shape: Sequence[int],
        temperatures: Sequence[float] = (),
    ) -> FlipTTA:
        """Flip-TTA inference of members sharing one pass of windows over the model grid
        (``shape``): logits ``(K, ...)`` of one member, ``(M, K, ...)`` of several, each
        divided by its member's temperature; one batch of all flips for a one-window image."""
        import torch

        cfg = runner.folder.pipeline
        overlap = cfg.inference.overlap if self.overlap is None else self.overlap
        scale = [1.0 / t for t in temperatures] if any(t != 1.0 for t in temperatures) else []

        def scaled(logits: Any, member_axis: int) -> Any:
            if not scale:
                return logits
            factors = torch.tensor(scale, dtype=logits.dtype, device=logits.device)
            view = [1] * logits.ndim
            view[member_axis] = len(scale)
            return logits * factors.reshape(view)

        def infer(x: Any) -> Any:
            logits = scaled(window_logits(nets, x, cfg, device=self.device, overlap=overlap), 0)
            return logits[0] if len(nets) == 1 else logits

        def infer_views(views: Any) -> Any:
            logits = scaled(one_window_logits(nets, views, cfg), 1)  # (V, M, K, ...)
            return logits[:, 0] if len(nets) == 1 else logits

        one_window = self.device == "cpu" and fits_one_window(shape, cfg.roi_size)
        return FlipTTA(
            infer, spatial_axes=self._flips(runner), infer_views=infer_views if one_window else None
        )

    def _preprocess(
        self, runner: _FolderRunner, volume: Volume, source: str
    ) -> tuple[Any, npt.NDArray[np.float64]]:
        """The image on the folder's model grid (float tensor) and that grid's affine.

        Raises:
            LoadError: Non-finite values after preprocessing.
        """
        import torch

        from medres.errors import LoadError
        from medres.transforms.presets import unwrap_transform_errors

        cfg = runner.folder.pipeline
        with unwrap_transform_errors():
            data = runner.preprocess({"image": volume, "source": source})
        image = data["image"]
        model_affine = np.asarray(image.affine, dtype=np.float64)
        if model_affine.shape != (4, 4):  # a 2D MetaTensor may carry a 3x3 affine
            model_affine = affine_2d_as_4x4(model_affine)
        tensor = image.as_tensor().float()
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise LoadError(
                f"{source}: {bad} of {tensor.numel()} values are NaN or infinite after "
                f"{cfg.name}'s preprocessing; the scan's intensities are not usable"
            )
        return tensor, model_affine

    def _group_foregrounds(
        self, runner: _FolderRunner, group: _Group, tensor: Any, source: str
    ) -> list[npt.NDArray[np.float32]]:
        """Each member's foreground probabilities ``(C-1, ...)`` on the model grid, float32
        on the host, for members sharing one pass of windows.

        Raises:
            ModelError: A member gave NaN or infinite probabilities (damaged weights).
        """
        import torch

        with torch.inference_mode():
            temperatures = [runner.folder.temperature(member.name) for member, _ in group]
            nets = [net for _, net in group]
            probs = self._tta(runner, nets, tensor.shape[1:], temperatures)(tensor)
            by_member = probs[None] if len(group) == 1 else probs
            # a blocking copy: the host reads it at once (and the timing covers the GPU)
            foregrounds = [p[1:].cpu().numpy().astype(np.float32, copy=False) for p in by_member]
        for (member, _), foreground in zip(group, foregrounds, strict=True):
            if not np.isfinite(foreground).all():
                bad = int((~np.isfinite(foreground)).sum())
                raise ModelError(
                    f"{runner.folder.path / member.name}: the member gave {bad} NaN or "
                    f"infinite probabilities on {source}; its weights are damaged "
                    "(retrain it or restore the model folder)"
                )
        return foregrounds

    def predict(
        self,
        volume: Volume,
        *,
        source: str = "scan",
        keep_members: bool = False,
        on_stage: Callable[[str], None] | None = None,
    ) -> EnsemblePrediction:
        """Predict one scan with every member and map the result onto its grid.

        Per folder: preprocess onto its model grid; per member: flip-TTA probabilities
        (:class:`~medres.inference.tta.FlipTTA`) added to the folder's sums
        (:class:`~medres.inference.accumulate.FolderSums`); then the sums are mapped onto
        the scan grid (:class:`~medres.inference.accumulate.ScanGridSums`), where the mean
        (or the members' vote) decides the label map.

        Args:
            volume: The scan (channel-first, RAS affine), as :func:`medres.io.load_scan`
                returns it (channels stacked for multi-channel models).
            source: Name of the scan for error messages.
            keep_members: Also return each member's own label map.
            on_stage: Called with a short description as work proceeds.

        Raises:
            LoadError / DatasetError: The scan does not fit the models (dims, channels).
        """
        from medres.errors import LoadError
        from medres.transforms.presets import fit_dims

        problem = self.input_problem(volume)
        if problem is not None:
            raise LoadError(f"{source}: {problem}")
        volume = fit_dims(volume, dims=self.cfg.dims, source=source)
        stage = on_stage or (lambda _: None)
        scan_sums = ScanGridSums(
            volume.spatial_shape,
            n_foreground=len(self.labels) - 1,
            n_members=self.n_members,
            several_folders=len(self.runners) > 1,
        )
        vote = self.mode == EnsembleMode.VOTE
        member_maps = _MemberMaps(keep=keep_members, vote=vote, device=self.device)
        seconds = {"preprocess": 0.0, "inference": 0.0, "to_scan_grid": 0.0}
        bit = 0
        for runner in self.runners:
            bit = self._predict_folder(
                runner, volume, source, scan_sums, member_maps, seconds, bit=bit, stage=stage
            )
        start = time.perf_counter()
        prediction = self._decide(scan_sums, member_maps, volume, seconds)
        seconds["to_scan_grid"] += time.perf_counter() - start
        return prediction

    def _predict_folder(
        self,
        runner: _FolderRunner,
        volume: Volume,
        source: str,
        scan_sums: ScanGridSums,
        member_maps: _MemberMaps,
        seconds: dict[str, float],
        *,
        bit: int,
        stage: Callable[[str], None],
    ) -> int:
        """Preprocess, run every member of one folder, map its sums onto the scan grid;
        returns the next member bit. Times add to ``seconds``."""
        cfg = runner.folder.pipeline
        start = time.perf_counter()
        stage(f"preprocess ({cfg.name})")
        tensor, model_affine = self._preprocess(runner, volume, source)
        pairs = list(zip(runner.members, runner.networks, strict=True))
        shape, tta = tuple(tensor.shape), bool(self._flips(runner))
        home, groups = member_groups(
            pairs, self.device, image_shape=shape, n_classes=len(cfg.labels), tta=tta
        )
        tensor = to_device(tensor, home)  # once: flips and softmax run where the logits are
        seconds["preprocess"] += time.perf_counter() - start
        sums = FolderSums(bits=scan_sums.bits)
        for group in groups:
            stage(f"predict {cfg.name}/{'+'.join(member.name for member, _ in group)}")
            start = time.perf_counter()
            foregrounds = self._group_foregrounds(runner, group, tensor, source)
            owns = [decide_labels(f, threshold=cfg.inference.threshold) for f in foregrounds]
            seconds["inference"] += time.perf_counter() - start
            start = time.perf_counter()
            for foreground, own in zip(foregrounds, owns, strict=True):
                sums.add(foreground, own, bit=bit)
                member_maps.add(foreground, model_affine, volume, cfg.inference.threshold)
                bit += 1
            seconds["to_scan_grid"] += time.perf_counter() - start
        start = time.perf_counter()
        scan_sums.add_folder(
            sums, model_affine=model_affine, scan_affine=volume.affine, device=self.device
        )
        seconds["to_scan_grid"] += time.perf_counter() - start
        return bit

    def _decide(
        self,
        scan_sums: ScanGridSums,
        member_maps: _MemberMaps,
        volume: Volume,
        seconds: dict[str, float],
    ) -> EnsemblePrediction:
        """The label map from the mean (or the members' vote), small lesions removed."""
        mean16, spread16 = scan_sums.finish()
        if self.mode == EnsembleMode.VOTE:
            label_map = majority_vote(member_maps.label_maps, len(self.labels))
        else:
            label_map = decide_labels(mean16, threshold=self.cfg.inference.threshold)
        return EnsemblePrediction(
            label_map=self.postprocess(label_map, volume),
            probabilities=mean16,
            uncertainty=spread16,
            member_hits=scan_sums.hits,
            member_label_maps=[self.postprocess(m, volume) for m in member_maps.label_maps]
            if member_maps.keep
            else [],
            member_names=self.member_names,
            member_probabilities=member_maps.probabilities,
            affine=volume.affine.copy(),
            seconds=seconds,
        )

    def postprocess(
        self, label_map: npt.NDArray[np.uint8], volume: Volume
    ) -> npt.NDArray[np.uint8]:
        """Remove lesion components below the pipeline's minimum size, and all but its
        ``max_lesions`` largest. A size chosen in px² by cross-validation stays in pixels
        when ``--pixel-size-mm`` puts the image in mm."""
        tuned = self.folders[0].tuned
        in_px = tuned is not None and tuned.size_unit == "px²" and volume.length_unit == "mm"
        return remove_small_lesions(
            label_map,
            voxel_measure=1.0 if in_px else Grid(label_map.shape, volume.affine).voxel_measure,
            min_size=self.cfg.postprocessing.min_lesion_size,
            lesion_indices=self.cfg.lesion_indices,
            max_lesions=self.cfg.postprocessing.max_lesions,
        )


__all__ = [
    "MAX_MEMBERS",
    "Ensemble",
    "EnsemblePrediction",
    "check_compatible",
    "decide_labels",
    "majority_vote",
]
