"""The shipped defaults route a multi-frame CT as they route the single-frame series it was made from.

The shared CT converted to one Legacy Converted Enhanced CT and to one Enhanced CT object
(tests/multiframe.py), indexed through the real ``describe_instance`` and ``Ingest`` (SQLite and
PostgreSQL): the same orientation, thickness and extent from the functional groups, 20 images in one
instance, the same rule verdicts, and reasons that count images say "multi-frame".
"""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from dicom_node.workflow.criteria import series_extent
from tests.conftest import CT_DIR
from tests.jobs.test_routing import Indexed, _rule
from tests.multiframe import enhanced_ct, legacy_converted_ct


@pytest.fixture
def indexed_anywhere(tmp_path, database_url):
    index = Indexed(tmp_path, database_url)
    yield index
    index.database.dispose()


@pytest.mark.parametrize("convert", [legacy_converted_ct, enhanced_ct], ids=["legacy", "enhanced"])
def test_multiframe_ct_is_routed_like_its_single_frame_series(indexed_anywhere, tmp_path, convert):
    slices = sorted(CT_DIR.glob("*.dcm"))
    single_uid = indexed_anywhere.add(slices)
    multi_uid = indexed_anywhere.add([convert(slices, tmp_path / "mf.dcm", study_uid=generate_uid())])
    (single,) = indexed_anywhere.study(single_uid).series
    (multi,) = indexed_anywhere.study(multi_uid).series
    assert (multi.num_instances, multi.num_frames, single.num_frames) == (1, 20, 20)
    for attribute in (
        "orientation",
        "slice_thickness",
        "slice_position_min",
        "slice_position_max",
        "modality",
    ):
        assert getattr(multi, attribute) == getattr(single, attribute), attribute
    assert series_extent(multi) == series_extent(single) == 41.0

    decisions = [indexed_anywhere.route(uid) for uid in (single_uid, multi_uid)]
    assert [[m.pipeline for m in d.matches] for d, _ in decisions] == [["ct-vertebrae"], ["ct-vertebrae"]]
    (_, single_explained), (_, multi_explained) = decisions
    vertebrae = _rule(multi_explained, "ct-vertebrae")
    assert vertebrae.chosen.id == multi.id
    assert vertebrae.why_chosen == (
        "thinnest of 1 qualifying series (3 mm, 20 images, multi-frame: 20 frames in 1 instance)"
    )
    # The nodule route refuses both for the same reason, counted in images; the multi-frame one says so.
    assert _rule(single_explained, "ct-lung-nodules").series[0].reason == "num_instances 20 is not >= 40"
    assert (
        _rule(multi_explained, "ct-lung-nodules").series[0].reason
        == "num_instances 20 (multi-frame: 20 frames in 1 instance) is not >= 40"
    )
