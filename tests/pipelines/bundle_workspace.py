"""What both bundle-equality modules share: the shared CT as NIfTI, a models folder, the marks.

tests/pipelines/test_bundle_equality.py (vertebrae) and test_bundle_equality_nodules.py (nodules) are
two files so that pytest-xdist (``--dist loadfile``, scripts/test) can run the two networks on two
workers at once; each builds its own ``workspace`` (reading the CT and writing the NIfTI take seconds).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from models.loader import forget_warm_models
from pipelines import bundle_reference as ref
from pipelines.io import load_ct_series
from tests.conftest import CT_DIR, REPO

MARKS = [
    pytest.mark.slow,
    # The bundle configs' own Orientationd (no ``labels``) and evaluator (``torch.autocast("cuda")`` on
    # a CPU-only torch) warn; those warnings are MONAI's about the published configs, not ours.
    pytest.mark.filterwarnings("ignore:.*Orientationd.__init__.labels.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*nvImageCodec.*:UserWarning"),
]
WHOLEBODY = "monai-wholebody-ct-segmentation"
NODULES = "monai-lung-nodule-ct-detection"


def models_folder(root: Path) -> Path:
    target = root / "models"
    shutil.copytree(
        REPO / "models", target, ignore=shutil.ignore_patterns("*.py", "__pycache__", "models", "downloads")
    )
    return target


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bundle_reference):
    torch.set_num_threads(os.cpu_count() or 1)
    root = tmp_path_factory.mktemp("bundle-equality")
    paths = sorted(CT_DIR.glob("*.dcm"))
    volume = load_ct_series(paths)
    nifti = ref.write_nifti(volume, root / "ct" / "ct.nii.gz")
    forget_warm_models()
    yield {"root": root, "paths": paths, "volume": volume, "nifti": nifti, "bundles": bundle_reference}
    forget_warm_models()
