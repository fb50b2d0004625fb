"""Apply the trained pipeline (segmenter + calibrator) to new studies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import calibration, camus, figures, imagefile, segmentation
from .ef import is_measured, patient_ef
from .errors import StudyError
from .params import Infer


def ef_method(views: set[str]) -> str | None:
    """Simpson biplane with both views, single-plane discs with one, None without a complete view."""
    if views == set(camus.VIEWS):
        return "simpson_biplane"
    if len(views) == 1:
        return f"simpson_single_plane_{next(iter(views)).lower()}"
    return None


def read_frames(paths: dict[tuple[str, str], Path], spacing_mm: tuple[float, float] | None
                ) -> tuple[dict[tuple[str, str], camus.Frame], list[str]]:
    """The readable frames of a study and a note for each unreadable one; StudyError (the first
    file's) when none can be read."""
    frames, notes, errors = {}, [], []
    for (view, phase), path in paths.items():
        try:
            image, spacing, header = imagefile.read_image(path, spacing_mm)
        except StudyError as error:
            errors.append(error)
            notes.append(f"{view}_{phase} {error}")
            continue
        frames[(view, phase)] = camus.Frame(image.astype(np.float32), None, spacing, header)
    if not frames:
        raise errors[0]
    return frames, notes


def calibrated_ef(row: dict, calibrator: dict) -> float:
    """The calibrated EF of a measured row by the method the calibrator was fitted for, else NaN."""
    if not is_measured(row["status"]) or row["method"] != calibrator.get("ef_method", "simpson_biplane"):
        return math.nan
    return float(calibration.apply(calibrator, np.array([row["ef"]]))[0])


def predict_study(patient: str, paths: dict[tuple[str, str], Path], models: list[torch.nn.Module], size: int,
                  calibrator: dict, infer_config: Infer, out_dir: Path, spacing_mm: tuple[float, float] | None = None) -> dict:
    """Segment the frames of one study, write its label maps beside an overlay PNG, return its EF row.

    Label maps are written as ``out_dir/<patient>/<patient>_<view>_<phase>_gt<ext>`` with the
    geometry of their input image (NIfTI for inputs without a header), so ``echoef ef ... --labels
    out_dir`` reads them back. A frame that cannot be read is left out and named in ``detail``; EF
    then comes from the complete views that remain.
    """
    frames, notes = read_frames(paths, spacing_mm)
    labels = segmentation.predict_frames(models, frames, size, infer_config.batch_size, infer_config.tta,
                                         infer_config.precision)
    for (view, phase), frame in frames.items():
        path = imagefile.label_path_for(paths[(view, phase)], out_dir / patient, f"{patient}_{view}_{phase}_gt")
        imagefile.write_label(labels[(view, phase)], frame.header, path)
    complete = {v for v in camus.VIEWS if all((v, p) in frames for p in camus.PHASES)}
    method = ef_method(complete)
    if method is None:
        row = {"method": "", "edv_ml": math.nan, "esv_ml": math.nan, "ef": math.nan, "status": "no_complete_view"}
    else:
        row = patient_ef({k: (labels[k], frames[k].spacing_mm) for k in frames if k[0] in complete}, method)
        if method != "simpson_biplane" and is_measured(row["status"]):
            row["status"] = row["status"].replace("ok", "ok_single_plane", 1)
    row["ef_calibrated"] = calibrated_ef(row, calibrator)
    row["frames"] = "+".join(f"{v}_{p}" for v, p in frames)
    row["detail"] = "; ".join(notes)
    title = f"{patient} EF {row['ef']:.0f}" if is_measured(row["status"]) else f"{patient} {row['status']}"
    figures.overlays([{"title": title, "frames": {k: (f.image, None, labels[k], f.spacing_mm) for k, f in frames.items()}}],
                     out_dir / patient / f"{patient}_overlay.png")
    return {"patient": patient, **row}
