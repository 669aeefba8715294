"""One multi-frame CT object from a single-frame series: Legacy Converted Enhanced CT and Enhanced CT.

``legacy_converted_ct`` is highdicom's own converter (``highdicom.legacy.LegacyConvertedEnhancedCTImage``)
plus the few attributes dciodvfy asks for that it leaves out. ``enhanced_ct`` turns that object into an
Enhanced CT Image (1.2.840.10008.5.1.4.1.1.2.1) the way a scanner's derived volume is written: the same
frames and functional groups, the Enhanced CT Image module and a CT Image Frame Type per frame
(``DERIVED``, so none of the acquisition macros an ``ORIGINAL`` frame needs: a reconstruction of
stored slices has no acquisition of its own), each frame derived from the slice it came from.

Both keep the patient and study of the source and get a new series (its UIDs derived from the source
series and the kind), so each can be sent on its own, or next to the single-frame series, and routed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
# dicom3tools of 2022 does not count a frame's Conversion Source Attributes Sequence as a reference to an
# instance, so it reads the Referenced Series Sequence highdicom writes for the converted slices (Common
# Instance Reference module, PS3.3 C.12.2: required when the instance references instances of its study)
# as having nothing to list. The standard requires it; this line is the validator's gap.
LEGACY_VALIDATOR_GAP = (
    "Error - ReferencedSeriesSequence present but Instance does not reference Instances - attribute "
    "<ReferencedSeriesSequence>"
)
_SOURCE_IMAGE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
# What a Siemens scanner writes for a body part it does not name (Body Part Examined PARTIALBODY).
_ENTIRE_BODY = ("38266002", "SCT", "Entire body")
_DERIVATION = ("113072", "DCM", "Multiplanar reformatting")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _read_series(paths: Sequence[Path]) -> list[Dataset]:
    datasets = [pydicom.dcmread(p) for p in paths]
    if len({str(ds.SeriesInstanceUID) for ds in datasets}) != 1:
        raise ValueError('Argument "paths" must name the images of one series.')
    return datasets


def _evidence(datasets: Sequence[Dataset]) -> DicomSequence:
    """Hierarchical SOP Instance Reference Macro items: every source image, by study and series."""
    series = Dataset()
    series.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    instances = []
    for ds in datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        instances.append(item)
    series.ReferencedSOPSequence = instances
    study = Dataset()
    study.StudyInstanceUID = datasets[0].StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    return DicomSequence([study])


def _legacy(
    datasets: list[Dataset], kind: str, study_uid: str | None
) -> hd.legacy.LegacyConvertedEnhancedCTImage:
    source_series = str(datasets[0].SeriesInstanceUID)
    if study_uid is not None:
        for ds in datasets:
            ds.StudyInstanceUID = study_uid
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        datasets,
        series_instance_uid=generate_uid(entropy_srcs=[source_series, kind, "series"]),
        series_number=int(datasets[0].get("SeriesNumber", 1) or 1) + 900,
        sop_instance_uid=generate_uid(entropy_srcs=[source_series, kind, "instance"]),
        instance_number=1,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    # dciodvfy: Laterality is Type 2C in General Series (empty: the body part is not paired), and the
    # Enhanced CT Image module wants the evidence of the images the frames were converted from.
    image.Laterality = None
    # The slices reference their localizer (Referenced Image Sequence) and the scanner's raw data (Source
    # Image Sequence), which highdicom moves into the shared functional groups; the Enhanced CT Image
    # module then needs their evidence (study and series), which no slice names: both are left out.
    shared = image.SharedFunctionalGroupsSequence[0]
    for keyword in ("ReferencedImageSequence", "DerivationImageSequence"):
        if keyword in shared:
            delattr(shared, keyword)
    return image


def legacy_converted_ct(paths: Sequence[Path], out: Path, *, study_uid: str | None = None) -> Path:
    """Write the series in ``paths`` as one Legacy Converted Enhanced CT Image to ``out``.

    ``study_uid`` moves it (and only it) to another study, so that it is routed on its own.
    """
    datasets = _read_series(paths)
    image = _legacy(datasets, "legacy", study_uid)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(out, enforce_file_format=True)
    return out


def enhanced_ct(paths: Sequence[Path], out: Path, *, study_uid: str | None = None) -> Path:
    """Write the series in ``paths`` as one Enhanced CT Image to ``out`` (see the module docstring)."""
    datasets = _read_series(paths)
    image = _legacy(datasets, "enhanced", study_uid)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    image.SOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    image.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    del image.Laterality  # Frame Anatomy's Frame Laterality (below) says it per frame
    image.ImageType = ["DERIVED", "PRIMARY", "AXIAL", "NONE"]
    image.PixelPresentation = "MONOCHROME"
    image.VolumetricProperties = "VOLUME"
    image.VolumeBasedCalculationTechnique = "NONE"
    image.ContentQualification = "PRODUCT"
    image.AcquisitionNumber = int(datasets[0].get("AcquisitionNumber", 1) or 1)
    image.AcquisitionDateTime = f"{image.get('ContentDate', '')}{image.get('ContentTime', '')}"
    image.AcquisitionDuration = None
    image.LossyImageCompression = "00"
    image.BurnedInAnnotation = "NO"
    image.RecognizableVisualFeatures = "NO"
    image.PresentationLUTShape = "IDENTITY"
    image.SourceImageEvidenceSequence = _evidence(datasets)  # the slices each frame is derived from
    frame_type = Dataset()
    frame_type.FrameType = ["DERIVED", "PRIMARY", "AXIAL", "NONE"]
    frame_type.PixelPresentation = "MONOCHROME"
    frame_type.VolumetricProperties = "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    shared = image.SharedFunctionalGroupsSequence[0]
    shared.CTImageFrameTypeSequence = [frame_type]
    if "UnassignedSharedConvertedAttributesSequence" in shared:
        del shared.UnassignedSharedConvertedAttributesSequence
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [_code(*_ENTIRE_BODY)]
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = [anatomy]
    for frame in image.PerFrameFunctionalGroupsSequence:
        source = frame.ConversionSourceAttributesSequence[0]
        original = by_uid[str(source.ReferencedSOPInstanceUID)]
        del frame.ConversionSourceAttributesSequence
        if "UnassignedPerFrameConvertedAttributesSequence" in frame:
            del frame.UnassignedPerFrameConvertedAttributesSequence
        reference = Dataset()
        reference.ReferencedSOPClassUID = original.SOPClassUID
        reference.ReferencedSOPInstanceUID = original.SOPInstanceUID
        reference.PurposeOfReferenceCodeSequence = [_code(*_SOURCE_IMAGE_PURPOSE)]
        derivation = Dataset()
        derivation.DerivationCodeSequence = [_code(*_DERIVATION)]
        derivation.SourceImageSequence = [reference]
        frame.DerivationImageSequence = [derivation]
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(out, enforce_file_format=True)
    return out
