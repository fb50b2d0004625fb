"""From network scores to label maps on the native grid, anatomically cleaned, and their Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..io import camus, framefile
from ..io.camus import Label
from ..io.framefile import patient_path
from ..measure import review
from ..measure.simpson import clean_lv_mask, largest_component
from ..params import Infer
from . import geometry, novelty
from .dataset import grid_tensors, input_order
from .network import predict_scores
from .overlap import DICE_NAMES, dice  # noqa: F401 - what this module reports, with its names


def postprocess(label: np.ndarray) -> np.ndarray:
    """One LV component without holes (holes become LV, stray LV islands background), and only the
    largest atrium component."""
    label = label.copy()
    lv, _ = clean_lv_mask(label == Label.LV)
    label[(label == Label.LV) & ~lv] = Label.BACKGROUND
    label[lv] = Label.LV
    atrium, _ = largest_component(label == Label.ATRIUM)
    label[(label == Label.ATRIUM) & ~atrium] = Label.BACKGROUND
    return label


def predict_frames(models: list[torch.nn.Module], frames: dict[tuple[str, str], camus.Frame], size: int,
                   batch_size: int, tta: bool = False, precision: str = "auto",
                   scales: tuple[float, ...] = (1.0,)) -> dict[tuple[str, str], np.ndarray]:
    """Post-processed label maps on each frame's native grid, keyed like ``frames``; several models
    are an ensemble (mean of their softmax), whatever frames per input each reads. ``tta``,
    ``precision`` and ``scales`` as in ``network.predict_scores``."""
    return predict_frames_with_members(models, frames, size, batch_size, tta, precision, scales)[0]


def predict_frames_with_members(models: list[torch.nn.Module], frames: dict[tuple[str, str], camus.Frame], size: int,
                                batch_size: int, tta: bool = False, precision: str = "auto",
                                scales: tuple[float, ...] = (1.0,)):
    """``predict_frames``, and beside it what each member alone reads, the ensemble's raw argmax
    before post-processing (what review flags look at) and its uncertainty around the LV of each frame
    (``novelty.lv_uncertainty``): (labels, [member labels], raw labels, uncertainty)."""
    keys = input_order(frames, max(m.phases_per_input for m in models))
    images, _, boxes = grid_tensors([frames[k] for k in keys], size, with_labels=False)
    each = torch.stack([predict_scores(m, images, batch_size, tta, precision, scales) for m in models])

    def native(scores):
        return {k: geometry.to_native(s, b).argmax(0).numpy().astype(np.uint8) for k, s, b in zip(keys, scores, boxes)}

    mean = each.mean(0)
    raw = native(mean)
    members = [{k: postprocess(v) for k, v in native(member).items()} for member in each] if len(models) > 1 else []
    uncertainty = {k: novelty.lv_uncertainty(scores) for k, scores in zip(keys, mean)}
    return {k: postprocess(v) for k, v in raw.items()}, members, raw, uncertainty


def predict_patient(models: list[torch.nn.Module], patient: str, size: int, config: Infer, out: Path,
                    ingested: Path, ef_method: str) -> tuple[list[dict], dict]:
    """Predict one ingested patient, save its label maps and geometry to ``out``; its Dice rows per
    frame, and the signals predict's review reads: its novelty features (``novelty.study_features``)
    and how far apart its members' EFs by ``ef_method`` are (``review.member_ef_spread``), as predict
    computes them."""
    frames = framefile.load(patient_path(patient, ingested))
    labels, members, _, uncertainty = predict_frames_with_members(models, frames, size, config.batch_size, config.tta,
                                                                  config.precision, tuple(config.tta_scales))
    spacings = {k: f.spacing_mm for k, f in frames.items()}
    features = novelty.study_features(labels, spacings, members, uncertainty)
    spread = review.member_ef_spread(members, spacings, ef_method)
    return save_patient_labels(patient, frames, labels, out), {"patient": patient, **features, "member_ef_spread": spread}


def save_patient_labels(patient: str, frames: dict[tuple[str, str], camus.Frame],
                        labels: dict[tuple[str, str], np.ndarray], out: Path) -> list[dict]:
    """Write predicted label maps (keyed like ``frames``) with each frame's geometry to ``out``; Dice
    rows against the frames' expert labels."""
    framefile.save(out, {key: camus.Frame(None, labels[key], frame.spacing_mm, frame.header) for key, frame in frames.items()})
    rows = []
    for (view, phase), frame in frames.items():
        scores = dice(labels[(view, phase)][None], frame.label[None])[0].tolist()
        rows.append({"patient": patient, "view": str(view), "phase": str(phase),
                     **{f"dice_{name}": score for name, score in zip(DICE_NAMES.values(), scores)}})
    return rows


def dice_summary(table: pd.DataFrame) -> dict:
    """Mean Dice per label and phase (keys like dice_lv_ed) and the patient count."""
    out = {f"dice_{name}_{phase.lower()}": float(g[f"dice_{name}"].mean())
           for phase, g in table.groupby("phase") for name in DICE_NAMES.values()}
    out["n_patients"] = int(table["patient"].nunique())
    return out


def out_of_fold_dice(fold_dirs: list[Path]) -> dict:
    """Cross-validation's Dice out of fold (each fold's ``predictions/dice.csv``, in fold order) and the
    spread of the folds' mean LV Dice: the ``cv`` stage's, and a run of folds kept one at a time's."""
    oof_dice = pd.concat([pd.read_csv(Path(folder) / "predictions" / "dice.csv").assign(fold=fold)
                          for fold, folder in enumerate(fold_dirs)], ignore_index=True)
    lv = oof_dice.groupby("fold")["dice_lv"].mean()
    return {"folds": len(fold_dirs), "oof": dice_summary(oof_dice),
            "fold_spread": {"dice_lv_mean": float(lv.mean()), "dice_lv_std": float(lv.std(ddof=0))}}


def cv_dice_report(fold_dirs: list[Path], ensemble_rows: list[dict]) -> dict:
    """Cross-validation's Dice: out of fold with the folds' spread (``out_of_fold_dice``), and the fold
    ensemble's on the test list (``ensemble_rows``)."""
    return {**out_of_fold_dice(fold_dirs), "test_ensemble": dice_summary(pd.DataFrame(ensemble_rows))}

