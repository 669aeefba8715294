"""Generated DICOM for tests and benchmarks: CT series of any size, with valid UIDs and real geometry.

Routing variants, as modalities send them (docs/jobs.md lists what each default does with them):
``HEAD_CT`` (descriptions say HEAD, no body part), ``UNTAGGED_CT`` (no body part, no description at
all), and ``write_description_only_radiograph`` (a DX whose only chest clue is its Study Description).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

HEAD_CT: Mapping[str, Any] = {
    "BodyPartExamined": None,
    "StudyDescription": "CT HEAD",
    "SeriesDescription": "Head 2.5 axial",
    "ProtocolName": "HEAD_ROUTINE",
}
"""A head-only CT whose descriptions say HEAD (and whose body part is left out)."""
Phantom = Callable[[float, int, int, float], "np.ndarray[Any, Any]"]
"""``phantom(z, rows, columns, spacing)``: HU of one axial slice at position ``z`` (``tests/phantoms.py``)."""
UNTAGGED_CT: Mapping[str, Any] = {"BodyPartExamined": None, "SeriesDescription": None}
"""A CT with no body part and no description at all (``ct_slice`` writes no other description)."""


def ct_slice(
    index: int,
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    rows: int = 512,
    columns: int = 512,
    spacing: float = 0.7,
    thickness: float = 1.25,
    patient_id: str = "GEN0001",
    seed: int = 0,
    z: float | None = None,
    headers: Mapping[str, Any] | None = None,
    phantom: Phantom | None = None,
) -> Dataset:
    """One axial CT slice; pixel values are deterministic noise plus a body-shaped disc.

    ``z`` is its position (default ``-index * thickness``); ``headers`` sets attributes (``None``
    removes one); ``phantom`` draws the anatomy instead of the disc (``tests/phantoms.py``).
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(index)])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.PatientName = "Generated^Phantom"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "GENACC1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = "Generated chest CT"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "dicom-node tests"
    ds.KVP = 120
    ds.SliceThickness = thickness
    ds.PixelSpacing = [spacing, spacing]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    z = -index * thickness if z is None else z
    ds.ImagePositionPatient = [-columns * spacing / 2, -rows * spacing / 2, z]
    ds.SliceLocation = z
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    rng = np.random.default_rng(seed * 100003 + index)
    yy, xx = np.mgrid[:rows, :columns]
    body = ((yy - rows / 2) ** 2 / (rows * 0.4) ** 2 + (xx - columns / 2) ** 2 / (columns * 0.45) ** 2) < 1
    anatomy = np.where(body, 40, -1000) if phantom is None else phantom(z, rows, columns, spacing)
    pixels = anatomy + rng.integers(-20, 20, size=(rows, columns))
    ds.PixelData = pixels.astype(np.int16).tobytes()
    for keyword, value in (headers or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write_ct_series(
    folder: Path,
    count: int,
    *,
    rows: int = 512,
    columns: int = 512,
    study_uid: str | None = None,
    seed: int = 0,
    thickness: float = 1.25,
    spacing: float = 0.7,
    z_positions: Sequence[float] | None = None,
    headers: Mapping[str, Any] | None = None,
    phantom: Phantom | None = None,
) -> list[Path]:
    """Write ``count`` slices of one new series into ``folder``; returns the file paths.

    Slices are ``thickness`` apart unless ``z_positions`` is given: slice ``i`` then lies at
    ``z_positions[i % len(z_positions)]`` (a dynamic series repeats a few positions).
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    paths = []
    for index in range(count):
        ds = ct_slice(
            index,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
            rows=rows,
            columns=columns,
            seed=seed,
            thickness=thickness,
            spacing=spacing,
            z=None if z_positions is None else z_positions[index % len(z_positions)],
            headers=headers,
            phantom=phantom,
        )
        path = folder / f"CT{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_large_ct(
    path: Path,
    pixel_bytes: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    frame_uid: str | None = None,
    description: str = "Generated large CT",
) -> Path:
    """One CT instance with about ``pixel_bytes`` of Pixel Data, written without holding it in memory.

    The pixel values are zeros, written as a sparse region of the file, so a 200 MB instance takes
    no time and almost no disk to make (a reader still gets every byte).
    """
    from io import BytesIO

    side = int((pixel_bytes // 2) ** 0.5)
    uid = sop_instance_uid or generate_uid()
    ds = ct_slice(
        0,
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        frame_uid=frame_uid or generate_uid(),
        rows=2,
        columns=2,
    )
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.Rows = ds.Columns = side
    ds.SeriesDescription = description
    ds.ImagePositionPatient = [0, 0, 0]
    del ds.PixelData
    header = BytesIO()
    ds.save_as(header, enforce_file_format=True)
    length = side * side * 2
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(header.getvalue())
        handle.write(b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little"))
        handle.truncate(handle.tell() + length)
    return path


def write_description_only_radiograph(
    path: Path,
    source: Path,
    *,
    study_description: str | None = "CHEST PA",
    headers: Mapping[str, Any] | None = None,
) -> Path:
    """A DX chest radiograph whose only chest clue is its Study Description, made from a real one.

    The pixels (and their JPEG baseline encoding) are ``source``'s; it becomes Digital X-Ray (For
    Presentation), Modality DX, with no Body Part Examined or Series Description, View Position PA (a
    projection, not an anatomy: DX modalities state it, and the classifier refuses an unstated view), new
    UIDs, and ``study_description``; ``headers`` then sets attributes (``None`` removes one).
    """
    ds = dcmread(source)
    for keyword in ("BodyPartExamined", "SeriesDescription", "ConversionType", "PatientAge"):
        if keyword in ds:
            delattr(ds, keyword)
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.ViewPosition = "DX", "PA"
    if study_description is not None:
        ds.StudyDescription = study_description
    ds.PatientID, ds.PatientName = "GENDX0001", "Generated^Radiograph"
    ds.StudyDate, ds.AccessionNumber = "20260101", "GENDX1"
    for keyword, value in (headers or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file, without preamble and file meta information."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path} is not a DICOM Part 10 file")
    # (0002,0000) UL is the first meta element: tag 4 + VR 2 + length 2 + value 4 bytes.
    if data[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path} has no File Meta Information Group Length")
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def dataset_bytes_many(paths: Sequence[Path]) -> dict[str, bytes]:
    """SOP Instance UID → data set bytes for each file."""
    from pydicom import dcmread

    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p) for p in paths}


def nodelay(assoc: object) -> None:
    """TCP_NODELAY on a pynetdicom requestor's socket (a pynetdicom SCU runs 3× faster with it)."""
    import socket

    sock = assoc.dul.socket  # type: ignore[attr-defined]
    sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
