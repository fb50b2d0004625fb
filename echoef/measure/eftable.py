"""The pipeline's EF tables: each patient's EF from its predicted masks and from its expert masks
(the ceiling), and the reference notebook's scoring of the same masks for comparison."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import runfiles
from ..io import framefile
from ..io.camus import Label
from ..io.framefile import patient_path
from . import simpson
from .ef import label_maps, patient_ef

NOTEBOOK_GRID = 256  # the reference notebook's square input


def notebook_area_length_ef(frames: dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]]) -> float:
    """EF the reference notebook's way, for comparison only: biplane area-length in pixels on LV masks
    squashed to 256 x 256 by nearest neighbour (aspect and spacing ignored); NaN if a mask cannot be
    measured."""
    geometries = {}
    for key, (label, _) in frames.items():
        mask = simpson.nearest_resample(label, (NOTEBOOK_GRID, NOTEBOOK_GRID)) == Label.LV
        try:
            geometries[key] = simpson.lv_geometry(mask, (1.0, 1.0), pixel_mm=1.0)  # its own pixels
        except simpson.LVGeometryError:
            return math.nan
    return simpson.volumes(geometries, "area_length").ef


def load_predictions(path) -> dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]]:
    """Predicted label maps with their spacing, keyed (view, phase), as ``patient_ef`` takes them."""
    return label_maps(framefile.load(path))


def ef_table(patients: list[str], predictions: Path, cohort: pd.DataFrame, method: str,
             ingested: Path) -> pd.DataFrame:
    """One row per patient: EF from its predicted masks (``predictions/<patient>.npz``), the same
    masks scored the reference notebook's way (``ef_seed_scoring``), EF from its expert masks (``ef_expert``, the
    ceiling), and the reference ``ef_ref`` and image quality. A patient the inference stage could not
    segment (no file) has status 'no_prediction'."""
    cohort = cohort.set_index("patient")
    rows = []
    for patient in patients:
        path = patient_path(patient, predictions)
        predicted = load_predictions(path) if path.is_file() else None
        pred = patient_ef(predicted, method) if predicted else {
            "method": method, "edv_ml": math.nan, "esv_ml": math.nan, "ef": math.nan, "status": "no_prediction"}
        ceiling = patient_ef(label_maps(framefile.load(patient_path(patient, ingested))), method)
        rows.append({"patient": patient, **pred, "ef_seed_scoring": notebook_area_length_ef(predicted) if predicted else math.nan,
                     "edv_expert_ml": ceiling["edv_ml"], "esv_expert_ml": ceiling["esv_ml"],
                     "ef_expert": ceiling["ef"], "status_expert": ceiling["status"],
                     "ef_ref": cohort.loc[patient, "ef_ref"], "quality": cohort.loc[patient, "quality_2ch"]})
    return pd.DataFrame(rows)


def out_of_fold_table(fold_dirs: list[Path], expected: list[str]) -> pd.DataFrame:
    """Every fold's EF table (``<fold dir>/ef.csv``) with its fold number and, where the fold's
    inference left them (``runfiles.FOLD_REVIEW_SIGNALS``), each patient's review signals (novelty
    features, the members' EF spread): each train+val patient's out-of-fold EF, and what review would
    have seen of it. RuntimeError unless they cover the ``expected`` patients exactly once."""
    tables = []
    for fold, folder in enumerate(fold_dirs):
        table = pd.read_csv(Path(folder) / "ef.csv").assign(fold=fold)
        if (signals := Path(folder) / runfiles.FOLD_REVIEW_SIGNALS).is_file():
            table = table.merge(pd.read_csv(signals).drop(columns=["set"], errors="ignore"), on="patient", how="left",
                                validate="one_to_one")
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    if sorted(table["patient"]) != sorted(expected):
        raise RuntimeError("out-of-fold predictions do not cover every train+val patient exactly once")
    return table

