"""From network scores to label maps on the native grid, anatomically cleaned, and their Dice."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from . import camus, geometry
from .dataset import grid_tensors
from .model import predict_scores
from .simpson import clean_lv_mask

LV, MYO, LA = camus.LABELS["lv_cavity"], camus.LABELS["myocardium"], camus.LABELS["left_atrium"]


def postprocess(label: np.ndarray) -> np.ndarray:
    """One LV component without holes (holes become LV, stray LV islands background), and only the
    largest atrium component."""
    label = label.copy()
    lv, _ = clean_lv_mask(label == LV)
    stray = (label == LV) & ~lv
    label[stray] = 0
    label[lv] = LV
    atrium, n = ndimage.label(label == LA)
    if n > 1:
        keep = 1 + int(np.argmax(np.bincount(atrium.ravel())[1:]))
        label[(atrium > 0) & (atrium != keep)] = 0
    return label


def predict_frames(model: torch.nn.Module, frames: list[camus.Frame], size: int, batch_size: int,
                   tta: bool = False) -> list[np.ndarray]:
    """Post-processed label maps on each frame's native grid."""
    images, _, boxes = grid_tensors(frames, size, with_labels=False)
    scores = predict_scores(model, images, batch_size, tta)
    return [postprocess(geometry.to_native(s, b).argmax(0).numpy().astype(np.uint8)) for s, b in zip(scores, boxes)]


def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice of one label between two label maps of the same grid (NaN if both lack it)."""
    p, t = pred == label, truth == label
    total = p.sum() + t.sum()
    return float(2 * (p & t).sum() / total) if total else float("nan")
