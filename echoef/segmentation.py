"""From network scores to label maps on the native grid, anatomically cleaned, and their Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from . import camus, framefile, geometry
from .dataset import INGESTED, grid_tensors, input_order, patient_path
from .model import predict_scores
from .simpson import clean_lv_mask

LV, MYO, LA = camus.LABELS["lv_cavity"], camus.LABELS["myocardium"], camus.LABELS["left_atrium"]
DICE_NAMES = {LV: "lv", MYO: "myo", LA: "la"}


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


def predict_frames(models: list[torch.nn.Module], frames: dict[tuple[str, str], camus.Frame], size: int,
                   batch_size: int, tta: bool = False, precision: str = "auto") -> dict[tuple[str, str], np.ndarray]:
    """Post-processed label maps on each frame's native grid, keyed like ``frames``; several models
    are an ensemble (mean of their softmax), whatever frames per input each reads. ``tta`` and
    ``precision`` as in ``model.predict_scores``."""
    keys = input_order(frames, max(m.phases_per_input for m in models))
    images, _, boxes = grid_tensors([frames[k] for k in keys], size, with_labels=False)
    scores = torch.stack([predict_scores(m, images, batch_size, tta, precision) for m in models]).mean(0)
    return {k: postprocess(geometry.to_native(s, b).argmax(0).numpy().astype(np.uint8)) for k, s, b in zip(keys, scores, boxes)}


def predict_patient(models: list[torch.nn.Module], patient: str, size: int, config: dict, out: Path,
                    ingested: Path = INGESTED) -> list[dict]:
    """Predict one ingested patient, save its label maps and spacing to ``out``; Dice rows per frame."""
    frames = framefile.load(patient_path(patient, ingested))
    labels = predict_frames(models, frames, size, config["batch_size"], config["tta"], config["precision"])
    return save_patient_labels(patient, frames, labels, out)


def save_patient_labels(patient: str, frames: dict[tuple[str, str], camus.Frame],
                        labels: dict[tuple[str, str], np.ndarray], out: Path) -> list[dict]:
    """Write predicted label maps (keyed like ``frames``) with each frame's geometry to ``out``; Dice
    rows against the frames' expert labels."""
    framefile.save(out, {key: camus.Frame(None, labels[key], frame.spacing_mm, frame.header) for key, frame in frames.items()})
    return [{"patient": patient, "view": view, "phase": phase,
             **{f"dice_{name}": dice(labels[(view, phase)], frame.label, c) for c, name in DICE_NAMES.items()}}
            for (view, phase), frame in frames.items()]


def dice_summary(table: pd.DataFrame) -> dict:
    """Mean Dice per label and phase (keys like dice_lv_ed) and the patient count."""
    out = {f"dice_{name}_{phase.lower()}": float(g[f"dice_{name}"].mean())
           for phase, g in table.groupby("phase") for name in DICE_NAMES.values()}
    out["n_patients"] = int(table["patient"].nunique())
    return out


def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice of one label between two label maps of the same grid (NaN if both lack it)."""
    p, t = pred == label, truth == label
    total = p.sum() + t.sum()
    return float(2 * (p & t).sum() / total) if total else float("nan")
