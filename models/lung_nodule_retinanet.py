"""The network of MONAI's ``lung_nodule_ct_detection`` bundle, built without torchvision.

The bundle calls ``resnet_fpn_feature_extractor(resnet50(...), 3, False, [1, 2], None)``, which in
MONAI 1.6 imports torchvision for ``_validate_trainable_layers`` and ``IntermediateLayerGetter``.
``LayerGetter`` below replaces the latter with the same child names, so the state-dict keys stay
``feature_extractor.body.{conv1,bn1,layer1,layer2}.*`` and ``feature_extractor.fpn.*``; the FPN is
MONAI's own ``FeaturePyramidNetwork`` with ``LastLevelMaxPool`` (the third feature map). Trainable-layer
freezing only matters for training and is left out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet
from torch import nn


class LayerGetter(nn.ModuleDict):
    """The backbone's children up to the last returned layer, run in order; returns the named outputs."""

    def __init__(self, backbone: nn.Module, return_layers: dict[str, str]) -> None:
        wanted = dict(return_layers)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in backbone.named_children():
            layers[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        if wanted:
            raise ValueError(f'Argument "return_layers" names layers the backbone lacks: {sorted(wanted)}')
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class ResNetFPNFeatureExtractor(nn.Module):
    """``body`` (the ResNet up to the returned layers) then ``fpn``; ``out_channels`` as RetinaNet expects."""

    def __init__(self, backbone: resnet.ResNet, spatial_dims: int, returned_layers: Sequence[int]) -> None:
        super().__init__()
        return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
        in_channels_stage2 = backbone.in_planes // 8
        in_channels_list = [in_channels_stage2 * 2 ** (i - 1) for i in returned_layers]
        self.out_channels = 256
        self.body = LayerGetter(backbone, return_layers)
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=spatial_dims,
            in_channels_list=in_channels_list,
            out_channels=self.out_channels,
            extra_blocks=LastLevelMaxPool(spatial_dims),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = self.fpn(self.body(x))
        return features


def build_lung_nodule_retinanet() -> RetinaNet:
    """The bundle's ``network_def`` (v0.6.8 ``configs/inference.json``), untrained."""
    backbone = resnet.resnet50(
        spatial_dims=3, n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7]
    )
    feature_extractor = ResNetFPNFeatureExtractor(backbone, spatial_dims=3, returned_layers=[1, 2])
    return RetinaNet(
        spatial_dims=3,
        num_classes=1,
        num_anchors=3,
        feature_extractor=feature_extractor,
        size_divisible=[16, 16, 8],
        use_list_output=False,
    )


def build_lung_nodule_detector(
    network: RetinaNet,
    *,
    feature_map_scales: Sequence[int],
    base_anchor_shapes: Sequence[Sequence[int]],
    score_thresh: float,
    topk_candidates_per_level: int,
    nms_thresh: float,
    detections_per_img: int,
    roi_size: Sequence[int],
    overlap: float,
) -> RetinaNetDetector:
    """The bundle's ``detector`` with its ``detector_ops`` applied (values come from our manifest)."""
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=list(feature_map_scales), base_anchor_shapes=[list(s) for s in base_anchor_shapes]
    )
    detector = RetinaNetDetector(
        network=network, anchor_generator=anchors, spatial_dims=3, num_classes=1, size_divisible=[16, 16, 8]
    )
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(
        score_thresh=score_thresh,
        topk_candidates_per_level=topk_candidates_per_level,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )
    detector.set_sliding_window_inferer(
        roi_size=list(roi_size), overlap=overlap, sw_batch_size=1, mode="constant", device="cpu"
    )
    detector.eval()
    return detector
