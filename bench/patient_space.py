"""Voxels that differ in patient space between layouts of the shared CT, through the vertebra pipeline.

    .venv/bin/python bench/patient_space.py [--variants feet_first,rotated_180,...] [--crop]
                                            [--models-dir DIR]

Writes the shared CT (tests/data/ct/totalseg_dicom) as the original and each variant
(tests/pipelines/patient_variants.py: same voxels at the same patient coordinates), runs the
``ct-vertebrae`` pipeline on each, maps every label map onto the original's grid by exact index mapping
and prints the labelled voxels, the differing voxels and the columns they are in, with each run's time.
Without ``--models-dir`` the SegResNet has UNTRAINED scaffold weights (seed 0): right for comparing
layouts, meaningless as analysis. ``--crop`` uses the tests' 144 × 144 crop around the spine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.installer import import_weights, scaffold  # noqa: E402
from pipelines.registry import get_pipeline  # noqa: E402
from tests.pipelines.patient_variants import (  # noqa: E402
    PATIENT_VARIANTS,
    to_reference_grid,
    write_patient_variant,
)

MODEL = "monai-wholebody-ct-segmentation"
SPINE_CROP = ((250, 394), (184, 328))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default="feet_first", help=f"comma-separated, of {PATIENT_VARIANTS[1:]}"
    )
    parser.add_argument("--crop", action="store_true", help="the tests' 144 × 144 crop around the spine")
    parser.add_argument("--models-dir", type=Path, help="installed weights (default: a scaffold)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models_dir = args.models_dir
        if models_dir is None:
            models_dir = work / "models"
            shutil.copytree(REPO / "models" / MODEL / "configs", models_dir / MODEL / "configs")
            import_weights(scaffold(MODEL, work / "scaffold.pt"), models_dir, model=MODEL)
        pipeline = get_pipeline("ct-vertebrae", models_dir, allow_untrained=True)
        crop = SPINE_CROP if args.crop else None
        paths = {
            v: write_patient_variant(work / v, v, crop=crop) for v in ("original", *args.variants.split(","))
        }
        reference = None
        for variant, files in paths.items():
            start = time.perf_counter()
            result = pipeline.run(files)
            seconds = time.perf_counter() - start
            mapped = to_reference_grid(result.label_map, result.source_images, files, paths["original"])
            if reference is None:
                reference = mapped
                print(
                    f"original: {np.count_nonzero(mapped)} of {mapped.size} voxels labelled, {seconds:.1f} s"
                )
                continue
            differing = mapped != reference
            columns = np.unique(np.nonzero(differing)[2]).tolist()
            count = np.count_nonzero(differing)
            print(f"{variant}: {count} voxels differ, in columns {columns}, {seconds:.1f} s")


if __name__ == "__main__":
    main()
