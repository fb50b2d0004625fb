"""The field's vocabulary, with no reader behind it: apical views, cardiac phases, the labels of a
CAMUS label map, one frame with its spacing, and the names of the EF and calibration methods and of
the per-view measures. Every layer may import it; it imports nothing of the package at run time."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .io.imagefile import Header


class View(StrEnum):
    """The apical views of CAMUS (their file-name spelling)."""

    A2C = "2CH"
    A4C = "4CH"


class Phase(StrEnum):
    """End-diastole and end-systole."""

    ED = "ED"
    ES = "ES"


class Label(IntEnum):
    """The values of a CAMUS label map."""

    BACKGROUND = 0
    LV = 1  # the LV cavity (endocardium)
    MYOCARDIUM = 2
    ATRIUM = 3  # the left atrium


VIEWS = tuple(View)
PHASES = tuple(Phase)
FRAME_KEYS = tuple((v, p) for v in View for p in Phase)  # (view, phase) of each frame, 2CH ED first
HEART_LABELS = (Label.LV, Label.MYOCARDIUM, Label.ATRIUM)
# Simpson's biplane method of discs (the CAMUS reference), single-plane discs of one view, area-length.
EF_METHODS = ("simpson_biplane", "simpson_single_plane_2ch", "simpson_single_plane_4ch", "area_length")
CALIBRATION_METHODS = ("none", "linear", "isotonic", "ridge")
# Test-time augmentation by scale (infer.tta_scales): the picture shrunk about the probe, never
# enlarged, so the whole sector (the atrium and the mitral plane at its far end) stays in view.
TTA_SCALE_RANGE = (0.8, 1.0)
# Segmentation networks of segmentation-models-pytorch that train.network.architecture may name.
NETWORK_ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus")
# Each view's single-plane EF and each frame's long axis, measured with the EF: what a calibrator may
# read beside it and what a reader checks a view against the other with.
VIEW_COLUMNS = ["ef_2ch", "long_axis_ed_2ch_mm", "long_axis_es_2ch_mm", "ef_4ch", "long_axis_ed_4ch_mm", "long_axis_es_4ch_mm"]


@dataclass
class Frame:
    """One apical frame: image (H, W) and label map (H, W) in canonical orientation (either may be
    None), their (row, col) spacing in mm, and the header of the file they came from (None for
    arrays made in memory: the identity at the origin)."""

    image: np.ndarray | None
    label: np.ndarray | None
    spacing_mm: tuple[float, float]
    header: Header | None = None
    spacing_stated: bool = True  # False: a nominal pixel size (a video's), good for the EF ratio only
