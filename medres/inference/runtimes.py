"""Which runtime runs an ensemble's member networks (``medres predict --runtime``).

``torch`` (eager PyTorch) is the reference and the only runtime on a GPU. On the CPU a
model folder exported with ``medres export`` can also run on ONNX Runtime or OpenVINO,
in float32 or int8 (:mod:`medres.models.exported`). ``auto`` takes the first runtime of
:data:`AUTO_ORDER` that every folder of the ensemble holds for every member and whose
package is installed. The order is what ``benchmarks/bench_predict.py`` measured end to
end on this project's networks (docs/runtimes.md): OpenVINO's int8 files are the only
runtime reliably faster than torch eager inside ``predict`` (float32 OpenVINO and ONNX
Runtime are as fast or slower once the work around the network is counted). int8 files
exist only when ``medres export --int8`` was asked for, and they change the masks a
little, so ``auto`` takes them only when every member's foreground Dice against its
PyTorch network on the export's calibration windows is at least
:data:`INT8_AUTO_MIN_DICE` (``--runtime openvino-int8`` uses them regardless, ``--runtime
torch`` never). That check is a floor, not a guarantee: docs/runtimes.md gives the
measured mask differences (small on the LGG and BraTS networks, larger on the tiny demo
CT network over a 512x512x300 CT).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from medres.errors import ConfigError, ModelError
from medres.models.exported import (
    check_runtime_name,
    export_command,
    exported_runtimes,
    load_runtime_network,
    runtime_installed,
    split_runtime,
)
from medres.models.folder import ModelFolder
from medres.models.manifest import ExportEntry

logger = logging.getLogger(__name__)

#: ``auto``'s preference on the CPU, fastest first (measured: benchmarks/bench_predict.py).
AUTO_ORDER = ("openvino-int8", "torch")
#: Smallest foreground Dice (int8 file vs the PyTorch network, on the calibration windows)
#: with which ``auto`` takes an int8 file.
INT8_AUTO_MIN_DICE = 0.97


def choose_runtime(folders: Sequence[ModelFolder], requested: str, *, device: str) -> str:
    """The runtime an ensemble of ``folders`` runs on.

    Args:
        folders: The ensemble's model folders.
        requested: ``auto`` or one of :data:`RUNTIMES`.
        device: ``cpu`` or ``cuda[:N]``.

    Raises:
        ConfigError: An unknown name, or an exported runtime asked for on a GPU.
        ModelError: An exported runtime asked for that a folder does not hold.
    """
    check_runtime_name(requested)
    on_gpu = device != "cpu"
    if requested == "auto":
        if on_gpu:
            return "torch"
        for runtime in AUTO_ORDER:
            if runtime == "torch" or (
                runtime_installed(split_runtime(runtime)[0])
                and all(runtime in _held(folder, for_auto=True) for folder in folders)
            ):
                return runtime
        return "torch"
    if requested != "torch" and on_gpu:
        raise ConfigError(
            f"--runtime {requested} runs on the CPU only; on {device} use --runtime torch (or auto)"
        )
    if requested != "torch":
        for folder in folders:
            if requested not in _held(folder):
                raise ModelError(
                    f"{folder.path}: holds no {requested} export of its members; run: "
                    f"{export_command(folder.path, requested)}"
                )
    return requested


def current_exports(folder: ModelFolder) -> list[ExportEntry]:
    """The folder's exports made from its members' current weights (the others are stale:
    never counted, never loaded)."""
    weights = {m.name: m.weights_sha256 for m in folder.members}
    return [e for e in folder.manifest.exports if weights.get(e.member) == e.weights_sha256]


def _held(folder: ModelFolder, *, for_auto: bool = False) -> list[str]:
    """Runtimes the folder's current exports cover (and, ``for_auto``, only with int8
    files that agree with torch well enough)."""
    current = current_exports(folder)
    if for_auto:
        current = [
            e
            for e in current
            if e.precision == "fp32" or (e.foreground_dice or 0.0) >= INT8_AUTO_MIN_DICE
        ]
    return exported_runtimes(current, [m.name for m in folder.members])


def load_member_network(folder: ModelFolder, member: Any, runtime: str, *, device: str) -> Any:
    """One member's network for ``runtime``: the PyTorch module, or an exported file's
    runner called the same way.

    Raises:
        ModelError: The weights or the exported file are missing, changed or unreadable,
            or the runtime's package is not installed (the message names the extra).
    """
    if runtime == "torch":
        return folder.load_network(member, device=device)
    return load_runtime_network(
        folder.path / member.name,
        current_exports(folder),
        member.name,
        runtime,
        verify=folder.verify,
    )


__all__ = [
    "AUTO_ORDER",
    "INT8_AUTO_MIN_DICE",
    "check_runtime_name",
    "choose_runtime",
    "current_exports",
    "load_member_network",
]
