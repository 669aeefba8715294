"""DICOM input: ordering, affine, rescale, JPEG 2000, enhanced multi-frame, refusals, radiographs."""

from __future__ import annotations

import re

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from pipelines.errors import PipelineInputError
from pipelines.io import load_ct_series, load_radiograph
from tests.conftest import CXR, DATA
from tests.pipelines.conftest import ct_paths, read_sorted, stored_to_hu, write_uncompressed


def test_real_jpeg2000_series_loads_sorted_by_position_with_exact_affine():
    volume = load_ct_series(ct_paths()[::-1])
    slices = read_sorted()
    assert volume.shape == (20, 512, 512)
    assert [r.sop_instance_uid for r in volume.source_images] == [str(d.SOPInstanceUID) for d in slices]
    for k, ds in enumerate(slices):
        # Corner voxels of each plane land exactly on the DICOM position; HU from slope/intercept.
        assert volume.patient_point(0, 0, k) == pytest.approx(
            [float(v) for v in ds.ImagePositionPatient], abs=1e-6
        )
        np.testing.assert_array_equal(volume.voxels[k], stored_to_hu(ds, ds.pixel_array).astype(np.float32))
    assert volume.spacing_mm == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert volume.frame_of_reference_uid == str(slices[0].FrameOfReferenceUID)


def test_metatensor_is_ras_channel_first():
    volume = load_ct_series(ct_paths())
    image = volume.to_metatensor()
    assert tuple(image.shape) == (1, 512, 512, 20)
    ras = image.affine.numpy()
    np.testing.assert_allclose(ras[:2], -volume.affine_lps[:2])
    np.testing.assert_allclose(ras[2:], volume.affine_lps[2:])
    assert float(image[0, 100, 200, 3]) == volume.voxels[3, 200, 100]


def test_blank_uid_files_are_refused_clearly():
    paths = sorted((DATA / "ct" / "totalseg_dicom_blank_uids").iterdir())
    with pytest.raises(PipelineInputError, match="UID is empty"):
        load_ct_series(paths)


@pytest.fixture()
def uncompressed(tmp_path):
    def write(change) -> list:
        paths = []
        for k, ds in enumerate(read_sorted()):
            stored = ds.pixel_array
            change(k, ds)
            path = tmp_path / f"{k}.dcm"
            write_uncompressed(ds, stored, path)
            paths.append(path)
        return paths

    return write


def test_missing_slice_is_refused(uncompressed):
    paths = uncompressed(lambda k, ds: None)
    with pytest.raises(PipelineInputError, match="irregular"):
        load_ct_series(paths[:7] + paths[8:])


def test_gantry_tilt_is_refused(uncompressed):
    def tilt(k, ds):
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 0.5 * k, ipp[2]]

    with pytest.raises(PipelineInputError, match="gantry tilt"):
        load_ct_series(uncompressed(tilt))


def test_per_slice_rescale_is_applied(uncompressed):
    def rescale(k, ds):
        if k == 5:
            ds.RescaleSlope, ds.RescaleIntercept = 2, -2048

    volume = load_ct_series(uncompressed(rescale))
    ds = read_sorted()[5]
    np.testing.assert_array_equal(volume.voxels[5], ds.pixel_array.astype(np.float32) * 2 - 2048)


def write_enhanced(path, slices, order, sop_instance_uid=None) -> str:
    """An Enhanced CT image of ``slices[k]`` for k in ``order`` (frame i + 1 holds ``slices[order[i]]``)."""
    first = slices[0]
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.Modality = "CT"
    ds.SeriesInstanceUID = first.SeriesInstanceUID
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = first.Rows, first.Columns, len(order)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    shared = Dataset()
    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = slices[k].ImagePositionPatient
        item.PlanePositionSequence = Sequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([slices[k].pixel_array for k in order]).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def test_enhanced_multiframe_ct_matches_the_classic_series(tmp_path):
    slices = read_sorted()
    order = list(range(len(slices)))[::-1]  # frames stored in reverse: sorting must still win
    path = tmp_path / "enhanced.dcm"
    sop_instance_uid = write_enhanced(path, slices, order)

    enhanced = load_ct_series([path])
    classic = load_ct_series(ct_paths())
    np.testing.assert_array_equal(enhanced.voxels, classic.voxels)
    np.testing.assert_allclose(enhanced.affine_lps, classic.affine_lps)
    assert [r.frame_number for r in enhanced.source_images] == list(range(20, 0, -1))
    assert {r.sop_instance_uid for r in enhanced.source_images} == {sop_instance_uid}


def test_frames_spread_over_two_multiframe_images_make_one_volume(tmp_path):
    # Even slices in one instance, odd ones in the other: neither is a volume alone, together they are.
    slices = read_sorted()
    evens, odds = list(range(0, 20, 2)), list(range(19, 0, -2))
    first = write_enhanced(tmp_path / "a.dcm", slices, evens)
    second = write_enhanced(tmp_path / "b.dcm", slices, odds)

    volume = load_ct_series([tmp_path / "b.dcm", tmp_path / "a.dcm"])
    classic = load_ct_series(ct_paths())
    np.testing.assert_array_equal(volume.voxels, classic.voxels)
    np.testing.assert_allclose(volume.affine_lps, classic.affine_lps)
    for k, reference in enumerate(volume.source_images):
        sop, order = (first, evens) if k % 2 == 0 else (second, odds)
        assert (reference.sop_instance_uid, reference.frame_number) == (sop, order.index(k) + 1)


def test_legacy_converted_jpeg2000_ct_matches_the_classic_series(tmp_path):
    slices = read_sorted()
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices[::-1],
        series_instance_uid=str(slices[0].SeriesInstanceUID),
        series_number=int(slices[0].SeriesNumber),
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    path = tmp_path / "legacy.dcm"
    converted.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEG2000Lossless

    volume = load_ct_series([path])
    classic = load_ct_series(ct_paths())
    np.testing.assert_array_equal(volume.voxels, classic.voxels)
    np.testing.assert_allclose(volume.affine_lps, classic.affine_lps)
    frames = converted.PerFrameFunctionalGroupsSequence
    for ds, reference in zip(slices, volume.source_images, strict=True):
        source = frames[reference.frame_number - 1].ConversionSourceAttributesSequence[0]
        assert source.ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_undecodable_jpeg2000_slice_is_named(tmp_path):
    paths = []
    for path in ct_paths():
        ds = pydicom.dcmread(path)
        if len(paths) == 7:
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
            ds.PixelData = encapsulate([frame[:200]])
        paths.append(tmp_path / path.name)
        ds.save_as(paths[-1])
    with pytest.raises(PipelineInputError, match=re.escape(f"{paths[7].name}: pixel data cannot be decoded")):
        load_ct_series(paths)


def test_missing_frame_of_reference_is_refused(uncompressed):
    def drop(k, ds):
        if k == 3:
            del ds.FrameOfReferenceUID

    with pytest.raises(PipelineInputError, match=re.escape("3.dcm: FrameOfReferenceUID is empty")):
        load_ct_series(uncompressed(drop))


def test_duplicate_slice_is_refused(uncompressed):
    paths = uncompressed(lambda k, ds: None)
    with pytest.raises(PipelineInputError, match="same slice position"):
        load_ct_series([*paths, paths[4]])


def test_mixed_orientation_is_refused(uncompressed):
    def localizer(k, ds):
        if k == 0:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    with pytest.raises(PipelineInputError, match="different orientations"):
        load_ct_series(uncompressed(localizer))


def test_radiograph_is_read_with_spacing_and_view():
    radiograph = load_radiograph(CXR)
    ds = pydicom.dcmread(CXR)
    assert radiograph.value_range == (0.0, 255.0)
    assert radiograph.view_position == "PA"
    assert radiograph.pixel_spacing_mm == (0.168, 0.168)
    np.testing.assert_array_equal(radiograph.pixels, ds.pixel_array.astype(np.float32))
    assert radiograph.source.sop_instance_uid == ds.SOPInstanceUID


def _rewrite(tmp_path, change):
    ds = pydicom.dcmread(CXR)
    stored = ds.pixel_array
    change(ds)
    ds.PixelData = stored.astype(np.uint8).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "cxr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_is_inverted(tmp_path):
    path = _rewrite(tmp_path, lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    np.testing.assert_array_equal(load_radiograph(path).pixels, 255 - load_radiograph(CXR).pixels)


def test_voi_window_is_applied(tmp_path):
    def window(ds):
        ds.WindowCenter, ds.WindowWidth = 128, 64

    radiograph = load_radiograph(_rewrite(tmp_path, window))
    assert radiograph.value_range == (0.0, 255.0)
    original = load_radiograph(CXR).pixels
    assert np.all(radiograph.pixels[original <= 95] == 0)
    assert np.all(radiograph.pixels[original >= 160] == 255)


def test_not_ct_is_refused():
    with pytest.raises(PipelineInputError, match="reads CT only"):
        load_ct_series([CXR])


def test_single_slice_is_refused():
    with pytest.raises(PipelineInputError, match="at least two slices"):
        load_ct_series(ct_paths()[:1])
