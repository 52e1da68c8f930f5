"""What ``medres predict`` was asked for: :class:`PredictOptions`, part of every scan's
fingerprint (:mod:`medres.inference.resume`)."""

from __future__ import annotations

from dataclasses import dataclass

from medres.pipeline import EnsembleMode


@dataclass(frozen=True)
class PredictOptions:
    """What ``medres predict`` was asked for (None: the pipeline's own setting).

    Attributes:
        device: ``cpu`` or ``cuda[:N]`` (resolved, not ``auto``).
        tta: Flip test-time augmentation.
        ensemble: ``mean`` or ``vote`` (a string is accepted and checked).
        overlap: Sliding-window overlap.
        keep_members: Also write each member's label map (for ``medres evaluate``).
        save_probabilities: Also write the compact probability map.
        resume: Skip scans whose outputs are complete.
        skip_unmatched: Scans no model takes are "skipped", not "failed".
        report: An after-scan step writes reports (part of what "complete" means).
        report_pdf: That step also writes ``report.pdf``.
        report_phi: The reports show patient fields (``--show-phi``).
        runtime: What runs the segmentation networks: ``auto``, ``torch``, ``onnx``,
            ``openvino``, ``onnx-int8`` or ``openvino-int8`` (detectors always run on
            torch); see :mod:`medres.inference.runtimes`.
        pixel_size_mm: Pixel size ``(x, y)`` in mm of 2D image files (they carry none);
            None: the pipeline's ``preprocessing.pixel_size_mm``, else sizes in pixels.
        explain: The reports also show each lesion's saliency map (``--explain``).

    Raises:
        ConfigError: ``ensemble`` is not a known mode, or ``runtime`` not a known runtime.
    """

    device: str = "cpu"
    tta: bool | None = None
    ensemble: EnsembleMode | str | None = None
    overlap: float | None = None
    keep_members: bool = False
    save_probabilities: bool = False
    resume: bool = False
    skip_unmatched: bool = False
    report: bool = False
    report_pdf: bool = False
    report_phi: bool = False
    runtime: str = "auto"
    pixel_size_mm: tuple[float, float] | None = None
    explain: bool = False

    def __post_init__(self) -> None:
        from medres.models.exported import check_runtime_name

        check_runtime_name(self.runtime)
        if self.ensemble is not None and not isinstance(self.ensemble, EnsembleMode):
            from medres.errors import ConfigError

            modes = [m.value for m in EnsembleMode]
            if self.ensemble not in modes:
                raise ConfigError(f"ensemble {self.ensemble!r}: use {' or '.join(modes)}")
            object.__setattr__(self, "ensemble", EnsembleMode(self.ensemble))


__all__ = ["PredictOptions"]
