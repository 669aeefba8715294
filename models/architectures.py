"""Which network each model is, how to build it, and how to check a state dict against it."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from models.errors import ArchitectureMismatchError


def _txrv() -> nn.Module:
    from models.txrv_densenet import XrvDenseNet121

    return XrvDenseNet121()


def _nodules() -> nn.Module:
    from models.lung_nodule_retinanet import build_lung_nodule_retinanet

    return build_lung_nodule_retinanet()


def _wholebody() -> nn.Module:
    from models.wholebody_segresnet import build_wholebody_segresnet

    return build_wholebody_segresnet()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "txrv-densenet121-res224-all": _txrv,
    "monai-lung-nodule-ct-detection": _nodules,
    "monai-wholebody-ct-segmentation": _wholebody,
}

_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def build_network(name: str) -> nn.Module:
    """An untrained instance of the model's exact network."""
    try:
        return BUILDERS[name]()
    except KeyError:
        raise ValueError(f'Argument "name" must be one of {", ".join(BUILDERS)}, got {name!r}.') from None


def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """State-dict key → tensor shape of the network (computed once per process)."""
    if name not in _SHAPES:
        _SHAPES[name] = {k: tuple(v.shape) for k, v in build_network(name).state_dict().items()}
    return _SHAPES[name]


def architecture_problems(name: str, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``state_dict`` from loading strictly into the network; empty when it fits."""
    expected = expected_shapes(name)
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        problems.append(f"{len(missing)} missing tensors (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {', '.join(unexpected[:3])})")
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} instead of {shape}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != shape
    ]
    if wrong:
        problems.append(f"{len(wrong)} tensors with other shapes (first: {'; '.join(wrong[:3])})")
    return problems


def check_architecture(name: str, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``ArchitectureMismatchError`` unless ``state_dict`` loads strictly into the network."""
    problems = architecture_problems(name, state_dict)
    if problems:
        raise ArchitectureMismatchError(
            f"{what} is not the {name} network: {'; '.join(problems)}. Import weights of this exact "
            f"architecture (`dicom-node models scaffold {name} OUT` writes one to compare with)"
        )
