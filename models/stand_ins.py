"""Inert stand-ins for the classes a pickled ``nn.Module`` names, shared by both file-format readers.

A whole-module file names its classes (``torchxrayvision.models.DenseNet``, ``torch.nn.modules.conv.
Conv2d``…). Importing them would need torchxrayvision and torchvision and would run their code; each
reader instead maps every class under ``STAND_IN_PACKAGES`` to a fresh ``StandInModule`` subclass that
only keeps the pickled ``__dict__``. A stand-in has no ``__init__``, no ``__reduce__`` and a
``__setstate__`` that copies a dict: nothing of the file's choosing runs through it.
"""

from __future__ import annotations

STAND_IN_PACKAGES = ("torch.nn.", "torchvision.", "torchxrayvision.")


class PickledModelError(ValueError):
    """The file is not a pickled model this reader accepts; the message says why."""


class StandInModule:
    """An inert stand-in for a pickled ``nn.Module`` subclass: it keeps the pickled ``__dict__`` only."""

    pickled_path: tuple[str, str] = ("", "")

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise PickledModelError(f"{'.'.join(self.pickled_path)} was pickled with a state that is no dict")
        self.__dict__.update(state)


def is_stand_in_name(module: str) -> bool:
    """Whether a pickled global of this module becomes a stand-in (anything else is refused)."""
    return module.startswith(STAND_IN_PACKAGES)


def stand_in_class(module: str, name: str) -> type[StandInModule]:
    """A new ``StandInModule`` subclass recording the pickled class path ``module.name``."""
    return type(name, (StandInModule,), {"pickled_path": (module, name), "__module__": __name__})


def refusal(full_name: str) -> PickledModelError:
    """The error for a pickled global that no model file has a reason to contain."""
    return PickledModelError(
        f"the file refers to {full_name}, which a model file has no reason to contain; refusing to "
        "unpickle it (is this really the published weights file?)"
    )
