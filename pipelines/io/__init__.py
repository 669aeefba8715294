"""DICOM input for the pipelines: a CT series as an oriented volume, a radiograph as a float image.

``volume`` holds ``CtVolume`` and its geometry conventions, ``ct`` reads a series into one (highdicom's
volume API plus our refusals), ``radiograph`` reads one projection image, ``dicom`` the file reading
both share.
"""

from pipelines.io.ct import SHEAR_TOLERANCE_MM, SLICE_STEP_TOLERANCE, load_ct_series
from pipelines.io.dicom import read_dataset
from pipelines.io.radiograph import Radiograph, load_radiograph
from pipelines.io.volume import LPS_TO_RAS, CtVolume, FloatArray

__all__ = [
    "LPS_TO_RAS",
    "SHEAR_TOLERANCE_MM",
    "SLICE_STEP_TOLERANCE",
    "CtVolume",
    "FloatArray",
    "Radiograph",
    "load_ct_series",
    "load_radiograph",
    "read_dataset",
]
