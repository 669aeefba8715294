"""The hand-written File Meta Information reads back with pydicom as the standard says."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

from dicom_node.storage.part10 import PREAMBLE, file_meta


def test_file_meta_reads_back():
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.PatientID = "X"
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2", "MODALITY1")
    read = dcmread(BytesIO(PREAMBLE + meta + body.getvalue()))
    assert read.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert read.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert read.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert read.file_meta.ImplementationClassUID == PYNETDICOM_IMPLEMENTATION_UID
    assert read.file_meta.SourceApplicationEntityTitle == "MODALITY1"
    assert read.file_meta.FileMetaInformationGroupLength == len(meta) - 12
    assert read.PatientID == "X"
