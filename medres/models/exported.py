"""Member networks exported for other runtimes: ONNX files, OpenVINO IR and int8 versions.

``medres export`` (:mod:`medres.inference.export`) writes, beside each member's
``model.pt``:

* ``model.onnx``: the network traced by ``torch.onnx.export`` (opset 17, the batch axis
  dynamic, the window fixed to the pipeline's ``roi_size``: sliding windows are always
  that size);
* ``model.int8.onnx``: with ``--int8``, that file post-training quantised by ONNX
  Runtime's static quantisation (QDQ, int8 weights per output channel, int8 activations
  calibrated on windows of real scans);
* ``model.xml`` / ``model.bin``: with ``--format openvino``, the float32 file converted
  to OpenVINO's IR (float32 kept, no fp16 compression), and with ``--int8`` too,
  ``model.int8.xml`` / ``.bin``: that IR quantised by OpenVINO's NNCF on the same
  calibration windows (NNCF places the quantisers where OpenVINO fuses them into int8
  kernels: measured 4x faster than torch eager here, where ONNX Runtime's QDQ file run
  by OpenVINO was slower than float32).

Each file is checked against the PyTorch network on a fixed input when written and
recorded with its sha256 in ``model.json`` (:class:`~medres.models.manifest.ExportEntry`).
:func:`load_runtime_network` opens one for ``medres predict --runtime``: the returned
object is called like the PyTorch network (a float32 CPU tensor of windows in, logits
out), so sliding windows, TTA, the ensemble and the mapping to the scan grid are the
same code for every runtime.

The runtimes are optional dependencies: ``pip install 'medres[onnx]'`` (onnx,
onnxruntime) and ``'medres[openvino]'`` (openvino, nncf). Without them a
:class:`~medres.errors.ModelError` names the extra to install; :func:`installed_runtimes`
tells what is there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medres.errors import ModelError
from medres.models.manifest import ExportEntry, sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Every ``--runtime`` value (``auto`` aside): torch eager is the reference.
RUNTIMES = ("torch", "onnx", "openvino", "onnx-int8", "openvino-int8")
#: The extra that installs each runtime's package.
EXTRAS = {
    "onnx": ("onnxruntime", "medres[onnx]"),
    "openvino": ("openvino", "medres[openvino]"),
    "nncf": ("nncf", "medres[openvino]"),
}
#: ONNX opset of the exported files.
OPSET = 17
#: File names inside the member folder, by (runtime, precision).
FILE_NAMES = {
    ("onnx", "fp32"): "model.onnx",
    ("onnx", "int8"): "model.int8.onnx",
    ("openvino", "fp32"): "model.xml",
    ("openvino", "int8"): "model.int8.xml",
}


def check_runtime_name(runtime: str) -> str:
    """``runtime`` when it is ``auto`` or one of :data:`RUNTIMES`.

    Raises:
        ConfigError: Any other name (the message lists them).
    """
    if runtime != "auto" and runtime not in RUNTIMES:
        from medres.errors import ConfigError

        raise ConfigError(f"runtime {runtime!r}: use auto, {', '.join(RUNTIMES)}")
    return runtime


def export_command(model_dir: Path | str, runtime: str) -> str:
    """The ``medres export`` command that writes ``runtime``'s files into ``model_dir``."""
    engine, precision = split_runtime(runtime)
    fmt = "openvino" if engine == "openvino" else "onnx"
    return f"medres export {model_dir} --format {fmt}" + (" --int8" if precision == "int8" else "")


def split_runtime(runtime: str) -> tuple[str, str]:
    """``openvino-int8`` -> ``("openvino", "int8")``; ``onnx`` -> ``("onnx", "fp32")``."""
    engine, _, precision = runtime.partition("-")
    return engine, precision or "fp32"


def runtime_installed(engine: str) -> bool:
    """Whether the package of ``onnx`` or ``openvino`` can be imported (torch always)."""
    if engine == "torch":
        return True
    package = EXTRAS[engine][0]
    return importlib.util.find_spec(package) is not None


def installed_runtimes() -> list[str]:
    """The runtimes of :data:`RUNTIMES` whose package is installed."""
    return [r for r in RUNTIMES if runtime_installed(split_runtime(r)[0])]


def require_runtime(engine: str, *, needed_for: str) -> None:
    """Raise a one-line error naming the extra when ``engine``'s package is missing.

    Raises:
        ModelError: ``onnxruntime`` or ``openvino`` is not installed.
    """
    if engine != "torch" and not runtime_installed(engine):
        package, extra = EXTRAS[engine]
        raise ModelError(
            f"{needed_for} needs {package}, which is not installed: pip install '{extra}'"
        )


def thread_count() -> int:
    """Threads a runtime gets: torch's setting (the CLI sets it for the machine)."""
    import torch

    return max(1, int(torch.get_num_threads()))


class OnnxRuntimeNetwork:
    """An ONNX file run by ONNX Runtime on the CPU, called like the PyTorch network."""

    runtime = "onnx"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or thread_count()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # no busy-waiting between calls: the torch work around the network needs the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{path}: ONNX Runtime cannot open it: {_first_line(exc)}") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        import torch

        array = np.ascontiguousarray(windows.detach().cpu().numpy(), dtype=np.float32)
        output = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(output)


class OpenVinoNetwork:
    """An OpenVINO IR (or ONNX) file compiled for the CPU, called like the PyTorch network.

    ``INFERENCE_PRECISION_HINT`` is fixed to ``f32``: on CPUs with AMX, OpenVINO would
    otherwise run float32 networks in bfloat16 (int8 files keep their int8 layers).
    """

    runtime = "openvino"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import openvino as ov

        config = {
            "INFERENCE_NUM_THREADS": threads or thread_count(),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        try:
            core = ov.Core()
            self.compiled = core.compile_model(str(path), "CPU", config)
        except Exception as exc:  # openvino raises RuntimeError with a long C++ trace
            raise ModelError(f"{path}: OpenVINO cannot compile it: {_first_line(exc)}") from None
        self.request = self.compiled.create_infer_request()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        import torch

        array = np.ascontiguousarray(windows.detach().cpu().numpy(), dtype=np.float32)
        self.request.infer({0: array})
        output = self.request.get_output_tensor(0).data
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _entry(exports: Sequence[ExportEntry], member: str, engine: str, precision: str) -> ExportEntry:
    """The export entry that ``runtime`` runs for ``member``: for OpenVINO its IR, or else
    the ONNX file of the same precision (OpenVINO reads ONNX too)."""
    for runtime in (engine, "onnx") if engine == "openvino" else (engine,):
        for entry in exports:
            if (entry.member, entry.runtime, entry.precision) == (member, runtime, precision):
                return entry
    raise LookupError(member)


def exported_runtimes(exports: Sequence[ExportEntry], members: Sequence[str]) -> list[str]:
    """Runtimes (beside torch) that the exports cover for every one of ``members``."""
    held = []
    for runtime in RUNTIMES[1:]:
        engine, precision = split_runtime(runtime)
        try:
            for member in members:
                _entry(exports, member, engine, precision)
        except LookupError:
            continue
        held.append(runtime)
    return held


def _checked_file(member_dir: Path, name: str, sha256: str | None, *, verify: bool) -> Path:
    path = member_dir / name
    if not path.is_file():
        raise ModelError(f"{path}: the exported file is missing; run medres export again")
    if verify and sha256 is not None and sha256_file(path) != sha256:
        raise ModelError(
            f"{path}: sha256 does not match model.json; the file was changed or damaged "
            "(run medres export again)"
        )
    return path


def load_runtime_network(
    member_dir: Path,
    exports: Sequence[ExportEntry],
    member: str,
    runtime: str,
    *,
    verify: bool = True,
) -> OnnxRuntimeNetwork | OpenVinoNetwork:
    """Open ``member``'s exported network for ``runtime`` (``onnx``, ``openvino-int8``...).

    Raises:
        ModelError: The runtime's package is missing (names the extra), the model folder
            holds no export for it (names the command), or the file is missing, changed
            or cannot be opened.
    """
    engine, precision = split_runtime(runtime)
    require_runtime(engine, needed_for=f"--runtime {runtime}")
    try:
        entry = _entry(exports, member, engine, precision)
    except LookupError:
        raise ModelError(
            f"{member_dir.parent}: member {member} has no {runtime} export; "
            f"run: {export_command(member_dir.parent, runtime)}"
        ) from None
    path = _checked_file(member_dir, entry.file, entry.sha256, verify=verify)
    if entry.data_file is not None:
        _checked_file(member_dir, entry.data_file, entry.data_sha256, verify=verify)
    if engine == "onnx":
        return OnnxRuntimeNetwork(path)
    return OpenVinoNetwork(path)


# ---- writing exports -------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """How an exported file's logits compare with the PyTorch network's."""

    max_abs_logit_difference: float
    label_agreement: float
    foreground_dice: float


def export_onnx(net: nn.Module, window: Sequence[int], path: Path) -> None:
    """Trace ``net`` (eval mode, CPU) on a ``(1, *window)`` input into ``path``.

    The batch axis is dynamic; the window is fixed.

    Raises:
        ModelError: The exporter (or its ``onnx`` dependency) fails.
    """
    require_runtime("onnx", needed_for="medres export")
    import torch

    example = torch.zeros((1, *window), dtype=torch.float32)
    dims = len(window) - 1
    try:
        # the TorchScript exporter (dynamo=False) warns that it is the legacy one; it is
        # the one that needs no onnxscript and gives the same graph for these networks
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net.cpu().eval(),
                (example,),
                str(path),
                input_names=["windows"],
                output_names=["logits"],
                dynamic_axes={"windows": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many kinds
        raise ModelError(
            f"{path}: cannot export the {dims}D network to ONNX: {_first_line(exc)}"
        ) from None


class _CalibrationReader:
    """ONNX Runtime's calibration data reader over windows ``(N, C, ...)``, two at a time."""

    def __init__(self, windows: npt.NDArray[np.float32], input_name: str) -> None:
        self.batches: Iterator[dict[str, npt.NDArray[np.float32]]] = iter(
            {input_name: np.ascontiguousarray(windows[i : i + 2])}
            for i in range(0, len(windows), 2)
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self.batches, None)


def quantize_int8(source: Path, target: Path, windows: npt.NDArray[np.float32]) -> None:
    """Static int8 quantisation of an ONNX file, calibrated on ``windows`` (min-max).

    QDQ format, symmetric int8 weights per output channel and int8 activations, which
    both ONNX Runtime and OpenVINO run as int8 kernels.

    Raises:
        ModelError: onnxruntime is missing or the quantiser fails.
    """
    require_runtime("onnx", needed_for="medres export --int8")
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(source),
                str(target),
                _CalibrationReader(windows, "windows"),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    except Exception as exc:  # the quantiser raises many kinds
        raise ModelError(f"{source}: int8 quantisation failed: {_first_line(exc)}") from None
    finally:
        for leftover in source.parent.glob("*-inferred.onnx"):
            leftover.unlink(missing_ok=True)


def quantize_openvino_int8(source: Path, target: Path, windows: npt.NDArray[np.float32]) -> Path:
    """Post-training int8 quantisation of an OpenVINO IR with NNCF, calibrated on
    ``windows`` (one at a time); writes ``target`` (``.xml``) and its ``.bin``.

    Raises:
        ModelError: nncf or openvino is missing, or the quantiser fails.
    """
    require_runtime("openvino", needed_for="medres export --format openvino --int8")
    require_runtime("nncf", needed_for="medres export --format openvino --int8")
    import logging

    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.ERROR)
    import nncf

    samples = [np.ascontiguousarray(windows[i : i + 1]) for i in range(len(windows))]
    try:
        # NNCF's notes on its dependencies and its progress bars (printed to stdout) are
        # not the user's business: medres export prints its own table
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            model = ov.Core().read_model(str(source))
            # the default (performance) preset: symmetric activations, which the CPU's
            # int8 kernels take directly (the mixed preset measured 1.8x slower here)
            quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
            ov.save_model(quantized, str(target), compress_to_fp16=False)
    except Exception as exc:  # nncf and openvino raise many kinds
        raise ModelError(f"{source}: NNCF int8 quantisation failed: {_first_line(exc)}") from None
    return target.with_suffix(".bin")


def convert_openvino(source: Path, target: Path) -> Path:
    """Convert an ONNX file to OpenVINO IR (``target`` ``.xml`` + its ``.bin``), float32.

    Raises:
        ModelError: openvino is missing or cannot convert the file.
    """
    require_runtime("openvino", needed_for="medres export --format openvino")
    import openvino as ov

    try:
        model = ov.convert_model(str(source))
        ov.save_model(model, str(target), compress_to_fp16=False)
    except Exception as exc:  # openvino raises RuntimeError with a C++ trace
        raise ModelError(f"{source}: OpenVINO cannot convert it: {_first_line(exc)}") from None
    return target.with_suffix(".bin")


def compare_logits(
    reference: Callable[[Any], Any],
    candidate: Callable[[Any], Any],
    inputs: npt.NDArray[np.float32],
) -> CheckResult:
    """Largest logit difference, arg-max agreement and foreground Dice (voxels whose
    arg-max is not the background) of two networks on ``inputs``."""
    import torch

    worst, same, total, both, either = 0.0, 0, 0, 0, 0
    with torch.inference_mode():
        for start in range(0, len(inputs), 2):
            batch = torch.from_numpy(np.ascontiguousarray(inputs[start : start + 2]))
            ref = reference(batch).float()
            out = candidate(batch).float()
            worst = max(worst, float((ref - out).abs().max()))
            ref_labels, out_labels = ref.argmax(1), out.argmax(1)
            same += int((ref_labels == out_labels).sum())
            total += int(ref_labels.numel())
            both += int(((ref_labels > 0) & (out_labels > 0)).sum())
            either += int((ref_labels > 0).sum() + (out_labels > 0).sum())
    return CheckResult(
        max_abs_logit_difference=worst,
        label_agreement=same / max(total, 1),
        foreground_dice=2 * both / either if either else 1.0,
    )


__all__ = [
    "EXTRAS",
    "FILE_NAMES",
    "OPSET",
    "RUNTIMES",
    "CheckResult",
    "OnnxRuntimeNetwork",
    "OpenVinoNetwork",
    "check_runtime_name",
    "compare_logits",
    "convert_openvino",
    "export_command",
    "export_onnx",
    "exported_runtimes",
    "installed_runtimes",
    "load_runtime_network",
    "quantize_int8",
    "quantize_openvino_int8",
    "require_runtime",
    "runtime_installed",
    "split_runtime",
    "thread_count",
]
