"""Member weights: read within the memory budget, loaded safely, checked to fit.

A ``model.pt`` must be a torch.save zip file of plain, dense, finite tensors (loaded with
``torch.load(weights_only=True)``, never unpickled otherwise) whose keys and shapes fit
the pipeline's network. Every refusal is one :class:`~medres.errors.ModelError` line
naming the file; torch's own text (which suggests unsafe loading) is never repeated.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from medres.errors import ConfigError, ModelError
from medres.io.files import open_regular
from medres.limits import check_allocation
from medres.models.manifest import PIPELINE
from medres.models.registry import build_model
from medres.pipeline import PipelineConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

_DAMAGED = "the member is damaged: retrain it or restore the file"


def _read_weights(path: Path, *, shown: Path) -> bytes:
    """All bytes of a weights file, refusing non-regular files and files above the budget."""
    with open_regular(path, error=ModelError, what="member weights") as handle:
        size = os.fstat(handle.fileno()).st_size
        too_big = check_allocation("reading the weights", size)
        if too_big:
            raise ModelError(f"{shown}: {too_big}")
        try:
            data = handle.read(size + 1)
        except OSError as exc:
            raise ModelError(
                f"{shown}: cannot read member weights: {exc.strerror or exc}"
            ) from None
    if len(data) != size:
        raise ModelError(f"{shown}: member weights changed size while being read")
    return data


def _load_state(data: bytes, *, shown: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``data``: a zip-format torch file of plain tensors, all finite.

    Raises:
        ModelError: Never with torch's own text (which suggests unsafe loading).
    """
    import torch

    problem = _zip_problem(data)
    if problem:
        raise ModelError(f"{shown}: {problem}; {_DAMAGED}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # every torch.load failure means a damaged member
        if "weights only load failed" in str(exc).lower():
            reason = (
                "holds pickled objects other than tensors, which medres never unpickles "
                "(it may be a checkpoint, or a hostile file)"
            )
        else:
            reason = f"not a readable PyTorch weights file ({type(exc).__name__})"
        raise ModelError(f"{shown}: {reason}; {_DAMAGED}") from None
    if not isinstance(state, dict):
        raise ModelError(
            f"{shown}: holds {_a(type(state).__name__)}, not a state dict of tensors; {_DAMAGED}"
        )
    bad_finite: list[tuple[str, int]] = []
    for key, value in state.items():
        shown_key = str(key) if len(str(key)) <= 60 else str(key)[:57] + "..."
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(
                f"{shown}: entry {shown_key!r} is {_a(type(value).__name__)}, not a tensor; "
                f"model.pt must be a plain state dict: {_DAMAGED}"
            )
        if value.layout != torch.strided or value.is_quantized:
            raise ModelError(
                f"{shown}: tensor {shown_key!r} is not a plain dense tensor; {_DAMAGED}"
            )
        if value.is_floating_point() or value.is_complex():
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad_finite.append((shown_key, count))
    if bad_finite:
        key, count = bad_finite[0]
        more = f" (and {len(bad_finite) - 1} more tensors)" if len(bad_finite) > 1 else ""
        raise ModelError(f"{shown}: {count} non-finite values in {key!r}{more}; {_DAMAGED}")
    return state


def _a(noun: str) -> str:
    """``noun`` with its indefinite article (``an int``, ``a list``)."""
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def _zip_problem(data: bytes) -> str | None:
    """Why ``data`` is not a torch.save zip file medres loads, or None."""
    if not data.startswith(b"PK\x03\x04"):
        return "not a PyTorch weights file (torch.save zip format expected)"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return "not a PyTorch weights file (a damaged zip archive)"
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        return "compressed entries in the weights file (torch.save writes them uncompressed)"
    if sum(e.file_size for e in entries) > len(data):
        return "its zip directory declares more data than the file holds"
    return None


def _fit_problem(net: nn.Module, state: dict[str, torch.Tensor], cfg: PipelineConfig) -> str | None:
    """Why ``state`` does not fit ``net`` (keys, shapes, output channels vs labels), or None."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong):
        return None
    n_labels = len(cfg.labels)
    outputs = _weights_output_channels(state, expected, n_labels, wrong, cfg)
    if outputs is not None:
        return (
            f"the weights have {outputs} output channels but {PIPELINE} lists {n_labels} "
            f"labels {list(cfg.labels)}; the labels contradict the weights: use the "
            "pipeline.yaml the member was trained with"
        )
    if wrong:
        key = wrong[0]
        return (
            f"weights do not fit the pipeline's model ({cfg.model.name}): {key!r} has shape "
            f"{tuple(state[key].shape)} where {tuple(expected[key].shape)} is needed"
            f"{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''}; "
            "use the pipeline.yaml the member was trained with"
        )
    detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
    return (
        f"weights do not fit the pipeline's model ({cfg.model.name}): {detail} "
        f"({len(missing)} missing, {len(unexpected)} unexpected tensors); "
        "use the pipeline.yaml the member was trained with"
    )


def _weights_output_channels(
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    n_labels: int,
    wrong: list[str],
    cfg: PipelineConfig,
) -> int | None:
    """The output channel count of ``state`` when only that differs from the pipeline's."""
    if not wrong or any(k not in state for k in expected) or len(state) != len(expected):
        return None
    candidates: set[int] = set()
    for key in wrong:
        have, need = tuple(state[key].shape), tuple(expected[key].shape)
        if len(have) != len(need):
            return None
        axes = [i for i in range(len(need)) if have[i] != need[i]]
        if any(need[i] != n_labels for i in axes):
            return None
        candidates.update(have[i] for i in axes)
    if len(candidates) != 1:
        return None
    outputs = candidates.pop()
    if not 1 <= outputs <= 4096:
        return None
    try:
        other = build_model(
            cfg.model.name,
            dims=cfg.dims,
            in_channels=len(cfg.channels),
            out_channels=outputs,
            params=dict(cfg.model.params),
        ).state_dict()
    except (ConfigError, RuntimeError):
        return None
    fits = all(k in other and other[k].shape == v.shape for k, v in state.items())
    return outputs if fits else None
