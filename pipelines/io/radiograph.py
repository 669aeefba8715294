"""Loading a projection radiograph (CR, DX, or a Secondary Capture of one) as a float image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from pipelines.errors import PipelineInputError
from pipelines.findings import ImageReference
from pipelines.io.dicom import decode_pixels, read_dataset, required_uid
from pipelines.io.volume import FloatArray


@dataclass(frozen=True)
class Radiograph:
    """One projection radiograph as a float image, brighter = more attenuation.

    ``pixels`` holds the modality LUT output, passed through the VOI LUT when the image has one, with
    MONOCHROME1 inverted so that every image reads the same way. ``value_range`` is the range those
    values can take (from BitsStored and the LUTs), which is what a network's normalisation needs —
    not the min/max of this particular image.
    """

    pixels: FloatArray
    value_range: tuple[float, float]
    pixel_spacing_mm: tuple[float, float] | None
    view_position: str
    modality: str
    source: ImageReference


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """The range of the modality LUT's output over all storable values."""
    if "ModalityLUTSequence" in ds:
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    else:
        lo, hi = 0.0, float(2**bits - 1)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    a, b = lo * slope + intercept, hi * slope + intercept
    return (min(a, b), max(a, b))


def _voi_range(ds: Dataset, modality_range: tuple[float, float]) -> tuple[float, float] | None:
    """The output range of the image's VOI LUT, as pydicom's apply_voi_lut produces it; None if none."""
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # pydicom's apply_windowing maps the window onto the range of the modality output.
        return modality_range
    return None


def _view_position(ds: Dataset) -> str:
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view:
        return view
    for item in ds.get("ViewCodeSequence", []):
        meaning = str(item.get("CodeMeaning", "")).lower()
        if "lateral" in meaning:
            return "LATERAL"
        if "postero-anterior" in meaning or "posteroanterior" in meaning:
            return "PA"
        if "antero-posterior" in meaning or "anteroposterior" in meaning:
            return "AP"
    return ""


def load_radiograph(path: str | Path) -> Radiograph:
    """Read one projection radiograph (CR, DX, or a Secondary Capture of one) as a float image."""
    name = Path(path).name
    ds = read_dataset(path)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PipelineInputError(
            f"{name}: photometric interpretation {photometric or 'missing'} is not greyscale"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PipelineInputError(f"{name}: a radiograph must have a single frame")
    stored = decode_pixels(ds, name)
    modality_range = _modality_range(ds)
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    voi_range = _voi_range(ds, modality_range)
    if voi_range is not None:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        lo, hi = voi_range
    else:
        lo, hi = modality_range
    values = np.clip(values, lo, hi)
    if photometric == "MONOCHROME1":
        values = lo + hi - values
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    pixel_spacing = (float(spacing[0]), float(spacing[1])) if spacing else None
    return Radiograph(
        pixels=values.astype(np.float32),
        value_range=(lo, hi),
        pixel_spacing_mm=pixel_spacing,
        view_position=_view_position(ds),
        modality=str(ds.get("Modality", "")),
        source=ImageReference(
            required_uid(ds, "SOPClassUID", name), required_uid(ds, "SOPInstanceUID", name)
        ),
    )
