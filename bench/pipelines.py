"""Per-stage latency of the three pipelines on a synthetic 300-slice chest CT and a 2k×2k radiograph.

    .venv/bin/python bench/pipelines.py [--device cpu|cuda|all] [--slices 300] [--threads N]
                                        [--pipelines cxr-classification,ct-lung-nodules,ct-vertebrae]
                                        [--mode exact,fast] [--ct DIR] [--batch N]
                                        [--against-bundle [--rounds N]] [--models-dir DIR]

Stages: model load (verify sha256 and architecture, build, load weights: once per worker process),
read (DICOM decode and geometry), preprocess (the bundle's transforms), inference (the network) and
postprocess (back to patient space and result types). Writing SR/SEG belongs to ``dicom_node/reports``
and is not timed here.

``--mode``: ``exact`` (the published bundle's inference) and/or ``fast`` (pipelines.base.AnalysisMode);
with both, each fast row is followed by its difference from the exact run on the same input (boxes
matched by centre: how far they moved, how much their scores changed; label maps: voxels that differ).
``--ct DIR`` takes a real CT series (e.g. tests/data/ct/totalseg_dicom) instead of the synthetic one.
``--batch N`` also times N radiographs in one ``run_batch`` (several studies queued together).
``--against-bundle`` also runs each CT pipeline's published ``inference.json`` through MONAI's bundle
``ConfigParser`` (``pipelines.bundle_reference``; configs from ``$DICOM_NODE_REFERENCE/monai-bundles``)
on the same CT (written once as NIfTI-2 from our reader) with the same weights file, in the same
process, and prints its time beside ours and whether the outputs are equal; ``--rounds N`` adds N - 1
timings of both, the bundle first in every other round, and their medians.

Without ``--models-dir`` the weights are UNTRAINED scaffolds of the exact architectures, imported into
a temporary folder: right for timing, meaningless as analysis, and the table says so. The inputs are
synthetic (an ellipse of soft tissue with two lungs, a spine and noise; a 12-bit PA radiograph) and
written as uncompressed DICOM so that reading is part of the measurement.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
from pipelines.base import AnalysisMode
from pipelines.compute import select_compute
from pipelines.cxr_classification import CxrClassificationPipeline
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


def _nodule_difference(exact: Any, fast: Any) -> str:
    """Fast boxes against exact ones: matched by nearest centre; moved mm and score change."""
    a, b = exact.nodules, fast.nodules
    if not a and not b:
        return "no boxes in either mode"
    if not a or not b:
        return f"exact {len(a)} boxes, fast {len(b)}"
    centres_a = np.array([n.center for n in a])
    moved, changed = [], []
    for n in b:
        d = np.linalg.norm(centres_a - np.array(n.center), axis=1)
        i = int(np.argmin(d))
        moved.append(float(d[i]))
        changed.append(abs(n.confidence - a[i].confidence))
    same = sum(m < 1.0 for m in moved)
    return (
        f"exact {len(a)} boxes, fast {len(b)}; {same} within 1 mm of an exact box; centre moved "
        f"median {np.median(moved):.2f} mm, max {max(moved):.2f} mm; score changed median "
        f"{np.median(changed):.4f}, max {max(changed):.4f}"
    )


def _label_difference(exact: Any, fast: Any) -> str:
    a, b = exact.label_map, fast.label_map
    differ = int((a != b).sum())
    labelled = int(((a > 0) | (b > 0)).sum())
    return (
        f"{differ} of {a.size} voxels differ ({differ / max(labelled, 1):.2%} of labelled voxels); "
        f"labels exact {len(exact.labels)}, fast {len(fast.labels)}"
    )


def _bundle_run(name: str, volume: Any, models_dir: Path, root: Path, device: str) -> Any:
    """The bundle's own inference.json on the CT our reader read and the same weights file (its result
    has ``seconds``)."""
    from models.loader import weights_path
    from pipelines import bundle_reference as ref

    bundles = Path(os.environ.get("DICOM_NODE_REFERENCE", "../shared/reference")).expanduser()
    bundles = (Path(__file__).resolve().parents[1] / bundles).resolve() / "monai-bundles"
    nifti = ref.write_nifti(volume, root / "bundle-input" / "ct.nii.gz")
    weights = weights_path(models_dir, PIPELINE_MODELS[name])
    if name == "ct-vertebrae":
        return ref.run_wholebody_bundle(bundles, weights, nifti, root / f"bundle-out-{device}")
    return ref.run_lung_nodule_bundle(bundles, weights, nifti, root / f"bundle-out-{device}", device=device)


def _against_bundle(
    name: str, pipeline: Any, ct: list[Path], models_dir: Path, root: Path, device: str
) -> str:
    """The bundle's run beside ours: its seconds and whether the outputs are equal."""
    from pipelines import bundle_reference as ref
    from pipelines.ct_geometry import labels_to_patient_grid_by_inverse, model_affine_lps
    from pipelines.patient_space import PatientSpace

    volume = pipeline.load(ct)
    if name == "ct-vertebrae":
        seg = _bundle_run(name, volume, models_dir, root, device)
        image = pipeline.preprocess(volume)
        # the way back the pipeline takes (MONAI's inverse, as the bundle's Invertd), as the test does
        ours = labels_to_patient_grid_by_inverse(pipeline.infer(image), image, PatientSpace.of(volume))
        differ = int((ours != seg.label_map).sum())
        return f"{seg.seconds:8.2f}  label map: {differ} voxels differ, {len(np.unique(ours))} labels"
    det = _bundle_run(name, volume, models_dir, root, device)
    image = pipeline.preprocess(volume)
    grid = pipeline.infer(image)
    centres, sizes, kept = ref.boxes_to_lps(grid.boxes, model_affine_lps(image), image.shape[1:])
    scores = grid.scores[kept]
    if len(scores) != len(det.scores):
        return f"{det.seconds:8.2f}  boxes: ours {len(scores)}, bundle {len(det.scores)}"
    if not len(scores):
        return f"{det.seconds:8.2f}  boxes: none on either side (untrained weights)"
    moved = np.abs(centres - det.centers_lps).max()
    resized = np.abs(sizes - det.sizes_mm).max()
    rescored = np.abs(scores - det.scores).max()
    return (
        f"{det.seconds:8.2f}  {len(scores)} boxes; max |centre| {moved:.1e} mm, |size| {resized:.1e} mm, "
        f"|score| {rescored:.1e}"
    )


def _more_rounds(
    name: str, pipeline: Any, ct: list[Path], models_dir: Path, root: Path, device: str, rounds: int
) -> None:
    """``rounds`` - 1 more timings of ours and the bundle's, the bundle first in every other round (so
    that which side runs first, e.g. warmer caches or a later turn of a shared machine, cancels out)."""
    volume = pipeline.load(ct)
    ours_all, bundle_all = [], []
    for round_ in range(1, rounds):
        bundle_first = round_ % 2 == 1
        if bundle_first:
            bundle = _bundle_run(name, volume, models_dir, root, device).seconds
        ours = sum(pipeline.run_timed(ct)[1].values())
        if not bundle_first:
            bundle = _bundle_run(name, volume, models_dir, root, device).seconds
        ours_all.append(ours)
        bundle_all.append(bundle)
        first = "bundle" if bundle_first else "ours"
        print(f"  round {round_ + 1}: ours {ours:.2f} s, bundle {bundle:.2f} s ({first} first)", flush=True)
    print(
        f"  median of rounds 2-{rounds}: ours {np.median(ours_all):.2f} s, "
        f"bundle {np.median(bundle_all):.2f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--radiograph-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--pipelines", default=",".join(PIPELINE_NAMES))
    parser.add_argument("--mode", default="exact", help="exact, fast or exact,fast")
    parser.add_argument(
        "--ct", type=Path, default=None, help="a real CT series folder instead of the synthetic"
    )
    parser.add_argument("--batch", type=int, default=0, help="also time this many radiographs in one batch")
    parser.add_argument("--against-bundle", action="store_true")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --against-bundle: more timings, who goes first alternating",
    )
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    names = [n for n in args.pipelines.split(",") if n]
    modes = [AnalysisMode(m) for m in args.mode.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="bench-pipelines-") as tmp:
        root = Path(tmp)
        models_dir = args.models_dir or scaffolded_models_dir(root)
        if args.ct is not None:
            ct = sorted(p for p in args.ct.iterdir() if p.is_file())
            ct_label = f"{args.ct.name} ({len(ct)} files)"
        else:
            ct = synthetic_chest_ct(root / "ct", args.slices)
            ct_label = f"{args.slices}×512² CT"
        cxr = [synthetic_radiograph(root, args.radiograph_size)]
        header = (
            f"{'pipeline':20} {'device':6} {'mode':5} {'weights':26} {'input':24} "
            f"{'model load':>10} {'read':>8} {'preproc':>8} {'infer':>8} {'postproc':>8} {'total':>8}"
        )
        if args.against_bundle:
            header += f" {'bundle':>8}  bundle equality"
        threads = args.threads or torch.get_num_threads()
        date = time.strftime("%Y-%m-%d")
        print(f"torch {torch.__version__}, CPU threads {threads}, {os.cpu_count()} CPUs, {date}")
        print(header)
        print("-" * len(header))
        for device in devices:
            compute = select_compute(device, cpu_threads=args.threads or None)
            if device == "cuda":
                print(f"# GPU: {torch.cuda.get_device_name(0)}")
            for name in names:
                results: dict[AnalysisMode, Any] = {}
                for mode in modes:
                    if name == "cxr-classification" and mode is AnalysisMode.FAST:
                        continue  # one 224² image: there is nothing to make faster
                    forget_warm_models()
                    gc.collect()
                    start = time.perf_counter()
                    installed = load_model(models_dir, PIPELINE_MODELS[name], compute.device)
                    model_load = time.perf_counter() - start
                    # Timing only: scaffold weights are allowed here, and labelled UNTRAINED below.
                    pipeline = get_pipeline(name, models_dir, compute, allow_untrained=True, mode=mode)
                    paths = cxr if name == "cxr-classification" else ct
                    # One untimed warm-up on a GPU (cuDNN autotuning), and before a side-by-side with the
                    # bundle (the first run in a process also builds oneDNN's kernels for each shape, which
                    # the bundle, run after ours, would find ready: 60.6 / 64.8 / 65.9 s ours against 59.8 /
                    # 61.6 / 63.0 s bundle without it, 2026-12-01, 2 cores).
                    if device == "cuda" or (args.against_bundle and paths is ct):
                        pipeline.run_timed(paths)
                    result, t = pipeline.run_timed(paths)
                    results[mode] = result
                    weights = installed.record.version
                    if installed.record.untrained:
                        weights = f"UNTRAINED {weights}"
                    size = f"{args.radiograph_size}² DX" if name == "cxr-classification" else ct_label
                    total = sum(t.values())
                    line = (
                        f"{name:20} {device:6} {mode.value:5} {weights:26} {size:24} {model_load:10.2f} "
                        f"{t['load']:8.2f} {t['preprocess']:8.2f} {t['inference']:8.2f} "
                        f"{t['postprocess']:8.2f} {total:8.2f}"
                    )
                    if args.against_bundle and name != "cxr-classification" and mode is AnalysisMode.EXACT:
                        line += " " + _against_bundle(name, pipeline, ct, models_dir, root, device)
                    print(line, flush=True)
                    if args.rounds > 1 and args.against_bundle and mode is AnalysisMode.EXACT and paths is ct:
                        _more_rounds(name, pipeline, ct, models_dir, root, device, args.rounds)
                    if name == "cxr-classification" and args.batch > 1:
                        assert isinstance(pipeline, CxrClassificationPipeline)
                        start = time.perf_counter()
                        pipeline.run_batch([cxr] * args.batch)
                        seconds = time.perf_counter() - start
                        print(
                            f"{name:20} {device:6} {'batch':5} {weights:26} {args.batch} × {size:18} "
                            f"{'':10} {'':8} {'':8} {'':8} {'':8} {seconds:8.2f}  "
                            f"({seconds / args.batch:.3f} s per radiograph)",
                            flush=True,
                        )
                if AnalysisMode.EXACT in results and AnalysisMode.FAST in results:
                    compare = _nodule_difference if name == "ct-lung-nodules" else _label_difference
                    print(
                        f"  fast vs exact: {compare(results[AnalysisMode.EXACT], results[AnalysisMode.FAST])}"
                    )
        print(
            "seconds; model load is once per worker process; 'total' excludes it. SR/SEG writing not timed."
        )
        if args.against_bundle:
            print(
                "bundle: the published inference.json's own run (after building it), same CT and weights "
                "file; compare with 'total' (ours, from the DICOM files)."
            )
        if args.models_dir is None:
            print("Weights: UNTRAINED scaffolds of the exact architectures (timing only, not analysis).")


if __name__ == "__main__":
    main()
