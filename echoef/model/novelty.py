"""Whether a study is unlike the data the model was trained on: a per-study novelty score from what
the model itself shows (its uncertainty inside and around the LV, its members' disagreement) and from
the shape of the masks it draws (their size in the picture, outline, elongation, myocardium and atrium),
each against the same measures on the validation studies of the run.

Every feature is scale-free, so a video measured on a nominal pixel size is scored like any study.
A feature's deviation is in robust standard deviations of the validation studies (median, 1.4826
MAD); uncertainty and disagreement count only upwards (a confident, unanimous model is never odd). The
score is the largest deviation, named by its feature; the threshold is the validation scores' quantile
that flags ``TARGET_RATE`` of them, so about that share of in-distribution studies is reviewed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..io.camus import Label

if TYPE_CHECKING:  # torch is imported by what scores studies, not by the calibrate stage that fits the reference
    import torch

FEATURES = ("uncertainty", "member_disagreement", "lv_fraction", "lv_solidity", "lv_elongation", "myo_to_lv", "atrium_to_lv")
ONE_SIDED = frozenset({"uncertainty", "member_disagreement"})
TARGET_RATE = 0.05  # share of the validation studies flagged: those to review even in-distribution
MIN_REFERENCE_STUDIES = 10  # fewer validation studies give no quantile worth the name
BAND_PX = 3  # grid pixels around the LV where the model's uncertainty is measured
MAD_TO_SD = 1.4826


def lv_uncertainty(scores: torch.Tensor) -> float:
    """Mean normalised entropy (0 sure, 1 uniform) of one frame's softmax (C, H, W) over its LV and a
    band of BAND_PX grid pixels around it: where an unfamiliar image makes the model hesitate. NaN
    without an LV."""
    probabilities = scores.float().clamp_min(1e-8)
    entropy = -(probabilities * probabilities.log()).sum(0) / math.log(scores.shape[0])
    lv = (scores.argmax(0) == Label.LV).numpy()
    if not lv.any():
        return math.nan
    band = ndimage.binary_dilation(lv, iterations=BAND_PX)
    return float(entropy.numpy()[band].mean())


def frame_shape(label: np.ndarray, spacing_mm: tuple[float, float]) -> dict:
    """Scale-free measures of one cleaned label map: the LV's share of the picture, its solidity (area
    over its convex hull's), its elongation (long over short principal axis, in mm), and myocardium
    and atrium areas relative to the LV's. NaN where there is no LV."""
    lv = label == Label.LV
    n_lv = int(lv.sum())
    if n_lv < 3:
        return dict.fromkeys(("lv_fraction", "lv_solidity", "lv_elongation", "myo_to_lv", "atrium_to_lv"), math.nan)
    rows, cols = np.nonzero(lv)
    points = np.column_stack([rows * spacing_mm[0], cols * spacing_mm[1]])
    try:
        hull_mm2 = ConvexHull(points).volume + spacing_mm[0] * spacing_mm[1] * n_lv ** 0.5  # pixel centres' hull, plus a rim
        solidity = min(1.0, n_lv * spacing_mm[0] * spacing_mm[1] / hull_mm2)
    except QhullError:  # collinear pixels: a line, not a cavity
        solidity = 0.0
    eigen = np.linalg.eigvalsh(np.cov(points.T))
    return {"lv_fraction": n_lv / lv.size, "lv_solidity": float(solidity),
            "lv_elongation": float(np.sqrt(eigen[1] / max(eigen[0], 1e-12))),
            "myo_to_lv": float((label == Label.MYOCARDIUM).sum() / n_lv), "atrium_to_lv": float((label == Label.ATRIUM).sum() / n_lv)}


def study_features(labels: dict, spacings: dict, members: list[dict], uncertainty: dict) -> dict:
    """A study's features: each frame's measures (``frame_shape`` of ``labels[key]`` on
    ``spacings[key]``, ``uncertainty[key]``) averaged over its frames, and the members'
    disagreement (1 - mean Dice of each member's LV with the ensemble's; NaN for one network)."""
    shapes = pd.DataFrame([frame_shape(labels[key], spacings[key]) for key in labels])
    found = {name: float(shapes[name].mean()) for name in shapes}
    found["uncertainty"] = float(np.nanmean([uncertainty[key] for key in labels])) if any(
        np.isfinite(uncertainty[key]) for key in labels) else math.nan
    if members:
        from .overlap import dice

        agreement = [float(dice(member[key][None], labels[key][None], labels=(Label.LV,))[0, 0])
                     for member in members for key in labels]
        found["member_disagreement"] = float(1 - np.nanmean(agreement))
    else:
        found["member_disagreement"] = math.nan
    return {name: found[name] for name in FEATURES}


def deviations(reference: dict, features: dict) -> dict[str, float]:
    """Each feature's deviation from the reference in robust SDs (NaN where either lacks it)."""
    found = {}
    for name, (centre, scale) in reference["features"].items():
        value = features.get(name, math.nan)
        value = float(value) if value is not None else math.nan
        z = (value - centre) / scale if math.isfinite(value) else math.nan
        found[name] = max(z, 0.0) if name in ONE_SIDED and math.isfinite(z) else abs(z)
    return found


def score(reference: dict, features: dict) -> tuple[float, str]:
    """The study's novelty score (its largest deviation) and the feature it comes from; (NaN, '')
    when no feature could be measured."""
    found = {name: z for name, z in deviations(reference, features).items() if math.isfinite(z)}
    if not found:
        return math.nan, ""
    name = max(found, key=found.get)
    return float(found[name]), name


def fit_reference(table: pd.DataFrame, rate: float = TARGET_RATE) -> dict:
    """The reference of the validation studies' features (one row each): per feature its median and
    robust SD (features no study has are left out), and the score threshold above which ``rate`` of
    them lie. ValueError with fewer than MIN_REFERENCE_STUDIES."""
    if len(table) < MIN_REFERENCE_STUDIES:
        raise ValueError(f"{len(table)} validation studies; the novelty threshold needs {MIN_REFERENCE_STUDIES}")
    features = {}
    for name in FEATURES:
        values = pd.to_numeric(table.get(name), errors="coerce").dropna() if name in table else pd.Series(dtype=float)
        if len(values) >= MIN_REFERENCE_STUDIES:
            centre = float(values.median())
            spread = MAD_TO_SD * float((values - centre).abs().median())
            features[name] = [centre, max(spread, 1e-6, 1e-3 * abs(centre))]
    reference = {"features": features, "rate": rate, "n_validation": int(len(table))}
    scores = np.array([score(reference, row)[0] for row in table.to_dict(orient="records")])
    reference["threshold"] = float(np.nanquantile(scores, 1 - rate))
    reference["validation_flagged"] = float(np.mean(scores > reference["threshold"]))
    return reference


def pipeline_reference(table: pd.DataFrame) -> dict:
    """The run's reference from infer's novelty features (a ``set`` column): fitted on the validation
    patients, with the share of test patients it flags beside (a check, not a fit). Too few
    validation patients give a reference without threshold: no study is then flagged, and the file
    says why."""
    validation = table[table["set"] == "val"]
    try:
        reference = fit_reference(validation)
    except ValueError as error:
        return {"features": {}, "threshold": None, "note": str(error)}
    test = table[table["set"] == "test"]
    scores = np.array([score(reference, row)[0] for row in test.to_dict(orient="records")])
    reference["test_flagged"] = float(np.mean(scores > reference["threshold"])) if len(scores) else math.nan
    reference["n_test"] = int(len(scores))
    return reference


def rate_text(reference: dict) -> str:
    """How often the reference flags its validation and test studies, in words."""
    if reference.get("threshold") is None:
        return f"nothing ({reference.get('note', 'no threshold')})"
    text = f"{100 * reference['validation_flagged']:.0f}% of {reference['n_validation']} validation studies"
    if reference.get("n_test"):
        text += f", {100 * reference['test_flagged']:.0f}% of {reference['n_test']} test studies"
    return text + f" (score above {reference['threshold']:.2f} robust SDs)"


def flag(reference: dict | None, features: dict) -> tuple[float, str | None]:
    """A study's novelty score and its review reason (``unlike_training:<feature>``) when the score
    passes the reference's threshold; (NaN, None) without a reference or threshold."""
    if not reference or reference.get("threshold") is None:
        return math.nan, None
    value, name = score(reference, features)
    return value, (f"unlike_training:{name}" if math.isfinite(value) and value > reference["threshold"] else None)


def validate(reference) -> dict:
    """A novelty reference read from a file: known features with a finite centre and positive scale,
    a positive finite threshold (or none: nothing is flagged); ValueError naming what is wrong."""
    if not isinstance(reference, dict) or not isinstance(reference.get("features"), dict):
        raise ValueError("not a novelty reference (no 'features')")
    if reference.get("threshold") is None and not reference["features"]:
        return reference
    for name, pair in reference["features"].items():
        if name not in FEATURES:
            raise ValueError(f"unknown feature {str(name)[:40]!r}")
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in pair)
                and pair[1] > 0):
            raise ValueError(f"feature {name}: need [centre, positive scale]")
    threshold = reference.get("threshold")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError("threshold: need a positive number")
    return reference
