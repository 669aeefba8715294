"""An oracle DenseNet-121 whose class activation maps are planted: a test double, never analysis.

The network is the real ``XrvDenseNet121`` with weights set by hand so that two final feature channels
detect two patterns planted on the shared radiograph, and two labels read one channel each:

* ``conv0`` channel 0 is a 7 × 7 centre-surround filter (centre 3 × 3 minus the ring), channel 1 its
  negative; ``norm0`` subtracts ``DETECTION_LEVEL`` from both, so after the ReLU only a planted bright
  spot (channel 0) or dark spot (channel 1) of high contrast remains (nothing of the radiograph itself);
* every dense block passes its input channels through unchanged (concatenation), and every transition
  and ``norm5`` is set to pass channels 0 and 1 on as they are; so final channels 0 and 1 are those
  detections, pooled onto the 7 × 7 grid;
* ``classifier``: label ``BRIGHT_LABEL`` reads channel 0, ``DARK_LABEL`` channel 1, both with a large
  weight and a positive bias (positive findings); every other label has zero weights and a negative bias.

The spots are planted at the centres of two feature cells, so each label's CAM peaks there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
import torch
from pydicom.uid import ExplicitVRLittleEndian

from models.txrv_densenet import XrvDenseNet121
from pipelines.compute import select_compute
from pipelines.cxr_classification import CxrClassificationPipeline
from pipelines.findings import ModelInfo
from tests.conftest import CXR

M = TypeVar("M", bound=torch.nn.Module)
LABELS = tuple(f"label{i}" for i in range(18))
BRIGHT_LABEL, DARK_LABEL = 2, 10
THRESHOLDS = tuple([0.5] * 18)
DETECTION_LEVEL = 700.0  # of the centre-surround response, in the network's [-1024, 1024] units
SPOT_RADIUS = 12.0  # source pixels (1024 × 1024 → 224: 4.57 source pixels per input pixel)
# Feature cell (row, column) of each planted spot; cell (u, v) covers input pixels [32u, 32u + 32). The
# bright spot lies in the (dark) left lung, the dark one on the (bright) mediastinum: each has a contrast
# of over 1300 there (responses 900 and 1230), while nothing else on the radiograph reaches 600.
BRIGHT_CELL, DARK_CELL = (2, 4), (5, 3)


def cell_centre_in_source(cell: tuple[int, int], size: int = 1024) -> tuple[float, float]:
    """(column, row) in image coordinates of a feature cell's centre on a square source of ``size``."""
    scale = size / 224
    return (32 * cell[1] + 16) * scale, (32 * cell[0] + 16) * scale


def _module(net: torch.nn.Module, name: str, kind: type[M]) -> M:
    module = net.get_submodule(name)
    assert isinstance(module, kind), f"{name} is a {type(module).__name__}"
    return module


def _pass_channels(norm: torch.nn.BatchNorm2d) -> None:
    """A batch norm that leaves channels 0 and 1 as they are (eval mode: running statistics)."""
    assert norm.running_mean is not None and norm.running_var is not None
    norm.running_mean[:2] = 0.0
    norm.running_var[:2] = 1.0 - norm.eps
    norm.weight[:2] = 1.0
    norm.bias[:2] = 0.0


def oracle_network() -> XrvDenseNet121:
    torch.manual_seed(0)
    net = XrvDenseNet121()
    with torch.no_grad():
        kernel = torch.full((7, 7), -1.0 / 40)
        kernel[2:5, 2:5] = 1.0 / 9
        conv0 = _module(net, "features.conv0", torch.nn.Conv2d)
        conv0.weight[0, 0] = kernel
        conv0.weight[1, 0] = -kernel
        norm0 = _module(net, "features.norm0", torch.nn.BatchNorm2d)
        _pass_channels(norm0)
        assert norm0.running_mean is not None
        norm0.running_mean[:2] = DETECTION_LEVEL
        for name in ("transition1", "transition2", "transition3"):
            _pass_channels(_module(net, f"features.{name}.norm", torch.nn.BatchNorm2d))
            conv = _module(net, f"features.{name}.conv", torch.nn.Conv2d)
            conv.weight[:2] = 0.0
            conv.weight[0, 0] = 1.0
            conv.weight[1, 1] = 1.0
        _pass_channels(_module(net, "features.norm5", torch.nn.BatchNorm2d))
        net.classifier.weight.zero_()
        net.classifier.bias.fill_(-6.0)
        net.classifier.weight[BRIGHT_LABEL, 0] = 1.0
        net.classifier.weight[DARK_LABEL, 1] = 1.0
        net.classifier.bias[BRIGHT_LABEL] = 3.0
        net.classifier.bias[DARK_LABEL] = 3.0
    return net.eval()


def oracle_pipeline() -> CxrClassificationPipeline:
    return CxrClassificationPipeline(
        model=ModelInfo("oracle-densenet", "test-oracle", untrained=True),
        classifier=oracle_network(),
        labels=LABELS,
        op_thresholds=THRESHOLDS,
        compute=select_compute("cpu"),
    )


def _plant(pixels: np.ndarray, centre: tuple[float, float], value: int) -> None:
    rows, cols = np.ogrid[: pixels.shape[0], : pixels.shape[1]]
    # Distance from pixel centres (c + 0.5, r + 0.5) to the planted place in image coordinates.
    pixels[np.hypot(cols + 0.5 - centre[0], rows + 0.5 - centre[1]) <= SPOT_RADIUS] = value


def write_planted_radiograph(path: Path) -> pydicom.Dataset:
    """The shared radiograph with a bright spot and a dark spot planted (see ``BRIGHT_CELL``)."""
    ds = pydicom.dcmread(CXR)
    pixels = ds.pixel_array.copy()
    _plant(pixels, cell_centre_in_source(BRIGHT_CELL, pixels.shape[0]), 255)
    _plant(pixels, cell_centre_in_source(DARK_CELL, pixels.shape[0]), 0)
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)
