"""Results of untrained weights say so where a reader looks first; scores are coded for what they are."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dicom_node.reports import (
    LABELMAP_PROFILE,
    OHIF_PROFILE,
    UNTRAINED_NOTICE,
    CompanionType,
    ReportProfile,
    ResultBasis,
    write_results,
)
from dicom_node.reports import codes as c
from dicom_node.reports.naming import series_description
from dicom_node.reports.readback import read_classification, read_notices
from pipelines.findings import ModelInfo, ScoreKind

from .conftest import classification_result, nodule_result, untrained, vertebra_result
from .data import ct_series, cxr
from .tools import reread, run_dcmtk

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
PROFILES = (ReportProfile(companion=CompanionType.SECONDARY_CAPTURE), OHIF_PROFILE, LABELMAP_PROFILE)


def _cases():
    return (
        (classification_result(ScoreKind.CALIBRATED), [cxr()]),
        (nodule_result(), list(ct_series())),
        (vertebra_result(), list(ct_series())),
    )


def test_every_object_of_untrained_weights_is_marked_first(tmp_path: Path) -> None:
    for result, sources in _cases():
        for profile in PROFILES:
            marked = write_results(
                untrained(result), sources, profile, basis=ResultBasis.of_sources(sources, WHEN)
            )
            for ds in map(reread, marked):
                description = str(ds.SeriesDescription)
                assert description.startswith("UNTRAINED AI ") and len(description) <= 64
                assert "scaffold-0123abcd" in description  # the version survives the 64-character cut
                if ds.Modality == "SR":
                    assert read_notices(ds) == [UNTRAINED_NOTICE]
                    path = tmp_path / "sr.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    rendered = run_dcmtk("dsr2html", path, references_labelmap=profile is LABELMAP_PROFILE)
                    assert UNTRAINED_NOTICE in rendered.stdout
                if ds.Modality == "SEG":
                    assert {str(s.SegmentDescription) for s in ds.SegmentSequence} == {UNTRAINED_NOTICE}
                    assert str(ds.ContentDescription).startswith("UNTRAINED ")
            trained = write_results(result, sources, profile)
            for ds in trained:
                assert not str(ds.SeriesDescription).startswith("UNTRAINED")
                if ds.Modality == "SR":
                    assert read_notices(ds) == []
                if ds.Modality == "SEG":
                    assert all("SegmentDescription" not in s for s in ds.SegmentSequence)


def test_the_mark_is_never_cut_off() -> None:
    model = ModelInfo("txrv-densenet121-res224-all", "scaffold-0123abcd", untrained=True)
    text = series_description("cxr-classification", model, "SR for OHIF")
    assert text == "UNTRAINED AI cxr-classification SR for OHIF (scaffold-0123abcd)"
    long = ModelInfo("m" * 80, "v" * 80, untrained=True)
    assert series_description("p", long, "SEG").startswith("UNTRAINED AI p SEG (")
    assert len(series_description("p", long, "SEG")) == 64
    trained = ModelInfo("monai-wholebody-ct-segmentation", "0.2.5")
    assert series_description("ct-vertebrae", trained, "SEG") == (
        "AI ct-vertebrae SEG (monai-wholebody-ct-segmentation 0.2.5)"
    )


@pytest.mark.parametrize("profile", [ReportProfile(), OHIF_PROFILE])
def test_calibrated_scores_are_not_coded_as_probabilities(profile: ReportProfile) -> None:
    result = classification_result(ScoreKind.CALIBRATED)
    (sr,) = write_results(result, [cxr()], profile)
    codes = {(str(item.CodeValue), str(item.CodingSchemeDesignator)) for item in _codes(sr)}
    assert (c.PROBABILITY.value, "DCM") not in codes
    assert (c.CALIBRATED_SCORE.value, c.PRIVATE_SCHEME) in codes
    assert c.PRIVATE_SCHEME in {str(i.CodingSchemeDesignator) for i in sr.CodingSchemeIdentificationSequence}
    read = read_classification(reread(sr))
    assert {f.score_kind for f in read} == {ScoreKind.CALIBRATED}
    assert [(f.score, f.threshold, f.positive) for f in read] == [
        (f.score, f.threshold, f.positive) for f in result.findings
    ]
    probability = classification_result(ScoreKind.PROBABILITY)
    (sr,) = write_results(probability, [cxr()], profile)
    assert {f.score_kind for f in read_classification(reread(sr))} == {ScoreKind.PROBABILITY}


def _codes(ds):
    """Every coded item (a dataset with Code Value and Coding Scheme Designator) anywhere in ``ds``."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                if "CodeValue" in item and "CodingSchemeDesignator" in item:
                    yield item
                yield from _codes(item)
