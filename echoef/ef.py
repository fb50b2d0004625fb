"""EF of one patient from four label maps, with a status instead of an exception."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import camus, framefile, geometry, simpson
from .dataset import INGESTED, patient_path

COLUMNS = ["patient", "method", "edv_ml", "esv_ml", "ef", "status"]
# Physiological limits of an adult LV measured by discs: below a few mL no ventricle was found (a
# sliver of a mask, a spacing in the wrong unit); above this no heart is that large.
MIN_VOLUME_ML = 5.0
MAX_VOLUME_ML = 600.0


def implausibility(edv_ml: float, esv_ml: float) -> str | None:
    """Why a pair of volumes cannot be a left ventricle's, or None if they can be."""
    if edv_ml < MIN_VOLUME_ML or esv_ml < MIN_VOLUME_ML:
        return f"volume_under_{MIN_VOLUME_ML:g}_ml"
    if edv_ml > MAX_VOLUME_ML or esv_ml > MAX_VOLUME_ML:
        return f"volume_over_{MAX_VOLUME_ML:g}_ml"
    if esv_ml >= edv_ml:
        return "esv_not_below_edv"
    return None


def patient_ef(frames: dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]], method: str) -> dict:
    """{method, edv_ml, esv_ml, ef, status} from label maps keyed (view, phase) with their spacing.

    ``status`` is 'ok', 'ok_touches_border:<frames>' (measured, but the cavity reaches the image
    edge), '<problem>:<frame>' with NaN volumes when a mask cannot be measured, or
    'implausible:<why>' with the volumes kept for inspection when they cannot be a ventricle's
    (``implausibility``); only 'ok' statuses count as measured.
    """
    needed = {"simpson_single_plane_2ch": ("2CH",), "simpson_single_plane_4ch": ("4CH",)}.get(method, camus.VIEWS)
    geometries, touching = {}, []
    for view in needed:
        for phase in camus.PHASES:
            label, spacing_mm = frames[(view, phase)]
            try:
                geometries[(view, phase)] = g = simpson.lv_geometry(label == camus.LABELS["lv_cavity"], spacing_mm)
            except simpson.LVGeometryError as error:
                return {"method": method, "edv_ml": math.nan, "esv_ml": math.nan, "ef": math.nan,
                        "status": f"{error.status}:{view}_{phase}"}
            if g.touches_border:
                touching.append(f"{view}_{phase}")
    result = simpson.volumes(geometries, method)
    status = "ok" if not touching else "ok_touches_border:" + "+".join(touching)
    why = implausibility(result.edv_ml, result.esv_ml)
    if why:
        status = f"implausible:{why}"
    return {"method": result.method, "edv_ml": result.edv_ml, "esv_ml": result.esv_ml, "ef": result.ef, "status": status}


SEED_GRID = 256  # the seed notebook's square input


def seed_scoring_ef(frames: dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]]) -> float:
    """EF the seed notebook's way, for comparison only: biplane area-length in pixels on LV masks
    squashed to 256 x 256 (aspect and spacing ignored); NaN if a mask cannot be measured."""
    geometries = {}
    for key, (label, _) in frames.items():
        mask = geometry.labels_to_grid(label, geometry.squashed(label.shape, SEED_GRID)).numpy() == camus.LABELS["lv_cavity"]
        try:
            geometries[key] = simpson.lv_geometry(mask, (1.0, 1.0), pixel_mm=1.0)  # its own pixels
        except simpson.LVGeometryError:
            return math.nan
    return simpson.volumes(geometries, "area_length").ef


def label_maps(frames: dict[tuple[str, str], camus.Frame]) -> dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]]:
    """The (label map, spacing) pairs that ``patient_ef`` takes, from frames with labels."""
    return {key: (frame.label, frame.spacing_mm) for key, frame in frames.items()}


def load_predictions(path) -> dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]]:
    """Predicted label maps with their spacing, keyed (view, phase), as ``patient_ef`` takes them."""
    return label_maps(framefile.load(path))


def ef_table(patients: list[str], predictions: Path, cohort: pd.DataFrame, method: str,
             ingested: Path = INGESTED) -> pd.DataFrame:
    """One row per patient: EF from its predicted masks (``predictions/<patient>.npz``), the same
    masks scored the seed's way (``ef_seed_scoring``), EF from its expert masks (``ef_expert``, the
    ceiling), and the reference ``ef_ref`` and image quality. A patient the inference stage could not
    segment (no file) has status 'no_prediction'."""
    cohort = cohort.set_index("patient")
    rows = []
    for patient in patients:
        path = predictions / f"{patient}.npz"
        predicted = load_predictions(path) if path.is_file() else None
        pred = patient_ef(predicted, method) if predicted else {
            "method": method, "edv_ml": math.nan, "esv_ml": math.nan, "ef": math.nan, "status": "no_prediction"}
        ceiling = patient_ef(label_maps(framefile.load(patient_path(patient, ingested))), method)
        rows.append({"patient": patient, **pred, "ef_seed_scoring": seed_scoring_ef(predicted) if predicted else math.nan,
                     "edv_expert_ml": ceiling["edv_ml"], "esv_expert_ml": ceiling["esv_ml"],
                     "ef_expert": ceiling["ef"], "status_expert": ceiling["status"],
                     "ef_ref": cohort.loc[patient, "ef_ref"], "quality": cohort.loc[patient, "quality_2ch"]})
    return pd.DataFrame(rows)
