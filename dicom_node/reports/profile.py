"""Per-destination choices of how results are encoded.

The default profile is plain DICOM: a BINARY SEG, one TID 1500 SR per result, no companion image. The SR
has one shape for every destination (docs/reports.md): the former ``ohif`` profile, whose SR differed,
is an alias of ``standard`` now, accepted with a deprecation warning in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

import highdicom as hd

PRESENTATION_STATE_SUFFIX = "+presentation-state"
"""As ``dicom_node.config.PRESENTATION_STATE_SUFFIX`` (reports may not import config; a test checks)."""

log = logging.getLogger(__name__)


class CompanionType(StrEnum):
    """A human-readable companion object for viewers that do not render SR."""

    NONE = "none"
    SECONDARY_CAPTURE = "secondary-capture"


@dataclass(frozen=True)
class ReportProfile:
    """How to encode results for one destination.

    ``seg_type``: BINARY (read by most viewers) or LABELMAP (RLE-compressed, far smaller).
    ``companion``: add a secondary capture with the findings drawn, for viewers without SR support.
    ``presentation_state``: add a Grayscale Softcopy Presentation State with each SR's outlines and
    labels (reports/presentation.py), for viewers that draw no SR graphics.
    """

    seg_type: hd.seg.SegmentationTypeValues = hd.seg.SegmentationTypeValues.BINARY
    companion: CompanionType = CompanionType.NONE
    presentation_state: bool = False

    def __post_init__(self) -> None:
        # Accept strings at this outer API and turn them into the enums at once.
        object.__setattr__(self, "seg_type", hd.seg.SegmentationTypeValues(self.seg_type))
        object.__setattr__(self, "companion", CompanionType(self.companion))
        if self.seg_type not in (
            hd.seg.SegmentationTypeValues.BINARY,
            hd.seg.SegmentationTypeValues.LABELMAP,
        ):
            raise ValueError(f'Argument "seg_type" must be BINARY or LABELMAP, got {self.seg_type.value}.')


DEFAULT_PROFILE = ReportProfile()
LABELMAP_PROFILE = ReportProfile(seg_type=hd.seg.SegmentationTypeValues.LABELMAP)
OHIF_PROFILE = DEFAULT_PROFILE
"""Deprecated: the standard profile, whose SR OHIF 3.13 displays."""

DEPRECATED_ALIASES: Mapping[str, str] = {"ohif": "standard"}

PROFILES: Mapping[str, ReportProfile] = {
    "standard": DEFAULT_PROFILE,
    "ohif": DEFAULT_PROFILE,
    "labelmap": LABELMAP_PROFILE,
}
"""The profiles a ``[[destinations]]`` entry may name (``dicom_node.config.REPORT_PROFILES`` lists them)."""


def profile_named(name: str) -> ReportProfile:
    """The profile called ``name``; a deprecated alias logs a warning. ``KeyError`` for unknown names."""
    chosen = PROFILES[name]
    if name in DEPRECATED_ALIASES:
        log.warning(
            'report profile "%s" is deprecated: it is the "%s" profile now (one SR shape that OHIF displays)',
            name,
            DEPRECATED_ALIASES[name],
        )
    return chosen


def resolve_profile(name: str) -> ReportProfile:
    """The profile a destination's effective profile name stands for (``Destination.report_profile``).

    ``"<profile>+presentation-state"`` is the named profile with ``presentation_state`` set;
    ``KeyError`` for a name that is not one.
    """
    base, plus, rest = name.partition("+")
    if plus and "+" + rest != PRESENTATION_STATE_SUFFIX:
        raise KeyError(name)
    profile = profile_named(base)
    return replace(profile, presentation_state=True) if plus else profile
