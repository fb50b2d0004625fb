"""The pipeline's own file of one patient's frames: a compressed .npz, written by ingest (images and
expert labels) and by inference (predicted labels), read by every later stage. The only code that
knows its keys.

Per frame ``{view}_{phase}`` it holds ``_spacing_mm`` (row, col), the source file's header
(``_header_spacing``, ``_header_origin``, ``_header_direction``: a prediction can be written back
over its image exactly), and ``_image`` and/or ``_label`` (H, W) in canonical orientation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import write_npz
from .camus import FRAME_KEYS, Frame
from .imagefile import Header

HEADER_FIELDS = ("spacing", "origin", "direction")


FRAME_FILES = "*.npz"  # what ``patient_path`` names: a folder of frame files holds these


def patient_path(patient: str, folder: Path) -> Path:
    """The frame file of one patient in a folder of them (ingested images and labels, or predictions)."""
    return Path(folder) / f"{patient}.npz"


def _compact(image: np.ndarray) -> np.ndarray:
    """uint8 where that loses nothing (CAMUS images are 8-bit), the values as they are otherwise."""
    if np.issubdtype(image.dtype, np.integer) or np.array_equal(image, np.round(image)):
        if image.min() >= 0 and image.max() <= 255:
            return image.astype(np.uint8)
    return image


def save(path: str | Path, frames: dict[tuple[str, str], Frame]) -> None:
    """Write frames keyed (view, phase) atomically; a frame's missing image or label is left out."""
    arrays = {}
    for (view, phase), frame in frames.items():
        key = f"{view}_{phase}"
        arrays[f"{key}_spacing_mm"] = np.asarray(frame.spacing_mm, dtype=float)
        header = frame.header or Header.plain(frame.spacing_mm)
        for name in HEADER_FIELDS:
            arrays[f"{key}_header_{name}"] = np.asarray(getattr(header, name), dtype=float)
        if frame.image is not None:
            arrays[f"{key}_image"] = _compact(frame.image)
        if frame.label is not None:
            arrays[f"{key}_label"] = np.asarray(frame.label, dtype=np.uint8)
    write_npz(path, **arrays)


def load(path: str | Path) -> dict[tuple[str, str], Frame]:
    """The frames of one file keyed (view, phase), images as float32 (None where not stored)."""
    with np.load(path) as data:
        frames = {}
        for view, phase in FRAME_KEYS:
            key = f"{view}_{phase}"
            if f"{key}_spacing_mm" not in data.files:
                continue
            header = Header(*(tuple(float(x) for x in data[f"{key}_header_{name}"]) for name in HEADER_FIELDS))
            image = data[f"{key}_image"].astype(np.float32) if f"{key}_image" in data.files else None
            label = data[f"{key}_label"] if f"{key}_label" in data.files else None
            frames[(view, phase)] = Frame(image, label, tuple(float(s) for s in data[f"{key}_spacing_mm"]), header)
        return frames
