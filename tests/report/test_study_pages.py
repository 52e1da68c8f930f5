"""One report per patient folder, natural order everywhere, distinguishable member names."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from medres.cli.app import app
from medres.cli.evaluate import short_model_names
from medres.io.order import natural_key, natural_path_key
from medres.synthetic import write_photo_set
from tests.conftest import REPO

runner = CliRunner()


def test_natural_order() -> None:
    names = ["s_10", "s_2", "s_1", "S_3", "s_1a"]
    assert sorted(names, key=natural_key) == ["s_1", "s_1a", "s_2", "S_3", "s_10"]
    paths = ["a/x_10.png", "a2/x.png", "a/x_2.png", "a10/x.png"]
    assert sorted(paths, key=natural_path_key) == [
        "a/x_2.png",
        "a/x_10.png",
        "a2/x.png",
        "a10/x.png",
    ]


def test_member_names_stay_apart_at_any_width() -> None:
    assert short_model_names(["lgg.fold_0", "lgg.fold_1", "ensemble"]) == {
        "lgg.fold_0": "fold_0",
        "lgg.fold_1": "fold_1",
        "ensemble": "ensemble",
    }
    same_tail = ["a/x", "b/x", "ensemble"]
    assert short_model_names(same_tail) == {m: m for m in same_tail}


def test_a_patient_folder_gets_one_report_in_slice_order(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_photo_set(photos, n_cases=4)
    model = tmp_path / "model"
    pipeline = REPO / "pipelines" / "photo_lesion_2d.yaml"
    result = runner.invoke(
        app, ["train", str(pipeline), "--data", str(photos), "--out", str(model), "--no-tune"]
    )
    assert result.exit_code == 0, result.output
    scans = tmp_path / "scans"
    for index, n in enumerate((1, 2, 3, 4, 1, 2)):  # two "patients" of slices 1, 2, 10, 11...
        patient = scans / ("pat_a" if index < 4 else "pat_b")
        patient.mkdir(parents=True, exist_ok=True)
        number = (1, 2, 10, 11)[index % 4] if index < 4 else (3, 20)[index - 4]
        shutil.copy(photos / "images" / f"lesion_{n:02d}.png", patient / f"slice_{number}.png")
    out = tmp_path / "pred"
    result = runner.invoke(
        app, ["predict", str(scans), "--model", str(model), "--out", str(out), "--no-pdf"]
    )
    assert result.exit_code == 0, result.output
    pages = sorted((out / "studies").glob("*.html"))
    assert [p.name for p in pages] == ["pat_a.html", "pat_b.html"]
    page = pages[0].read_text()
    order = [page.index(f">slice_{n}<") for n in (1, 2, 10, 11)]
    assert order == sorted(order)  # slice 2 before slice 10
    assert "overlays/lesion_01.png" in page and "Findings, scan by scan" in page
    index = (out / "index.html").read_text()
    assert "studies/pat_a.html" in index and "studies/pat_b.html" in index
    rows = [index.index(f">slice_{n}<") for n in (1, 2, 3, 10, 11, 20)]
    assert rows == sorted(rows)
    # a study page lists what its scans' records hold: the same lesion count
    assert "4 scans" in page
