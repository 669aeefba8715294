"""Per-stage latency of the three pipelines on a synthetic 300-slice chest CT and a 2k×2k radiograph.

    .venv/bin/python bench/pipelines.py [--device cpu|cuda|all] [--slices 300] [--threads N]
                                        [--pipelines cxr-classification,ct-lung-nodules,ct-vertebrae]
                                        [--models-dir DIR]

Stages: model load (verify sha256 and architecture, build, load weights: once per worker process),
read (DICOM decode and geometry), preprocess (the bundle's transforms), inference (the network) and
postprocess (back to patient space and result types). Writing SR/SEG belongs to ``dicom_node/reports``
and is not timed here.

Without ``--models-dir`` the weights are UNTRAINED scaffolds of the exact architectures, imported into
a temporary folder: right for timing, meaningless as analysis, and the table says so. The inputs are
synthetic (an ellipse of soft tissue with two lungs, a spine and noise; a 12-bit PA radiograph) and
written as uncompressed DICOM so that reading is part of the measurement.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.installer import import_weights, scaffold
from models.loader import forget_warm_models, load_model
from models.manifest import MODEL_NAMES
from pipelines.compute import select_compute
from pipelines.registry import PIPELINE_MODELS, PIPELINE_NAMES, get_pipeline


def _base(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientID, ds.StudyInstanceUID = "BENCH", generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def synthetic_chest_ct(
    out: Path, slices: int, size: int = 512, pixel_mm: float = 0.7, step_mm: float = 1.0
) -> list[Path]:
    """A chest-like CT: body ellipse (40 HU), lungs (−850 HU), spine (700 HU), air (−1000), noise."""
    out.mkdir(parents=True, exist_ok=True)
    series, frame = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size].astype(np.float32) - size / 2
    body = (x / (0.45 * size)) ** 2 + (y / (0.33 * size)) ** 2 < 1
    lungs = ((np.abs(x) - 0.2 * size) / (0.13 * size)) ** 2 + (y / (0.22 * size)) ** 2 < 1
    spine = x**2 + (y - 0.22 * size) ** 2 < (0.05 * size) ** 2
    base = np.full((size, size), -1000.0, dtype=np.float32)
    base[body], base[lungs], base[spine] = 40.0, -850.0, 700.0
    paths = []
    for k in range(slices):
        ds = _base(CTImageStorage, "CT")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.InstanceNumber = series, frame, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-size * pixel_mm / 2, -size * pixel_mm / 2, -k * step_mm]
        ds.PixelSpacing, ds.SliceThickness = [pixel_mm, pixel_mm], step_mm
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows = ds.Columns = size
        hu = base + rng.normal(0, 15, base.shape).astype(np.float32)
        ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
        path = out / f"ct{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def synthetic_radiograph(out: Path, size: int = 2048) -> Path:
    """A 12-bit PA digital radiograph with a window, 0.15 mm pixels."""
    ds = _base(DigitalXRayImageStorageForPresentation, "DX")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.ViewPosition = generate_uid(), "PA"
    ds.ImagerPixelSpacing, ds.WindowCenter, ds.WindowWidth = [0.15, 0.15], 2048, 4096
    ds.Rows = ds.Columns = size
    y, x = np.mgrid[:size, :size] - size / 2
    image = 3000 - 1500 * (((np.abs(x) - size / 5) / (size / 7)) ** 2 + (y / (size / 3.5)) ** 2 < 1)
    ds.PixelData = np.clip(image, 0, 4095).astype(np.uint16).tobytes()
    path = out / "radiograph.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def scaffolded_models_dir(root: Path) -> Path:
    import shutil

    repo_models = Path(__file__).resolve().parents[1] / "models"
    target = root / "models"
    shutil.copytree(
        repo_models, target, ignore=shutil.ignore_patterns("*.py", "__pycache__", "models", "downloads")
    )
    for name in MODEL_NAMES:
        import_weights(scaffold(name, root / f"{name}.pt"), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--radiograph-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--pipelines", default=",".join(PIPELINE_NAMES))
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    names = [n for n in args.pipelines.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="bench-pipelines-") as tmp:
        root = Path(tmp)
        models_dir = args.models_dir or scaffolded_models_dir(root)
        ct = synthetic_chest_ct(root / "ct", args.slices)
        cxr = [synthetic_radiograph(root, args.radiograph_size)]
        header = (
            f"{'pipeline':20} {'device':6} {'weights':26} {'input':24} "
            f"{'model load':>10} {'read':>8} {'preproc':>8} {'infer':>8} {'postproc':>8} {'total':>8}"
        )
        threads = args.threads or torch.get_num_threads()
        print(f"torch {torch.__version__}, CPU threads {threads}")
        print(header)
        print("-" * len(header))
        for device in devices:
            compute = select_compute(device, cpu_threads=args.threads or None)
            if device == "cuda":
                print(f"# GPU: {torch.cuda.get_device_name(0)}")
            for name in names:
                forget_warm_models()
                gc.collect()
                start = time.perf_counter()
                installed = load_model(models_dir, PIPELINE_MODELS[name], compute.device)
                model_load = time.perf_counter() - start
                # Timing only: scaffold weights are allowed here, and labelled UNTRAINED below.
                pipeline = get_pipeline(name, models_dir, compute, allow_untrained=True)
                paths = cxr if name == "cxr-classification" else ct
                if device == "cuda":  # one warm-up so cuDNN autotuning is not in the figure
                    pipeline.run_timed(paths)
                _, t = pipeline.run_timed(paths)
                weights = installed.record.version
                if installed.record.untrained:
                    weights = f"UNTRAINED {weights}"
                size = (
                    f"{args.radiograph_size}² DX"
                    if name == "cxr-classification"
                    else f"{args.slices}×512² CT"
                )
                total = sum(t.values())
                print(
                    f"{name:20} {device:6} {weights:26} {size:24} {model_load:10.2f} {t['load']:8.2f} "
                    f"{t['preprocess']:8.2f} {t['inference']:8.2f} {t['postprocess']:8.2f} {total:8.2f}",
                    flush=True,
                )
        print(
            "seconds; model load is once per worker process; 'total' excludes it. SR/SEG writing not timed."
        )
        if args.models_dir is None:
            print("Weights: UNTRAINED scaffolds of the exact architectures (timing only, not analysis).")


if __name__ == "__main__":
    main()
