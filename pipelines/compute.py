"""Where inference runs: CUDA with mixed precision when a GPU is present, else CPU with N threads.

On CUDA: ``torch.autocast`` to float16 (the bundles' ``amp: true``) inside ``torch.inference_mode``,
host tensors copied through pinned (page-locked) memory without blocking, cuDNN autotuning on (the
bundles' ``initialize`` sets it too). Networks stay warm per worker process (``models.loader``); one
worker per GPU (``dicom-node worker`` on the ``gpu`` queue).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

THREADS_ENV = "DICOM_NODE_TORCH_THREADS"


@dataclass(frozen=True)
class Compute:
    """A device and whether to autocast to half precision on it."""

    device: torch.device
    amp: bool

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision on CUDA (as the bundles' ``amp: true``); full precision on CPU."""
        with torch.inference_mode():
            if self.amp and self.is_cuda:
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    yield
            else:
                yield

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on this device; from host to CUDA through pinned memory, without blocking.

        The copy is ordered on the current stream before any kernel that reads it, so no explicit
        synchronisation is needed; on CPU the tensor is returned as it is.
        """
        if not self.is_cuda:
            return tensor
        if tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)


def select_compute(device: str | None = None, *, cpu_threads: int | None = None, amp: bool = True) -> Compute:
    """CUDA if available (or as asked), else CPU with ``cpu_threads`` (or ``$DICOM_NODE_TORCH_THREADS``)."""
    chosen = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if chosen.type == "cpu":
        threads = cpu_threads or int(os.environ.get(THREADS_ENV, "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
    else:
        torch.backends.cudnn.benchmark = True
    return Compute(chosen, amp)
