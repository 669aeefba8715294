"""Pipelines by name, built on verified installed weights.

``get_pipeline(name, models_dir)`` loads (once per process, through ``models.loader``) the model the
pipeline needs and raises ``PipelineNotInstalledError`` with the reason when the weights are missing
or do not verify — the node then marks the job ``skipped`` with that reason. Untrained scaffold
weights (``models scaffold``) are refused with ``UntrainedModelError`` once verified, unless the caller
passes ``allow_untrained=True`` (tests, benchmarks, site training); the pipeline then carries
``ModelInfo.untrained`` so that every result object says so. No code path here downloads anything.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from models.errors import ModelError
from models.loader import InstalledModel, load_model
from pipelines.base import AnalysisMode, Pipeline
from pipelines.compute import Compute, select_compute
from pipelines.ct_lung_nodules import BundleNoduleDetector, LungNoduleDetectionPipeline, NoduleSettings
from pipelines.ct_vertebrae import BundleSegmenter, VertebraSegmentationPipeline, VertebraSettings
from pipelines.cxr_classification import CxrClassificationPipeline
from pipelines.errors import PipelineNotInstalledError, UntrainedModelError
from pipelines.findings import ModelInfo

PIPELINE_MODELS: dict[str, str] = {
    "cxr-classification": "txrv-densenet121-res224-all",
    "ct-lung-nodules": "monai-lung-nodule-ct-detection",
    "ct-vertebrae": "monai-wholebody-ct-segmentation",
}
PIPELINE_NAMES: tuple[str, ...] = tuple(PIPELINE_MODELS)


def model_info(installed: InstalledModel) -> ModelInfo:
    """Name, version (``site-…`` or ``scaffold-…`` if not published), sha256 and whether untrained."""
    return ModelInfo(
        name=installed.name,
        version=installed.record.version,
        weights_sha256=installed.record.sha256,
        untrained=installed.record.untrained,
    )


def get_pipeline(
    name: str,
    models_dir: Path,
    compute: Compute | None = None,
    *,
    allow_untrained: bool = False,
    mode: AnalysisMode | str = AnalysisMode.EXACT,
) -> Pipeline:
    """The named pipeline on its verified weights, in ``mode`` (``exact``, the bundle's, or ``fast``).

    Raises ``PipelineNotInstalledError`` if the weights are not usable, ``UntrainedModelError`` if they
    are a scaffold and ``allow_untrained`` is false.
    """
    if name not in PIPELINE_MODELS:
        raise ValueError(f'Argument "name" must be one of {", ".join(PIPELINE_NAMES)}, got {name!r}.')
    model = PIPELINE_MODELS[name]
    mode = AnalysisMode(mode)
    compute = compute or select_compute()
    try:
        installed = load_model(models_dir, model, compute.device)
    except ModelError as exc:
        raise PipelineNotInstalledError(name, str(exc)) from exc
    # After verification: weights that no longer match their record are "not installed", whatever
    # the record says they were.
    if installed.record.untrained and not allow_untrained:
        raise UntrainedModelError(name, model, installed.record.version)
    info = model_info(installed)
    if mode is AnalysisMode.FAST and name != "cxr-classification":
        # A fast result is not the published computation: its version says so wherever the SR and SEG
        # name the algorithm, and a result's identity (which includes the version) differs from exact's.
        info = replace(info, version=f"{info.version}+fast")
    data = installed.manifest.data
    if name == "cxr-classification":
        return CxrClassificationPipeline(
            model=info,
            classifier=installed.network,
            labels=tuple(data["labels"]),
            op_thresholds=tuple(float(t) for t in data["thresholds"]["op_threshs"]),
            compute=compute,
        )
    if name == "ct-lung-nodules":
        from monai.apps.detection.networks.retinanet_network import RetinaNet

        from models.lung_nodule_retinanet import build_lung_nodule_detector

        if not isinstance(installed.network, RetinaNet):
            kind = type(installed.network).__name__
            raise PipelineNotInstalledError(name, f"the installed network is a {kind}, not a RetinaNet")
        inference, thresholds = data["inference"], data["thresholds"]
        detector = build_lung_nodule_detector(
            installed.network,
            feature_map_scales=inference["anchor_feature_map_scales"],
            base_anchor_shapes=inference["base_anchor_shapes"],
            score_thresh=thresholds["score_thresh"],
            topk_candidates_per_level=thresholds["topk_candidates_per_level"],
            nms_thresh=thresholds["nms_thresh"],
            detections_per_img=thresholds["detections_per_img"],
            roi_size=inference["roi_size"],
            overlap=inference["overlap"],
        )
        return LungNoduleDetectionPipeline(
            model=info,
            detector=BundleNoduleDetector(detector, data, compute, mode),
            settings=NoduleSettings.from_manifest(data),
        )
    return VertebraSegmentationPipeline(
        model=info,
        segmenter=BundleSegmenter(installed.network, data, compute, mode),
        settings=VertebraSettings.from_manifest(data),
    )
