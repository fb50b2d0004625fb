"""EF of one patient from four label maps, with a status instead of an exception."""

from __future__ import annotations

import math

import numpy as np

from . import camus, simpson

COLUMNS = ["patient", "method", "edv_ml", "esv_ml", "ef", "status"]


def patient_ef(frames: dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]], method: str) -> dict:
    """{method, edv_ml, esv_ml, ef, status} from label maps keyed (view, phase) with their spacing.

    ``status`` is 'ok', 'ok_touches_border:<frames>' (measured, but the cavity reaches the image
    edge), or '<problem>:<frame>' with NaN volumes when a mask cannot be measured.
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
    if not result.edv_ml > 0:
        status = "zero_volume"
    return {"method": result.method, "edv_ml": result.edv_ml, "esv_ml": result.esv_ml, "ef": result.ef, "status": status}


def label_maps(frames: dict[tuple[str, str], camus.Frame]) -> dict[tuple[str, str], tuple[np.ndarray, tuple[float, float]]]:
    """The (label map, spacing) pairs that ``patient_ef`` takes, from frames with labels."""
    return {key: (frame.label, frame.spacing_mm) for key, frame in frames.items()}


def is_measured(status) -> bool:
    """Whether a row's status carries an EF (ok, possibly with a warning)."""
    return str(status).startswith("ok")
