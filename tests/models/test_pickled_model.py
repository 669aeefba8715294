"""The restricted unpickler reads pickled whole models (legacy and zip) and refuses anything else."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch
from torch import nn

from models.installer import scaffold
from models.pickled_model import (
    LEGACY_MAGIC_NUMBER,
    PickledModelError,
    is_scaffold,
    load_pickled_module,
    read_pickled_state_dict,
)
from models.txrv_densenet import XrvDenseNet121


def test_txrv_scaffold_is_a_legacy_pickled_densenet_with_the_published_keys(tmp_path):
    path = scaffold("txrv-densenet121-res224-all", tmp_path / "txrv.pt")
    assert path.read_bytes()[:2] == b"\x80\x02"  # a protocol-2 pickle stream, not a zip archive
    module = load_pickled_module(path)
    assert type(module).pickled_path == ("torchxrayvision.models", "DenseNet")
    assert is_scaffold(module)
    state = read_pickled_state_dict(path)
    reference = XrvDenseNet121().state_dict()
    assert list(state) == list(reference)
    assert all(state[k].shape == reference[k].shape for k in reference)
    assert (
        sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 6_966_034
    )


def test_zip_format_whole_module_from_torch_save_is_read(tmp_path):
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    torch.save(network, tmp_path / "zip.pt")
    state = read_pickled_state_dict(tmp_path / "zip.pt")
    assert list(state) == list(network.state_dict())
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo unpickled code ran",))


def test_a_pickle_that_calls_code_is_refused(tmp_path):
    stream = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, 1001, {}):
        pickle.dump(header, stream, protocol=2)
    pickle.dump(_Exploit(), stream, protocol=2)
    path = tmp_path / "evil.pt"
    path.write_bytes(stream.getvalue())
    with pytest.raises(PickledModelError, match="no reason to contain"):
        read_pickled_state_dict(path)


def test_a_state_dict_file_is_not_a_pickled_model(tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(PickledModelError, match="not a pickled model"):
        load_pickled_module(tmp_path / "sd.pt")
