"""``medres export``: a model folder's members exported for ONNX Runtime and OpenVINO.

:func:`export_model` writes, beside every member's ``model.pt``, the files of
:mod:`medres.models.exported` (float32 ONNX; with ``int8``, the statically quantised
ONNX file; with the ``openvino`` format, both as OpenVINO IR). Calibration and checks:

* the int8 activation ranges are calibrated on windows of real scans: the cases of
  ``calibration`` (any ``medres train --data`` layout), preprocessed exactly as for
  prediction, without the groups the model folder's ``split.json`` held out (its test
  patients never shape the model);
* every file is run, when written, on the same check input as the PyTorch network (those
  calibration windows, or a fixed random input when none are given) and its largest
  logit difference and arg-max agreement are recorded in ``model.json`` with its sha256.

Each file is written to a temporary name in the member folder and renamed into place,
and ``model.json`` is replaced atomically last, so an interrupted export leaves the folder
as it was (a rerun writes everything again).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import DatasetError, MedresError, ModelError
from medres.io.atomic import write_text_atomic
from medres.models.exported import (
    FILE_NAMES,
    CheckResult,
    OnnxRuntimeNetwork,
    OpenVinoNetwork,
    compare_logits,
    convert_openvino,
    export_onnx,
    quantize_int8,
    quantize_openvino_int8,
    require_runtime,
)
from medres.models.folder import ModelFolder
from medres.models.manifest import MANIFEST, SPLIT, ExportEntry, parse_manifest, sha256_file

logger = logging.getLogger(__name__)

#: Formats ``--format`` takes.
FORMATS = ("onnx", "openvino")
#: Calibration cases used at most, spread over the data set, and windows cut per case.
CALIBRATION_CASES = 16
WINDOWS_PER_CASE = 2
#: Random check windows when no calibration data is given.
RANDOM_CHECK_WINDOWS = 2


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: one entry per file, and the check input."""

    model_dir: Path
    entries: list[ExportEntry] = field(default_factory=list)
    check_input: str = ""
    calibration_cases: int = 0


def _excluded_groups(folder: ModelFolder) -> set[str]:
    try:
        split = json.loads((folder.path / SPLIT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    groups = split.get("excluded_groups", []) if isinstance(split, dict) else []
    return {str(g) for g in groups}


def _windows_of(
    image: npt.NDArray[np.float32], roi: Sequence[int], count: int, seed: int
) -> list[npt.NDArray[np.float32]]:
    """Up to ``count`` windows ``(C, *roi)`` of a preprocessed image: its centre window,
    then random ones (the image zero-padded to at least ``roi``, as sliding windows are)."""
    pad = [(0, 0)] + [
        (max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2)
        for n, r in zip(image.shape[1:], roi, strict=True)
    ]
    padded = np.pad(image, pad)
    spare = [n - r for n, r in zip(padded.shape[1:], roi, strict=True)]
    rng = np.random.default_rng(seed)
    corners = [tuple(s // 2 for s in spare)]
    for _ in range(count * 4):
        if len(corners) >= count:
            break
        corner = tuple(int(rng.integers(0, s + 1)) for s in spare)
        if corner not in corners:
            corners.append(corner)
    windows = []
    for corner in corners[:count]:
        index = (slice(None), *(slice(c, c + r) for c, r in zip(corner, roi, strict=True)))
        windows.append(np.ascontiguousarray(padded[index], dtype=np.float32))
    return windows


def calibration_windows(
    folder: ModelFolder,
    data: str | Path,
    *,
    max_cases: int = CALIBRATION_CASES,
    windows_per_case: int = WINDOWS_PER_CASE,
    base_dir: str | Path | None = None,
) -> tuple[npt.NDArray[np.float32], int]:
    """Preprocessed windows ``(N, C, *roi)`` of up to ``max_cases`` cases of ``data``.

    Raises:
        DatasetError: No usable case (all held out, unreadable, or none found).
    """
    from medres.training.datasets import find_training_cases
    from medres.transforms.presets import unwrap_transform_errors, validation_transforms

    cfg = folder.pipeline
    held_out = _excluded_groups(folder)
    cases = [c for c in find_training_cases(data, base_dir=base_dir) if c.group not in held_out]
    if not cases:
        raise DatasetError(
            f"{data}: no calibration case left once the model's held-out groups are removed"
        )
    picks = sorted({round(i * (len(cases) - 1) / max(max_cases - 1, 1)) for i in range(max_cases)})
    preprocess = validation_transforms(cfg, with_label=False)
    windows: list[npt.NDArray[np.float32]] = []
    used = 0
    for index in picks[:max_cases]:
        case = cases[index]
        try:
            with unwrap_transform_errors():
                data_item = preprocess(
                    {"image": [str(p) for p in case.image_paths], "case_id": case.case_id}
                )
        except MedresError as exc:
            logger.warning("calibration: %s skipped: %s", case.case_id, exc)
            continue
        image = np.asarray(data_item["image"].as_tensor(), dtype=np.float32)
        if not np.isfinite(image).all():
            logger.warning("calibration: %s skipped: non-finite values", case.case_id)
            continue
        windows += _windows_of(image, cfg.roi_size, windows_per_case, seed=index)
        used += 1
    if not windows:
        raise DatasetError(f"{data}: none of the calibration cases could be read")
    return np.stack(windows), used


def _random_windows(folder: ModelFolder) -> npt.NDArray[np.float32]:
    cfg = folder.pipeline
    shape = (RANDOM_CHECK_WINDOWS, len(cfg.channels), *cfg.roi_size)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _temporary(member_dir: Path, suffix: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=".export-", suffix=suffix, dir=member_dir)
    os.close(handle)
    return Path(name)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("onnx", "onnxruntime", "openvino", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _entry(
    member: str,
    runtime: str,
    precision: str,
    written: Path,
    check: CheckResult,
    *,
    window: Sequence[int],
    check_input: str,
    data_written: Path | None = None,
    weights_sha256: str,
) -> ExportEntry:
    """The manifest entry of a file written to ``written`` (a temporary name) that will
    be renamed to its :data:`FILE_NAMES` name."""
    name = FILE_NAMES[(runtime, precision)]
    return ExportEntry(
        member=member,
        runtime=runtime,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        file=name,
        sha256=sha256_file(written),
        data_file=Path(name).with_suffix(".bin").name if data_written is not None else None,
        data_sha256=sha256_file(data_written) if data_written is not None else None,
        weights_sha256=weights_sha256,
        window=tuple(window),
        max_abs_logit_difference=round(check.max_abs_logit_difference, 8),
        label_agreement=round(check.label_agreement, 6),
        foreground_dice=round(check.foreground_dice, 6),
        check_input=check_input,
        versions=_versions(),
    )


def _export_member(
    folder: ModelFolder,
    member: Any,
    *,
    formats: Sequence[str],
    int8: bool,
    windows: npt.NDArray[np.float32],
    check_input: str,
) -> list[ExportEntry]:
    """Write and check one member's files; returns their manifest entries."""
    cfg = folder.pipeline
    member_dir = folder.path / member.name
    window = (len(cfg.channels), *cfg.roi_size)
    net = folder.load_network(member, device="cpu")
    entries: list[ExportEntry] = []
    done: list[tuple[Path, Path]] = []  # (temporary, final): renamed once all are checked
    make: dict[str, Any] = {
        "window": window,
        "check_input": check_input,
        "weights_sha256": member.weights_sha256,
    }
    try:
        onnx_tmp = _temporary(member_dir, ".onnx")
        export_onnx(net, window, onnx_tmp)
        sources = {"fp32": onnx_tmp}
        if int8:
            int8_tmp = _temporary(member_dir, ".int8.onnx")
            quantize_int8(onnx_tmp, int8_tmp, windows)
            sources["int8"] = int8_tmp
        for precision, source in sources.items():
            check = compare_logits(net, OnnxRuntimeNetwork(source), windows)
            done.append((source, member_dir / FILE_NAMES[("onnx", precision)]))
            entries.append(_entry(member.name, "onnx", precision, source, check, **make))
        if "openvino" in formats:
            xml_tmp = _temporary(member_dir, ".xml")
            ir = {"fp32": (xml_tmp, convert_openvino(onnx_tmp, xml_tmp))}
            if int8:
                int8_xml = _temporary(member_dir, ".int8.xml")
                ir["int8"] = (int8_xml, quantize_openvino_int8(xml_tmp, int8_xml, windows))
            for precision, (xml, weights) in ir.items():
                check = compare_logits(net, OpenVinoNetwork(xml), windows)
                final = member_dir / FILE_NAMES[("openvino", precision)]
                done += [(xml, final), (weights, final.with_suffix(".bin"))]
                entries.append(
                    _entry(
                        member.name, "openvino", precision, xml, check, data_written=weights, **make
                    )
                )
        for temporary, final in done:
            os.chmod(temporary, 0o644)  # mkstemp made it private; the weights are not
            os.replace(temporary, final)
    finally:
        for leftover in member_dir.glob(".export-*"):
            leftover.unlink(missing_ok=True)
    return entries


def export_model(
    model_dir: str | Path,
    *,
    formats: Sequence[str] = ("onnx",),
    int8: bool = False,
    calibration: str | Path | None = None,
    base_dir: str | Path | None = None,
    on_member: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export every member of a segmentation model folder and record it in ``model.json``.

    Args:
        model_dir: The model folder (``medres train``'s output).
        formats: ``onnx`` and/or ``openvino`` (OpenVINO IR; the ONNX file is always written).
        int8: Also write statically quantised int8 versions (needs ``calibration``).
        calibration: Training data to calibrate int8 on and to check every file against
            (any layout ``medres train --data`` takes).
        base_dir: Root for relative paths of a datalist JSON.
        on_member: Called with each member's name before it is exported.

    Raises:
        ConfigError: Unknown format, or int8 without calibration data.
        ModelError: A detector folder, a missing extra (named), or a file that fails.
        DatasetError: The calibration data cannot be used.
    """
    from medres.errors import ConfigError

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"--format {', '.join(unknown) or '(none)'}: use onnx and/or openvino")
    require_runtime("onnx", needed_for="medres export")
    if "openvino" in formats:
        require_runtime("openvino", needed_for="medres export --format openvino")
        if int8:
            require_runtime("nncf", needed_for="medres export --format openvino --int8")
    if int8 and calibration is None:
        raise ConfigError("--int8 needs --calibration DATA: a few training scans to calibrate on")
    folder = ModelFolder.open(model_dir)
    if folder.pipeline.is_detection:
        raise ModelError(
            f"{folder.path}: a detection model; export covers segmentation networks (detectors "
            "run on torch)"
        )
    result = ExportResult(model_dir=folder.path)
    if calibration is not None:
        windows, result.calibration_cases = calibration_windows(
            folder, calibration, base_dir=base_dir
        )
        result.check_input = f"{len(windows)} windows of {result.calibration_cases} cases"
    else:
        windows = _random_windows(folder)
        result.check_input = f"{len(windows)} random windows (seed 0)"
    for member in folder.members:
        if on_member is not None:
            on_member(member.name)
        result.entries += _export_member(
            folder,
            member,
            formats=formats,
            int8=int8,
            windows=windows,
            check_input=result.check_input,
        )
    _record(folder, result.entries)
    _remove_unlisted(folder, result.entries)
    return result


def _remove_unlisted(folder: ModelFolder, entries: Sequence[ExportEntry]) -> None:
    """Delete exported files of an earlier export that this one did not write again (an
    export replaces the folder's exports: ``model.json`` lists exactly what is there)."""
    kept = {(e.member, name) for e in entries for name in (e.file, e.data_file) if name}
    for member in folder.members:
        for name in FILE_NAMES.values():
            for candidate in (name, str(Path(name).with_suffix(".bin"))):
                if (member.name, candidate) not in kept:
                    (folder.path / member.name / candidate).unlink(missing_ok=True)


def _record(folder: ModelFolder, entries: Sequence[ExportEntry]) -> None:
    """Replace ``model.json``'s exports by ``entries`` (atomically, validated first)."""
    path = folder.path / MANIFEST
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["exports"] = [e.model_dump(mode="json") for e in entries]
    text = json.dumps(raw, indent=2, allow_nan=False) + "\n"
    parse_manifest(text.encode("utf-8"), source=str(path))
    write_text_atomic(path, text)


__all__ = ["CALIBRATION_CASES", "FORMATS", "ExportResult", "calibration_windows", "export_model"]
