"""The network of MONAI's ``wholeBody_ct_segmentation`` bundle (v0.2.5): SegResNet, 105 classes."""

from __future__ import annotations

from monai.networks.nets.segresnet import SegResNet


def build_wholebody_segresnet() -> SegResNet:
    """The bundle's ``network_def`` from ``configs/inference.json``, untrained."""
    return SegResNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=105,
        init_filters=32,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
        dropout_prob=0.2,
    )
