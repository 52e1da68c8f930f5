"""Benchmark the member networks on every runtime, and their FLOP rate against this CPU's.

Run from the repository root (with the project's environment and the extras
``medres[onnx,openvino]`` installed)::

    python benchmarks/bench_runtime.py [--lgg-model DIR] [--brats-model DIR] [--repeats 10]

For each network, the windows that ``medres predict`` feeds it (the pipeline's
``roi_size`` at its ``sw_batch_size``, and the one-window batch a 256x256 LGG slice
gives), side by side in one process, the same input for every row:

* ``torch eager fp32`` (the reference: what ``--runtime torch`` runs),
* ``torch bf16 autocast`` (for the record: not a medres runtime),
* ``ONNX Runtime fp32`` / ``OpenVINO fp32`` (``--runtime onnx`` / ``openvino``),
* ``ONNX Runtime int8`` (``--runtime onnx-int8``: ONNX Runtime's QDQ file) and
  ``OpenVINO int8 (NNCF)`` (``--runtime openvino-int8``: the IR quantised by NNCF), and
  for the record ``OpenVINO on the QDQ file``; all calibrated on random-normal windows,
  so their logit differences here say nothing about accuracy (``bench_predict.py``
  measures that on real scans).

Each row: median milliseconds per call over ``--repeats`` calls after two warm-ups, the
speed against torch eager, the network's GFLOP/s (multiply-adds x 2, counted by
``torch.utils.flop_counter`` on the forward pass) and that rate against the **conv peak**:
the best GFLOP/s that torch reaches on this CPU for one large 3x3 (2D) or 3x3x3 (3D)
convolution (256 -> 256 channels at 64x64, or 64 -> 64 at 48x48x48), measured in the
same run. Threads: torch's default (one per core), the same count for every runtime.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def _median_ms(call: Callable[[], Any], repeats: int) -> float:
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def conv_peak_gflops(dims: int, repeats: int) -> float:
    """Best GFLOP/s of torch on one large 3x3(x3) convolution, float32."""
    import torch

    if dims == 2:
        conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False)
        x = torch.randn(1, 256, 64, 64)
        flops = 2 * 256 * 256 * 9 * 64 * 64
    else:
        conv = torch.nn.Conv3d(64, 64, 3, padding=1, bias=False)
        x = torch.randn(2, 64, 48, 48, 48)
        flops = 2 * 2 * 64 * 64 * 27 * 48**3
    conv.eval()
    with torch.inference_mode():
        ms = _median_ms(lambda: conv(x), repeats)
    return flops / (ms / 1000.0) / 1e9


def forward_flops(net: Any, x: Any) -> int:
    """FLOPs of one forward pass (torch's counter: 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(x)
    return int(counter.get_total_flops())


def _networks(lgg: Path | None, brats: Path | None) -> list[tuple[str, Any, Any, list[int]]]:
    """``(name, pipeline, network, batch sizes)``: trained members when given, else fresh
    networks of the bundled pipelines (same shapes and FLOPs, other weights)."""
    from medres.models.folder import ModelFolder
    from medres.models.registry import build_pipeline_network
    from medres.pipeline import load_pipeline

    found = []
    for name, folder_path, pipeline in (
        ("LGG 2D res-UNet", lgg, REPO_ROOT / "pipelines" / "lgg_flair_2d.yaml"),
        ("BraTS 3D res-UNet", brats, REPO_ROOT / "pipelines" / "brats_wt_3d.yaml"),
        ("demo CT 3D res-UNet", REPO_ROOT / "models" / "demo_ct_3d", None),
    ):
        if folder_path is not None and Path(folder_path).is_dir():
            folder = ModelFolder.open(folder_path)
            cfg, net = folder.pipeline, folder.load_network(folder.members[0])
        else:
            assert pipeline is not None
            cfg = load_pipeline(pipeline)
            net = build_pipeline_network(cfg).eval()
        batches = sorted({1, cfg.inference.sw_batch_size})
        found.append((name, cfg, net, batches))
    return found


def main() -> None:
    """Long: one table over networks x runtimes; each step is a few lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lgg-model", type=Path, default=None)
    parser.add_argument("--brats-model", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from medres.models.exported import (
        OnnxRuntimeNetwork,
        OpenVinoNetwork,
        convert_openvino,
        export_onnx,
        quantize_int8,
        quantize_openvino_int8,
        runtime_installed,
    )
    from medres.runtime import tune_allocator

    tune_allocator()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peaks = {d: conv_peak_gflops(d, args.repeats) for d in (2, 3)}
    print(f"conv peak (torch fp32): 2D {peaks[2]:.1f} GFLOP/s, 3D {peaks[3]:.1f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg, net, batches in _networks(args.lgg_model, args.brats_model):
            window = (len(cfg.channels), *cfg.roi_size)
            onnx_path = Path(tmp) / f"{len(rows)}.onnx"
            export_onnx(net, window, onnx_path)
            calibration = np.random.default_rng(0).standard_normal((4, *window), np.float32)
            int8_path = onnx_path.with_suffix(".int8.onnx")
            quantize_int8(onnx_path, int8_path, calibration)  # ONNX Runtime's QDQ
            ir_path = onnx_path.with_suffix(".xml")
            convert_openvino(onnx_path, ir_path)
            ir_int8_path = onnx_path.with_suffix(".int8.xml")
            quantize_openvino_int8(ir_path, ir_int8_path, calibration)  # NNCF
            runners: dict[str, Callable[[Any], Any]] = {"torch eager fp32": net}

            def bf16(x: Any, net: Any = net) -> Any:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return net(x)

            runners["torch bf16 autocast"] = bf16
            if runtime_installed("onnx"):
                runners["ONNX Runtime fp32"] = OnnxRuntimeNetwork(onnx_path)
                runners["ONNX Runtime int8"] = OnnxRuntimeNetwork(int8_path)
            if runtime_installed("openvino"):
                runners["OpenVINO fp32"] = OpenVinoNetwork(ir_path)
                runners["OpenVINO int8 (NNCF)"] = OpenVinoNetwork(ir_int8_path)
                runners["OpenVINO on the QDQ file"] = OpenVinoNetwork(int8_path)
            for batch in batches:
                x = torch.randn(batch, *window)
                flops = forward_flops(net, x)
                reference = None
                for runtime, run in runners.items():
                    with torch.inference_mode():
                        ms = _median_ms(lambda run=run, x=x: run(x), args.repeats)
                        out = run(x).float()
                    if reference is None:
                        reference, torch_ms = out, ms
                    gflops = flops / (ms / 1000.0) / 1e9
                    rows.append(
                        (
                            name,
                            f"{batch} x {'x'.join(map(str, cfg.roi_size))}",
                            runtime,
                            ms,
                            torch_ms / ms,
                            gflops,
                            gflops / peaks[cfg.dims],
                            float((out - reference).abs().max()),
                            flops / 1e9,
                        )
                    )
                    print(f"  {name} batch {batch} {runtime}: {ms:.1f} ms", flush=True)
    print()
    print(
        "| network | windows | runtime | ms per call | speed vs torch | GFLOP/s | "
        "of conv peak | max abs logit diff | GFLOP per call |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, shape, runtime, ms, speed, gflops, share, diff, gf in rows:
        print(
            f"| {name} | {shape} | {runtime} | {ms:.1f} | {speed:.2f}x | {gflops:.1f} | "
            f"{100 * share:.0f} % | {diff:.1e} | {gf:.2f} |"
        )


if __name__ == "__main__":
    main()
