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
    # Both CT routes take both (their content checks decide in the worker: docs/jobs.md), and say why
    # the multi-frame series was chosen in images, with its frames.
    both = ["ct-lung-nodules", "ct-vertebrae"]
    assert [sorted(m.pipeline for m in d.matches) for d, _ in decisions] == [both, both]
    (_, single_explained), (_, multi_explained) = decisions
    for pipeline in both:
        rule = _rule(multi_explained, pipeline)
        assert rule.chosen.id == multi.id
        assert rule.why_chosen == (
            "thinnest of 1 qualifying series (3 mm, 20 images, multi-frame: 20 frames in 1 instance)"
        )
        assert (
            _rule(single_explained, pipeline).why_chosen
            == "thinnest of 1 qualifying series (3 mm, 20 images)"
        )
