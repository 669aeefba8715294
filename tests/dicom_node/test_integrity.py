"""The structural completeness check accepts every real file and refuses every cut of one."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.errors import UnreadableDatasetError
from dicom_node.storage.integrity import check_complete
from tests.factories import dataset_bytes, write_ct_series


def _files(test_data: Path) -> list[Path]:
    files = sorted((test_data / "ct" / "totalseg_dicom").glob("*.dcm"))[:3]
    files += [
        test_data / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm",
        *sorted((test_data / "sr_seg").glob("*.dcm")),
    ]
    return files


def _implicit(path: Path) -> bool:
    return dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_implicit_VR


def test_real_files_are_complete(test_data):
    for path in _files(test_data):
        check_complete(dataset_bytes(path), implicit_vr=_implicit(path))


@pytest.mark.parametrize("cut", [1, 7, 100, 3000])
def test_cut_files_are_refused(test_data, tmp_path, cut):
    paths = [*_files(test_data), *write_ct_series(tmp_path, 1, rows=64, columns=64)]
    for path in paths:
        data = dataset_bytes(path)
        with pytest.raises(UnreadableDatasetError, match="truncated"):
            check_complete(data[:-cut], implicit_vr=_implicit(path))


def test_garbage_is_refused():
    with pytest.raises(UnreadableDatasetError):
        check_complete(b"\x08\x00\x18\x00UI\xff\x7fabc", implicit_vr=False)
