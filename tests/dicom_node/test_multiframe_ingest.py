"""A multi-frame CT received over the network is indexed with the geometry of its functional groups.

DCMTK ``storescu`` sends the shared CT as one Legacy Converted Enhanced CT and as one Enhanced CT object
(tests/multiframe.py) to a real node: the edge parses the functional groups (group 5200, after what it
reads of a single-frame image) and the index holds the orientation, thickness and slice range of the
frames, their number per instance, and 20 images per series, as for the 20 slices they came from.
"""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.index.models import Instance, Series
from dicom_node.storage.attributes import describe_instance
from tests.conftest import CT_DIR
from tests.dicom_node.test_ingest_peers import assert_stored_identical, storescu
from tests.multiframe import enhanced_ct, legacy_converted_ct


@pytest.mark.parametrize("convert", [legacy_converted_ct, enhanced_ct], ids=["legacy", "enhanced"])
def test_multiframe_ct_is_indexed_with_its_frames_geometry(make_settings, run_node, tmp_path, convert):
    slices = sorted(CT_DIR.glob("*.dcm"))
    path = convert(slices, tmp_path / "mf.dcm", study_uid=generate_uid())
    node = run_node(make_settings())
    port = node.address[1]
    for options, files in ((["-xv", "+sd"], str(CT_DIR)), (["-R"], str(path))):
        # -R: the files' own SOP classes (storescu's default list holds neither multi-frame class).
        sent = storescu(port, *options, files)
        assert sent.returncode == 0, sent.stderr
    assert_stored_identical(node, [path])
    series_uid = str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    with node.database.sessions() as session:
        multi = session.scalar(select(Series).where(Series.series_instance_uid == series_uid))
        single = session.scalar(select(Series).where(Series.series_instance_uid != series_uid))
        assert multi is not None and single is not None
        (instance,) = session.scalars(select(Instance).where(Instance.series_id == multi.id)).all()
        assert instance.number_of_frames == 20
        assert (multi.num_instances, multi.num_frames) == (1, 20)
        assert (single.num_instances, single.num_frames) == (20, 20)
        assert (multi.orientation, multi.slice_thickness) == (single.orientation, single.slice_thickness)
        assert (multi.orientation, multi.slice_thickness) == ("axial", 3.0)
        assert (multi.slice_position_min, multi.slice_position_max) == (-804.5, -766.5)
        assert (single.slice_position_min, single.slice_position_max) == (-804.5, -766.5)


def test_multiframe_ct_without_frame_positions_is_kept_without_a_slice_range(tmp_path):
    """Functional groups that lack the frames' positions: the instance is described (and would be kept),
    with the orientation and thickness it does hold and no slice range, never refused."""
    path = legacy_converted_ct(sorted(CT_DIR.glob("*.dcm")), tmp_path / "mf.dcm")
    ds = dcmread(path, stop_before_pixels=True)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
    received = describe_instance(ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID))
    assert (received.number_of_frames, received.images) == (20, 20)
    assert (received.series["orientation"], received.series["slice_thickness"]) == ("axial", 3.0)
    assert received.slice_range is None and received.series["slice_position_min"] is None
