"""The published MONAI bundles' own ``inference.json``, run with our weights file: the anchor we equal.

Used by ``tests/pipelines/test_bundle_equality.py`` and ``test_bundle_equality_nodules.py`` (our label
map and boxes equal the bundles') and ``bench/pipelines.py --against-bundle`` (our time next to the
bundle's). Never by a job.

The bundle configs are read from ``<bundles>/<bundle>/configs/inference.json`` (the published files,
not ours to copy: ``$DICOM_NODE_REFERENCE/monai-bundles``) through MONAI's ``ConfigParser``; every
change is a parser override, named here with its reason:

* both bundles: ``datalist``/``test_datalist``, ``output_dir`` and the weights path point at our files;
  ``dataloader#num_workers`` 0 (the same transforms in this process instead of a forked one).
* The bundles read NIfTI/ITK images. The CT series is read once with our reader
  (``pipelines.io.load_ct_series``) and written as NIfTI-2 (``write_nifti``): the canonical patient
  layout's voxels (``PatientSpace``, float32 HU as our pipelines see them) with its RAS affine in
  float64 — NIfTI-1 would round the affine to float32, enough to move bilinear resampling by 10⁻⁵.
* ``wholeBody_ct_segmentation``: nothing else. Its evaluator's ``amp: true`` runs
  ``torch.autocast("cuda")``, which on a CPU-only torch warns and does nothing; the warning is
  silenced, nothing else changes.
* ``lung_nodule_ct_detection``: ``network_def`` is our torchvision-free builder
  (``models.lung_nodule_retinanet.build_lung_nodule_retinanet``; the bundle's
  ``resnet_fpn_feature_extractor`` imports torchvision, and its ``backbone``/``feature_extractor``
  items are then never instantiated). ``whether_raw_luna16: true`` selects the bundle's path for raw
  images (``Spacingd`` to 0.703125×0.703125×1.25 mm, as our pipeline); that path's ``LoadImaged``
  names ``reader: itkreader, affine_lps_to_ras: true``, and ITK is not installed here, so it reads
  with ``NibabelReader``, which gives the same RAS affine directly. The bundle's ``inferer``,
  ``evaluator`` and saver are classes of its ``scripts/`` folder, which the reference does not hold:
  ``run_lung_nodule_bundle`` does what model-zoo's ``scripts/detection_inferer.py`` and
  ``scripts/evaluator.py`` do (whole image unless it exceeds the sliding-window patch, then the
  detector's own sliding window) and then the config's own ``postprocessing``. MONAI's
  ``RetinaNetDetector`` imports torchvision only for training (``Matcher``, an ``optional_import``).
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipelines.io import LPS_TO_RAS, CtVolume
from pipelines.patient_space import PatientSpace

WHOLEBODY = "wholeBody_ct_segmentation"
LUNG_NODULE = "lung_nodule_ct_detection"
#: Our builder, as the expression global ``lung_nodule_retinanet`` (ConfigParser ``globals``).
NETWORK_BUILDER = "lung_nodule_retinanet.build_lung_nodule_retinanet"
PARSER_GLOBALS = {
    "monai": "monai",
    "torch": "torch",
    "np": "numpy",
    "numpy": "numpy",
    "lung_nodule_retinanet": "models.lung_nodule_retinanet",
}


def write_nifti(volume: CtVolume, path: Path) -> Path:
    """The volume's canonical patient layout as NIfTI-2: (i, j, k) float32 HU, RAS affine in float64."""
    nib: Any = importlib.import_module("nibabel")  # untyped; NIfTI-2 keeps a float64 affine

    space = PatientSpace.of(volume)
    data = np.ascontiguousarray(space.voxels.transpose(2, 1, 0), dtype=np.float32)
    affine = LPS_TO_RAS @ space.affine_lps
    image = nib.Nifti2Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(None, code=0)
    image.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def _parser(bundles: Path, bundle: str, overrides: dict[str, Any]) -> Any:
    from monai.bundle.config_parser import ConfigParser

    config = bundles / bundle / "configs" / "inference.json"
    if not config.is_file():
        raise FileNotFoundError(f"the bundle reference has no {config}")
    parser = ConfigParser(globals=PARSER_GLOBALS)
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundles / bundle)
    for key, value in overrides.items():
        parser[key] = value
    return parser


@dataclass(frozen=True)
class BundleSegmentation:
    """The bundle's label map on the NIfTI grid, as canonical (k, j, i), and the seconds it took."""

    label_map: npt.NDArray[np.uint16]
    seconds: float


def run_wholebody_bundle(bundles: Path, weights: Path, nifti: Path, out_dir: Path) -> BundleSegmentation:
    """``wholeBody_ct_segmentation``'s ``initialize`` and ``run`` on one NIfTI file; its saved label map.

    The time covers what the bundle does for one image after it is built: load and preprocess, the
    sliding window, softmax/argmax, ``Invertd`` and ``SaveImaged``.
    """
    nib: Any = importlib.import_module("nibabel")

    parser = _parser(
        bundles,
        WHOLEBODY,
        {
            "datalist": [str(nifti)],
            "output_dir": str(out_dir),
            "dataloader#num_workers": 0,
            "checkpointloader#load_path": str(weights),
        },
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "User provided device_type of 'cuda'", UserWarning)
        for expression in parser.get_parsed_content("initialize"):
            del expression
        evaluator = parser.get_parsed_content("evaluator")
        start = time.perf_counter()
        evaluator.run()
        seconds = time.perf_counter() - start
    stem = nifti.name.removesuffix(".nii.gz").removesuffix(".nii")
    saved = out_dir / stem / f"{stem}_trans.nii.gz"
    labels = np.asarray(nib.load(str(saved)).dataobj)
    return BundleSegmentation(
        np.ascontiguousarray(np.rint(labels).astype(np.uint16).transpose(2, 1, 0)), seconds
    )


@dataclass(frozen=True)
class BundleDetections:
    """The bundle's boxes after its postprocessing: centres and sizes in patient LPS mm, and scores."""

    centers_lps: npt.NDArray[np.float64]
    sizes_mm: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    seconds: float


def lung_nodule_overrides(nifti: Path, out_dir: Path) -> dict[str, Any]:
    """The parser overrides of the module docstring for ``lung_nodule_ct_detection``."""
    return {
        "network_def": f"${NETWORK_BUILDER}()",
        "whether_raw_luna16": True,
        # The raw-image LoadImaged without its ITK-only ``reader``/``affine_lps_to_ras``:
        "preprocessing#transforms#1": {
            "_target_": "LoadImaged",
            "keys": "@image_key",
            "reader": "NibabelReader",
            "_disabled_": "@whether_resampled_luna16",
        },
        "test_datalist": [{"image": str(nifti)}],
        "output_dir": str(out_dir),
        "dataloader#num_workers": 0,
    }


def run_lung_nodule_bundle(
    bundles: Path, weights: Path, nifti: Path, out_dir: Path, *, device: str = "cpu"
) -> BundleDetections:
    """``lung_nodule_ct_detection`` on one NIfTI file with its ``network_def`` replaced by our builder."""
    overrides = lung_nodule_overrides(nifti, out_dir)
    overrides["device"] = f"$torch.device('{device}')"
    parser = _parser(bundles, LUNG_NODULE, overrides)
    network = parser.get_parsed_content("network")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state, strict=True)
    detector = parser.get_parsed_content("detector")
    for op in parser.get_parsed_content("detector_ops"):
        del op
    preprocessing = parser.get_parsed_content("preprocessing")
    postprocessing = parser.get_parsed_content("postprocessing")
    amp = bool(parser.get_parsed_content("amp"))
    force_sliding_window = bool(parser.get_parsed_content("force_sliding_window"))
    roi_voxels = int(np.prod(detector.inferer.roi_size)) if detector.inferer is not None else None
    torch_device = torch.device(device)

    start = time.perf_counter()
    item = preprocessing({"image": str(nifti)})
    image = item["image"]
    network.eval()  # the evaluator's mode; RetinaNetInferer then copies network.training to the detector
    detector.network = network
    detector.training = network.training
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "User provided device_type of 'cuda'", UserWarning)
        warnings.filterwarnings("ignore", "__array_wrap__ must accept context", DeprecationWarning)
        # scripts/detection_inferer.py RetinaNetInferer: the detector's sliding window only when forced
        # or when the image has at least as many voxels as the patch.
        use_inferer = force_sliding_window or not (roi_voxels is not None and image[0].numel() < roi_voxels)
        context = torch.autocast("cuda") if amp and torch_device.type == "cuda" else _null()
        with context:
            pred = detector([image.to(torch_device)], use_inferer=use_inferer)[0]
    pred = {k: v.detach().float().cpu() if isinstance(v, torch.Tensor) else v for k, v in pred.items()}
    out = postprocessing({**pred, "image": image.cpu()})
    seconds = time.perf_counter() - start
    # cccwhd in patient LPS mm: AffineBoxToWorldCoordinated(affine_lps_to_ras=True) maps the boxes with
    # the image's RAS affine and then flips x and y back to the LPS that the ITK reader started from.
    boxes = np.asarray(out["box"], dtype=np.float64).reshape(-1, 6)
    centers = boxes[:, :3]
    return BundleDetections(
        centers_lps=centers,
        sizes_mm=boxes[:, 3:],
        scores=np.asarray(out["label_scores"], dtype=np.float64).reshape(-1),
        seconds=seconds,
    )


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def boxes_to_lps(
    boxes: npt.NDArray[np.float64], affine_lps: npt.NDArray[np.float64], size: Sequence[float]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Our grid boxes (x1 y1 z1 x2 y2 z2) clipped to the image, as LPS centres and mm sizes; kept mask."""
    lo = np.clip(boxes[:, :3], 0.0, np.asarray(size, dtype=np.float64))
    hi = np.clip(boxes[:, 3:], 0.0, np.asarray(size, dtype=np.float64))
    kept = np.all(hi > lo, axis=1)
    centre = (lo + hi) / 2.0
    world = (affine_lps @ np.c_[centre, np.ones(len(centre))].T).T[:, :3]
    sides = (hi - lo) * np.linalg.norm(affine_lps[:3, :3], axis=0)
    return world[kept], sides[kept], kept
