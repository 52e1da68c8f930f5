import numpy as np
import pytest

from medres.io.grid import voxel_to_world, world_to_voxel
from medres.io.volume import Volume, affine_from_dicom, orientation_codes


def test_dicom_axial_affine_maps_first_pixel_and_axes_to_ras():
    # axial slice: rows run patient-left (+x LPS), columns posterior (+y LPS)
    affine = affine_from_dicom(
        image_position_lps=[-100.0, -120.0, 30.0],
        row_direction_lps=[1, 0, 0],
        column_direction_lps=[0, 1, 0],
        pixel_spacing_mm=(0.5, 0.8),  # (between rows, between columns)
        slice_step_lps=[0, 0, 2.5],
    )
    assert voxel_to_world(affine, [0, 0, 0]).tolist() == [100.0, 120.0, 30.0]
    # x index = column: steps 0.8 mm toward patient left = -R
    assert voxel_to_world(affine, [1, 0, 0]).tolist() == [99.2, 120.0, 30.0]
    # y index = row: 0.5 mm toward posterior = -A
    assert voxel_to_world(affine, [0, 1, 0]).tolist() == [100.0, 119.5, 30.0]
    assert voxel_to_world(affine, [0, 0, 2]).tolist() == [100.0, 120.0, 35.0]
    assert orientation_codes(affine) == "LPS"


def test_world_to_voxel_inverts_voxel_to_world():
    affine = np.array([[0.0, 0.8, 0.1, 10], [0.7, 0, 0, -5], [0, 0, -2.5, 3], [0, 0, 0, 1]])
    ijk = np.array([[1.0, 2.0, 3.0], [16, 14, 8]])
    assert np.allclose(world_to_voxel(affine, voxel_to_world(affine, ijk)), ijk)


def test_volume_reports_spacing_and_shape_per_axis():
    vol = Volume(np.zeros((2, 17, 15, 9), np.float32), np.diag([2.5, 0.8, 0.6, 1.0]))
    assert vol.spatial_shape == (17, 15, 9)
    assert vol.n_channels == 2
    assert vol.spacing_mm == pytest.approx((2.5, 0.8, 0.6))


@pytest.mark.parametrize(
    ("shape", "message"),
    [((17, 15), "channel-first"), ((1, 2, 3, 4, 5), "channel-first")],
    ids=["no-channel-2d", "5d"],
)
def test_volume_rejects_arrays_without_channel_axis(shape, message):
    with pytest.raises(ValueError, match=message):
        Volume(np.zeros(shape), np.eye(4))
