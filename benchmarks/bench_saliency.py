"""Benchmark the saliency maps of ``--explain``: seconds per lesion next to the prediction.

Run from the repository root::

    python benchmarks/bench_saliency.py --model MODEL_DIR --scans SCANS [--lesions 3]
        [--monai-default]

For the first scans of SCANS holding a lesion, each is predicted once (torch, the
pipeline's TTA) and then, per lesion,

* ``medres``: :func:`medres.inference.saliency.lesion_saliency`: MONAI's
  OcclusionSensitivity of the ensemble's lesion score, the networks seeing a patch-sized
  window and the occlusion limited to the lesion's box and margin (``b_box``), the
  occluder sized to keep the positions bounded (``MAX_POSITIONS``);
* ``monai default`` (with ``--monai-default``, 2D only: in 3D it takes hours): the same
  score with OcclusionSensitivity's defaults (16-voxel mask, overlap 0.6) over the whole
  window.

It prints one row per lesion: the scan's prediction seconds, the saliency seconds and
how many occluded positions each way evaluated.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def _monai_default(ensemble, volume, label_map, lesion) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Seconds and positions of OcclusionSensitivity's defaults on the same target."""
    import torch
    from monai.visualize import OcclusionSensitivity

    from medres.inference.postprocess import label_components
    from medres.inference.saliency import _LesionScore

    runner = ensemble.runners[0]
    cfg = runner.folder.pipeline
    label = cfg.labels.index(lesion.label)
    start = time.perf_counter()
    tensor, _ = ensemble._preprocess(runner, volume, "bench")
    components, _ = label_components(label_map == label)
    mask = torch.as_tensor(components == components[tuple(round(c) for c in lesion.center_ijk)])
    networks = [runner.folder.load_network(m, device="cpu") for m in runner.members]
    scorer = _LesionScore(networks, label, mask[None])
    occlusion = OcclusionSensitivity(scorer, verbose=False, activate=False)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        occlusion(tensor[None].float())
    step = 16 * (1 - 0.6)
    positions = int(np.prod([np.ceil(n / step) for n in tensor.shape[1:]]))
    return time.perf_counter() - start, positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--scans", type=Path, required=True)
    parser.add_argument("--lesions", type=int, default=3, help="lesions to time")
    parser.add_argument("--monai-default", action="store_true")
    args = parser.parse_args()

    from medres.inference.batch import PredictOptions, open_ensembles
    from medres.inference.inputs import assemble_inputs, load_input
    from medres.inference.saliency import MAX_POSITIONS, lesion_saliency
    from medres.inference.writer import scan_lesions
    from medres.io import discover

    (ensemble,) = open_ensembles([args.model], options=PredictOptions(runtime="torch"))
    items, _ = assemble_inputs(discover(args.scans), channel_sets=[ensemble.cfg.channels])
    rows = []
    for item in items:
        if len(rows) >= args.lesions:
            break
        volume = load_input(item)
        start = time.perf_counter()
        prediction = ensemble.predict(volume, source=item.name)
        predict_s = time.perf_counter() - start
        for lesion in scan_lesions(ensemble, prediction)[: args.lesions - len(rows)]:
            found = lesion_saliency(ensemble, volume, prediction.label_map, lesion)
            default = "-"
            if args.monai_default and ensemble.cfg.dims == 2:
                seconds, positions = _monai_default(ensemble, volume, prediction.label_map, lesion)
                default = f"{seconds:.2f} s ({positions} positions)"
            rows.append((item.scan_id, lesion.lesion_id, predict_s, found.seconds, default))
    bound = MAX_POSITIONS[ensemble.cfg.dims]
    print(
        f"| scan | lesion | predict s | medres saliency s (<= {bound} positions) | MONAI defaults |"
    )
    print("|---|---|---|---|---|")
    for scan_id, lesion_id, predict_s, seconds, default in rows:
        print(f"| {scan_id} | {lesion_id} | {predict_s:.2f} | {seconds:.2f} | {default} |")
    if rows:
        mean = sum(r[3] for r in rows) / len(rows)
        print(f"mean saliency {mean:.2f} s per lesion; prediction {rows[0][2]:.2f} s per scan")


if __name__ == "__main__":
    main()
