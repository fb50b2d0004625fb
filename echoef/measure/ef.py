"""EF of one patient from four label maps, with a status instead of an exception."""

from __future__ import annotations

import math

import numpy as np

from ..domain import VIEW_COLUMNS
from ..io import camus
from ..io.camus import Label
from . import simpson

COLUMNS = ["patient", "method", "edv_ml", "esv_ml", "ef", "status", *VIEW_COLUMNS]
EF_BINS = (0, 40, 50, 101)  # reduced, mildly reduced, preserved (ESC classes)
EF_CLASS_NAMES = ("<40", "40-49", ">=50")  # of EF_BINS, as tables and figures name them
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


def needed_frames(method: str) -> list[tuple[str, str]]:
    """The (view, phase) frames ``method`` measures."""
    views = {"simpson_single_plane_2ch": ("2CH",), "simpson_single_plane_4ch": ("4CH",)}.get(method, camus.VIEWS)
    return [(view, phase) for view in views for phase in camus.PHASES]


def geometries(frames: dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]],
               keys: list[tuple[str, str]]) -> tuple[dict[tuple[str, str], simpson.LVGeometry], str | None]:
    """The LV geometry of each frame of ``keys`` (label map, spacing), or the status of the first
    that cannot be measured ('<problem>:<view>_<phase>')."""
    found = {}
    for view, phase in keys:
        label, spacing_mm = frames[(view, phase)]
        try:
            found[(view, phase)] = simpson.lv_geometry(label == Label.LV, spacing_mm)
        except simpson.LVGeometryError as error:
            return found, f"{error.status}:{view}_{phase}"
    return found, None


def view_measures(found: dict[tuple[str, str], simpson.LVGeometry]) -> dict:
    """``VIEW_COLUMNS`` from measured geometries: a view's single-plane EF when both its phases are
    measured, a frame's long axis (mm) when it is; NaN otherwise."""
    out = {}
    for view in camus.VIEWS:
        pair = [found.get((view, phase)) for phase in camus.PHASES]
        out[f"ef_{view.lower()}"] = math.nan if None in pair else simpson.simpson_single_plane(*pair, view).ef
        for phase, geometry in zip(camus.PHASES, pair):
            out[f"long_axis_{phase.lower()}_{view.lower()}_mm"] = math.nan if geometry is None else geometry.long_axis_mm
    return out


def ef_of(found: dict[tuple[str, str], simpson.LVGeometry], method: str) -> dict:
    """{method, edv_ml, esv_ml, ef, status, VIEW_COLUMNS...} from measured geometries (see ``patient_ef``)."""
    result = simpson.volumes(found, method)
    touching = [f"{view}_{phase}" for (view, phase), g in found.items() if g.touches_border]
    status = "ok" if not touching else "ok_touches_border:" + "+".join(touching)
    why = implausibility(result.edv_ml, result.esv_ml)
    if why:
        status = f"implausible:{why}"
    return {"method": result.method, "edv_ml": result.edv_ml, "esv_ml": result.esv_ml, "ef": result.ef, "status": status,
            **view_measures(found)}


def patient_ef(frames: dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]], method: str) -> dict:
    """{method, edv_ml, esv_ml, ef, status, VIEW_COLUMNS...} from label maps keyed (view, phase) with
    their spacing.

    ``status`` is 'ok', 'ok_touches_border:<frames>' (measured, but the cavity reaches the image
    edge), '<problem>:<frame>' with NaN volumes when a mask cannot be measured, or
    'implausible:<why>' with the volumes kept for inspection when they cannot be a ventricle's
    (``implausibility``); only 'ok' statuses count as measured.
    """
    found, problem = geometries(frames, needed_frames(method))
    if problem:
        return {"method": method, "edv_ml": math.nan, "esv_ml": math.nan, "ef": math.nan, "status": problem,
                **view_measures(found)}
    return ef_of(found, method)


def is_measured(status) -> bool:
    """Whether a row's status carries an EF: 'ok', or 'ok_<warning>' such as ok_single_plane."""
    return str(status).startswith("ok")


def label_maps(frames: dict[tuple[str, str], camus.Frame]) -> dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]]:
    """The (label map, spacing) pairs that ``patient_ef`` takes, from frames with labels."""
    return {key: (frame.label, frame.spacing_mm) for key, frame in frames.items()}


def ef_class(ef: np.ndarray) -> np.ndarray:
    """0 reduced (<40%), 1 mildly reduced (40-49%), 2 preserved (>=50%)."""
    return np.digitize(ef, EF_BINS[1:-1])
