"""The committed sample data is what the generator writes, and loads as documented."""

from __future__ import annotations

import hashlib
import re

import numpy as np

from medres.io.discover import discover
from medres.io.load import load_mask, load_scan
from medres.io.volume import ScanKind
from medres.synthetic import write_sample_data
from tests.conftest import SAMPLE_DATA


def test_generator_reproduces_committed_sample_data_byte_for_byte(tmp_path):
    files = write_sample_data(tmp_path)
    readme = (SAMPLE_DATA / "README.md").read_text()
    listed = dict(re.findall(r"\| `([^`]+)` \| \d+ \| `([0-9a-f]{64})` \|", readme))
    assert len(listed) == len(files) == 63  # 50 + ct_train: 6 images, 6 labels, dataset.json
    for path in files:
        rel = path.relative_to(tmp_path).as_posix()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == listed[rel], rel
        assert (SAMPLE_DATA / rel).read_bytes() == path.read_bytes(), rel
    assert sum(p.stat().st_size for p in files) < 5 * 1024 * 1024


def test_sample_ct_dicom_and_nifti_are_the_same_scan():
    found = discover(SAMPLE_DATA)
    kinds = sorted(str(s.kind) for s in found.scans)
    assert kinds == ["dicom"] + ["image2d"] * 4 + ["nifti"] * 7
    # Decathlon layout: labelsTr/phantom_001 is the mask of imagesTr/phantom_001
    train = [s for s in found.scans if "imagesTr" in s.paths[0]]
    assert len(train) == 6 and all(s.mask_path and "labelsTr" in s.mask_path for s in train)
    dicom = next(s for s in found.scans if s.kind is ScanKind.DICOM)
    nifti = next(s for s in found.scans if s.scan_id == "ct_phantom")
    ct_dicom, ct_nifti = load_scan(dicom), load_scan(nifti)
    assert np.array_equal(ct_dicom.array, ct_nifti.array)
    assert np.allclose(ct_dicom.affine, ct_nifti.affine, atol=1e-4)
    assert ct_dicom.array.min() >= -1024 and ct_dicom.array.max() > 500  # HU: air .. bone
    mask = load_mask(nifti, ct_nifti)
    assert mask is not None and mask.array.max() == 1
    from scipy import ndimage

    assert ndimage.label(mask.array[0])[1] == 3  # three lesions
    lesion_hu = ct_nifti.array[0][mask.array[0] == 1]
    assert 70 < lesion_hu.mean() < 130
