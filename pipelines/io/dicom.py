"""Reading DICOM files for the pipelines, every failure turned into ``PipelineInputError``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from pipelines.errors import PipelineInputError


def read_dataset(path: str | Path) -> Dataset:
    """Read a DICOM file, turning any read error into ``PipelineInputError``."""
    try:
        return pydicom.dcmread(str(path))
    except Exception as exc:  # pydicom raises several unrelated types for broken files
        raise PipelineInputError(f"{Path(path).name}: not a readable DICOM file ({exc})") from exc


def decode_pixels(ds: Dataset, name: str) -> npt.NDArray[Any]:
    # Decoding is deferred until pixel_array is touched, so a broken JPEG 2000 stream only shows here.
    try:
        return ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise PipelineInputError(
            f"{name}: pixel data cannot be decoded (transfer syntax {syntax}: {exc})"
        ) from exc


def required_uid(ds: Dataset, keyword: str, name: str) -> str:
    value = str(ds.get(keyword, "") or "")
    if not value:
        raise PipelineInputError(f"{name}: {keyword} is empty, so results could not refer to this image")
    return value
