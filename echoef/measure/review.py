"""Why a measured EF deserves a second look: the reasons for each study's ``review`` flag."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..io import camus
from ..io.camus import Label
from .ef import is_measured, patient_ef

MEMBER_SPREAD_POINTS = 5.0  # ensemble members whose EFs differ by more read the study differently
# A prediction interval wider than ± this says little about the class of an EF. The interval is the
# calibrator's, one width for every study a model measures, so it is said once per run (``wide_interval``),
# not as a study's review reason: a reason raised on every study, or on none, picks out no study to review.
WIDE_INTERVAL_POINTS = 10.0
BEAT_SPREAD_POINTS = 5.0  # one loop's beats whose EFs spread (SD) more: an irregular rhythm or an unsteady reading
# Two heart cycles at 40 a minute: a loop this long holds complete beats that `cine.beats` finds in nearly every
# simulated beating curve (benchmarks/cine_beats.py), and none in most still pictures with noise.
BEATLESS_LOOP_MS = 3000.0
# A loop whose picture changes by less (``cine.picture_change_percent``) is a still picture: between the ED
# and ES frames of every CAMUS pair some block changes by 25% or more (the phantom's beating loops: 23%),
# so a beating loop changes by that much at least; one frame repeated changes by its pixel noise only
# (8% at most with noise of SD 8 grey levels; `python benchmarks/still_loops.py`).
STILL_LOOP_PERCENT = 10.0


def anatomy_problems(raw: np.ndarray) -> list[str]:
    """What is wrong with one frame's raw label map (before clean-up): several LV pieces, holes in
    the LV, an atrium not below the LV (the apex is at the top of an apical view)."""
    problems = []
    lv = raw == Label.LV
    if ndimage.label(lv)[1] > 1:
        problems.append("several_lv_pieces")
    if (ndimage.binary_fill_holes(lv) & ~lv).any():
        problems.append("lv_holes")
    atrium = raw == Label.ATRIUM
    if lv.any() and atrium.any() and ndimage.center_of_mass(atrium)[0] < ndimage.center_of_mass(lv)[0]:
        problems.append("atrium_above_lv")
    return problems


def wide_interval(calibrator: dict) -> str | None:
    """What a run should say of its calibrator's prediction interval when it is wider than
    ± WIDE_INTERVAL_POINTS (the same for every calibrated EF), else None."""
    interval = calibrator.get("interval", {})
    half_width = interval.get("half_width")
    if half_width is None or not half_width > WIDE_INTERVAL_POINTS:
        return None
    return (f"every calibrated EF's {100 * interval['level']:.0f}% interval is ± {half_width:.1f} points, "
            f"too wide to tell EF classes apart")


def reasons(row: dict, frames: dict, raw: dict, members: list[dict]) -> list[str]:
    """The review reasons of one predicted study (empty: nothing to look at twice)."""
    found = []
    missing = [v for v in camus.VIEWS if not all((v, p) in frames for p in camus.PHASES)]
    if missing:
        found.append("view_missing:" + "+".join(missing))
    if str(row["status"]).startswith("ok_touches_border"):
        found.append("touches_border")
    for view in camus.VIEWS:
        # A heart empties in systole: a view whose ES cavity is not smaller than its ED one (single-plane EF of
        # 0 or less) was misread, or its phases were swapped. Expert masks never give it (lowest single-plane
        # EF of 449 CAMUS patients: 3; results/simpson-expert-masks), and it can hide inside a plausible biplane EF.
        view_ef = row.get(f"ef_{view.lower()}")
        if isinstance(view_ef, (int, float)) and math.isfinite(view_ef) and view_ef <= 0:
            found.append(f"es_not_smaller:{view}")
    for key, label in raw.items():
        found += [f"{problem}:{key[0]}_{key[1]}" for problem in anatomy_problems(label)]
    if members and is_measured(row["status"]):
        views = [k for k in frames if k[0] not in missing]
        spread = member_ef_spread(members, {k: frames[k].spacing_mm for k in views}, row["method"])
        if not spread <= MEMBER_SPREAD_POINTS:
            found.append(f"members_disagree:{spread:.0f}_points")
    return found


def member_ef_spread(members: list[dict], spacings: dict, method: str) -> float:
    """How far apart (EF points, largest minus smallest) the ensemble members' EFs of one study are,
    each measured by ``method`` on the member's label maps of the frames ``spacings`` keys (view,
    phase) to their spacing; NaN when no member's EF can be measured (one measured member gives 0).
    The same number for ``predict``'s review and the pipeline's out-of-fold rows."""
    efs = [patient_ef({key: (member[key], spacing) for key, spacing in spacings.items()}, method)["ef"] for member in members]
    return float(np.nanmax(efs) - np.nanmin(efs)) if not np.all(np.isnan(efs)) else float("nan")


def loop_reasons(outliers: dict[str, list[int]], beat_efs: dict[str, list[float]],
                 beatless_ms: dict[str, float | None] | None = None,
                 picture_change: dict[str, float] | None = None) -> list[str]:
    """The review reasons of a study's cine loops: frames whose LV area stands apart from their
    neighbours' (``cine.outlier_frames``, per view), beats of one view whose single-plane EFs spread
    by an SD of more than ``BEAT_SPREAD_POINTS``, loops searched for beats in which none was found
    (``beatless_ms``: each such view's duration from its stated frame time, None where the file states
    none) although they last ``BEATLESS_LOOP_MS`` or more: their ED and ES were chosen without a heart
    cycle to choose them in (a still picture, or a curve too irregular to read), and loops whose
    picture changes by less than ``STILL_LOOP_PERCENT`` (``picture_change``, per view, of any length
    and frame time): one picture repeated, whose ED and ES are noise."""
    found = [f"area_outliers:{view}_{len(frames)}_frames" for view, frames in outliers.items() if frames]
    for view, efs in beat_efs.items():
        values = np.asarray([v for v in efs if np.isfinite(v)], dtype=float)
        if len(values) > 1 and values.std(ddof=1) > BEAT_SPREAD_POINTS:
            found.append(f"beats_disagree:{view}_{values.std(ddof=1):.0f}_points")
    for view, duration_ms in (beatless_ms or {}).items():
        if duration_ms is not None and math.isfinite(duration_ms) and duration_ms >= BEATLESS_LOOP_MS:
            found.append(f"no_beat:{view}_{duration_ms / 1000:.1f}_s")
    for view, change in (picture_change or {}).items():
        if not change >= STILL_LOOP_PERCENT:  # NaN too: a picture whose change cannot be told
            found.append(f"still_loop:{view}_{change:.1f}_percent")
    return found
