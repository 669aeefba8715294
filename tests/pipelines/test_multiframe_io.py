"""The dciodvfy-clean multi-frame objects of tests/multiframe.py load as the series they were made from.

(``test_io.py`` loads a hand-built enhanced image and highdicom's JPEG 2000 legacy conversion; these are
the objects the routing and end-to-end tests send.)
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipelines.io.ct import load_ct_series
from tests.conftest import CT_DIR
from tests.multiframe import enhanced_ct, legacy_converted_ct


@pytest.mark.parametrize("convert", [legacy_converted_ct, enhanced_ct], ids=["legacy", "enhanced"])
def test_multiframe_object_loads_as_its_series_with_each_plane_on_its_frame(tmp_path, convert):
    slices = sorted(CT_DIR.glob("*.dcm"))
    path = convert(slices, tmp_path / "mf.dcm")
    volume, classic = load_ct_series([path]), load_ct_series(slices)
    np.testing.assert_array_equal(volume.voxels, classic.voxels)
    np.testing.assert_allclose(volume.affine_lps, classic.affine_lps)
    image = pydicom.dcmread(path, stop_before_pixels=True)
    frames = image.PerFrameFunctionalGroupsSequence
    for plane, (reference, original) in enumerate(
        zip(volume.source_images, classic.source_images, strict=True)
    ):
        assert reference.sop_instance_uid == image.SOPInstanceUID and reference.frame_number is not None
        position = frames[reference.frame_number - 1].PlanePositionSequence[0].ImagePositionPatient
        source = pydicom.dcmread(
            next(p for p in slices if original.sop_instance_uid in p.name), stop_before_pixels=True
        )
        assert [float(v) for v in position] == [float(v) for v in source.ImagePositionPatient], plane
