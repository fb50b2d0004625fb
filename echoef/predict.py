"""Apply the trained pipeline (segmenter + calibrator) to new studies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import calibration, camus, figures, segmentation
from .ef import patient_ef


def ef_method(views: set[str]) -> str | None:
    """Simpson biplane with both views, single-plane discs with one, None without a complete view."""
    if views == set(camus.VIEWS):
        return "simpson_biplane"
    if len(views) == 1:
        return f"simpson_single_plane_{next(iter(views)).lower()}"
    return None


def predict_study(patient: str, paths: dict[tuple[str, str], Path], models: list[torch.nn.Module], size: int,
                  calibrator: dict, infer_config: dict, out_dir: Path) -> dict:
    """Segment the frames of one study, write its label maps beside an overlay PNG, return its EF row.

    Label maps are written as ``out_dir/<patient>/<patient>_<view>_<phase>_gt<ext>``, in the format
    and geometry of their input image, so ``python -m echoef ef ... --labels out_dir`` reads them back.
    The calibrator is applied only to EF by the method it was fitted for.
    """
    frames = {}
    for key, path in paths.items():
        image, spacing_mm = camus.read_image(path)
        frames[key] = camus.Frame(image.astype(np.float32), None, spacing_mm)
    labels = segmentation.predict_frames(models, frames, size, infer_config["batch_size"], infer_config["tta"],
                                         infer_config["precision"])
    for (view, phase), path in paths.items():
        extension = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
        camus.write_label_like(labels[(view, phase)], path, out_dir / patient / f"{patient}_{view}_{phase}_gt{extension}")
    complete = {v for v in camus.VIEWS if all((v, p) in frames for p in camus.PHASES)}
    method = ef_method(complete)
    if method is None:
        row = {"method": "", "edv_ml": math.nan, "esv_ml": math.nan, "ef": math.nan, "status": "no_complete_view"}
    else:
        row = patient_ef({k: (labels[k], frames[k].spacing_mm) for k in frames if k[0] in complete}, method)
        if method != "simpson_biplane" and row["status"].startswith("ok"):
            row["status"] = row["status"].replace("ok", "ok_single_plane", 1)
    same_method = row["method"] == calibrator.get("ef_method", "simpson_biplane")
    row["ef_calibrated"] = float(calibration.apply(calibrator, np.array([row["ef"]]))[0]) if same_method else math.nan
    row["frames"] = "+".join(f"{v}_{p}" for v, p in frames)
    title = f"{patient} {row['status']}" if math.isnan(row["ef"]) else f"{patient} EF {row['ef']:.0f}"
    figures.overlays([{"title": title, "frames": {k: (f.image, None, labels[k], f.spacing_mm) for k, f in frames.items()}}],
                     out_dir / patient / f"{patient}_overlay.png")
    return {"patient": patient, **row}
