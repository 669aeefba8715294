"""Test-only pipelines loaded by workers as a ``[jobs]`` plugin. Plumbing only: they analyse nothing.

``fixed-cost`` sleeps ``DICOM_NODE_TEST_PIPELINE_SECONDS`` (default 0.2 s; for one modality
``DICOM_NODE_TEST_PIPELINE_SECONDS_<MODALITY>`` wins, so CT can be slow and DX fast) and reports how
many images it saw (``run_timed`` also gives the seconds of its ``load`` and ``inference`` stages); the
writer turns that into one Basic Text SR whose UIDs derive from (study,
pipeline, model version), as the real writers' do. With ``DICOM_NODE_TEST_WRITER_STAMP=1`` the SR also
says which process wrote it and when, so two runs of one job differ in their bytes (as writers that
stamp a content time do) and a test can tell whose object was kept.

``fixed-segmentation`` returns a fixed label map (a square labelled ``vertebrae_T12`` in the middle
of every slice) on the series it is given, and registers no writer: its results go through the real
writers (``dicom_node.reports``: SEG and TID 1500 SR), with the identity, predecessor and sharing
rules of a real job, without a network to run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipelines import findings as f
from pipelines.base import StageTimer

NAME = "fixed-cost"
VERSION = "test-1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str


@dataclass(frozen=True)
class FixedFindings:
    model: ModelInfo
    study_instance_uid: str
    images: int


class FixedCostPipeline:
    name = NAME
    model_version = VERSION

    def run_timed(self, paths: Sequence[Path]) -> tuple[FixedFindings, dict[str, float]]:
        """``load`` reads the first header, ``inference`` is the fixed sleep; seconds as timed."""
        timer = StageTimer()
        first = timer("load", lambda: dcmread(paths[0], stop_before_pixels=True))
        seconds = os.environ.get(f"DICOM_NODE_TEST_PIPELINE_SECONDS_{first.get('Modality', '')}")
        pause = float(seconds or os.environ.get("DICOM_NODE_TEST_PIPELINE_SECONDS", "0.2"))
        timer("inference", lambda: time.sleep(pause))
        findings = FixedFindings(ModelInfo(NAME, VERSION), str(first.StudyInstanceUID), len(paths))
        return findings, timer.seconds

    def run(self, paths: Sequence[Path]) -> FixedFindings:
        return self.run_timed(paths)[0]


def result_uids(study_uid: str, profile: str = "standard") -> tuple[str, str]:
    """(series, SOP instance) UIDs of the SR for ``study_uid``: the same on every run."""
    parts = ["dicom-node-test", study_uid, NAME, VERSION, profile]
    return (
        str(generate_uid(entropy_srcs=[*parts, "series"])),
        str(generate_uid(entropy_srcs=[*parts, "instance"])),
    )


def write_text_report(
    findings: FixedFindings, sources: Sequence[Dataset], profile: str, context: object
) -> list[Dataset]:
    source = sources[0]
    series_uid, sop_uid = result_uids(findings.study_instance_uid, profile)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = sop_uid
    for keyword in (
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
    ):
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 9900
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"{NAME} {VERSION}"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "TEST", "99DN", "Test report"
    ds.ConceptNameCodeSequence = [concept]
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.TextValue = f"{findings.images} images seen"
    ds.ContentSequence = [item]
    if os.environ.get("DICOM_NODE_TEST_WRITER_STAMP") == "1":
        stamp = Dataset()
        stamp.RelationshipType, stamp.ValueType = "CONTAINS", "TEXT"
        stamp.TextValue = writer_stamp()
        ds.ContentSequence.append(stamp)
    return [ds]


def writer_stamp() -> str:
    return f"written by process {os.getpid()} at {time.time_ns()}"


def stamp_of(ds: Dataset) -> str | None:
    """The writer stamp of an SR written with ``DICOM_NODE_TEST_WRITER_STAMP=1``."""
    texts = [str(item.TextValue) for item in ds.get("ContentSequence", []) if "TextValue" in item]
    return next((t for t in texts if t.startswith("written by process")), None)


SEGMENTATION = "fixed-segmentation"
SEGMENTATION_MODEL = f.ModelInfo(name="fixed-square", version="test-seg-1", weights_sha256="0" * 64)


class FixedSegmentationPipeline:
    name = SEGMENTATION

    def run_timed(self, paths: Sequence[Path]) -> tuple[f.SegmentationResult, dict[str, float]]:
        timer = StageTimer()
        return timer("inference", lambda: self.run(paths)), timer.seconds

    def run(self, paths: Sequence[Path]) -> f.SegmentationResult:
        slices = sorted((dcmread(p) for p in paths), key=lambda ds: float(ds.ImagePositionPatient[2]))
        rows, columns = int(slices[0].Rows), int(slices[0].Columns)
        label_map = np.zeros((len(slices), rows, columns), dtype=np.uint16)
        label_map[:, rows // 4 : rows // 2, columns // 4 : columns // 2] = 1
        spacing = [float(v) for v in slices[0].PixelSpacing]
        voxel_mm3 = spacing[0] * spacing[1] * float(slices[0].SliceThickness)
        return f.SegmentationResult(
            model=SEGMENTATION_MODEL,
            series_instance_uid=str(slices[0].SeriesInstanceUID),
            frame_of_reference_uid=str(slices[0].FrameOfReferenceUID),
            source_images=tuple(
                f.ImageReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in slices
            ),
            label_map=label_map,
            labels=(f.SegmentLabel(1, "vertebrae_T12", float(label_map.sum()) * voxel_mm3),),
        )


def register_pipelines(registry: object) -> None:
    """Plugin entry point (``[jobs] plugins``): add the test pipelines (and the fixed-cost writer)."""
    registry.register(NAME, FixedCostPipeline, write_text_report)  # type: ignore[attr-defined]
    registry.register(SEGMENTATION, FixedSegmentationPipeline)  # type: ignore[attr-defined]
