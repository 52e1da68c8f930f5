"""What makes an earlier prediction of a scan reusable (``--resume``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medres.inference.batch import PredictOptions, open_ensembles
from medres.inference.resume import fingerprint

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo_ct_3d"


@pytest.mark.parametrize(
    "changed",
    [
        {"report_phi": True},
        {"report_pdf": True},
        {"keep_members": True},
        {"save_probabilities": True},
        {"tta": False},
        {"overlap": 0.25},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_option_that_changes_an_output_changes_the_fingerprint(
    changed: dict[str, object],
) -> None:
    base = PredictOptions(report=True)
    (ensemble,) = open_ensembles([DEMO], options=base)
    other = PredictOptions(**{"report": True, **changed})  # type: ignore[arg-type]
    assert fingerprint(ensemble, base) != fingerprint(ensemble, other)
    assert fingerprint(ensemble, base) == fingerprint(ensemble, PredictOptions(report=True))
