"""Apply the trained pipeline (segmenter + calibrator) to new studies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import ForeignFolderError, StudyError
from ..io import camus, imagefile
from ..io.atomic import claim_folder
from ..measure import ef, review
from ..measure.ef import is_measured
from ..model import novelty, segmentation
from ..names import study_folder
from ..params import Infer
from ..reporting import figures, report
from ..stats import calibration
from . import cine
from .studies import StudyFiles


def ef_method(views: set[str]) -> str | None:
    """Simpson biplane with both views, single-plane discs with one, None without a complete view."""
    if views == set(camus.VIEWS):
        return "simpson_biplane"
    if len(views) == 1:
        return f"simpson_single_plane_{next(iter(views)).lower()}"
    return None


def loop_phases(view: str, path: Path, models: list[torch.nn.Module], size: int, config: Infer,
                spacing_mm: tuple[float, float] | None, given: tuple[int, int] | None) -> tuple[dict, dict]:
    """A view's ED and ES frames from its cine loop: the frame indices ``given``, else chosen by LV
    area (``cine``). Returns ({(view, phase): Frame}, {areas, ed, es, frames})."""
    loop = imagefile.read_loop(path, spacing_mm)
    count = len(loop.frames)
    if count < cine.MIN_FRAMES:
        raise StudyError("short_loop", f"{view}: {path.name} holds {count} frame(s); give its ED and ES frames as files")
    try:
        areas = cine.lv_areas_mm2(models, loop.frames, loop.spacing_mm, size, config.batch_size, config.precision)
    except ValueError as error:  # an ensemble of paired members only: the frames must be given
        if given is None:
            raise StudyError("needs_phase_frames", f"{view}: this model has no one-frame member to find ED and ES "
                                                   "with; give them with --phase-frames") from error
        areas = np.full(count, np.nan)
    ed, es = given if given is not None else cine.end_diastole_systole(areas)
    if not (0 <= ed < count and 0 <= es < count and ed != es):
        raise StudyError("bad_phase_frames", f"{view}: ED {ed} and ES {es} must be two frames of 0-{count - 1}")
    def frame(index):
        return camus.Frame(loop.frames[index].astype(np.float32), None, loop.spacing_mm, loop.header, loop.spacing_stated)

    frames = {(view, "ED"): frame(ed), (view, "ES"): frame(es)}
    # Every complete beat, for the EF of each and their mean (when the frames are not given by hand).
    found = [] if given is not None else cine.beats(areas)
    return frames, {"areas": areas, "ed": ed, "es": es, "frames": count, "frame_ms": loop.frame_ms,
                    "picture_change_percent": cine.picture_change_percent(loop.frames),
                    "beats_searched": given is None, "beats": found, "beat_frames": [(frame(b_ed), frame(b_es)) for b_ed, b_es in found]}


def beat_efs(view: str, curve: dict, models: list[torch.nn.Module], size: int, config: Infer) -> list[float]:
    """Single-plane EF of each complete beat of a view's loop (``curve`` of ``loop_phases``), each
    beat's ED and ES segmented by the whole ensemble as the study's own frames are; NaN for a beat
    whose masks give no EF."""
    efs = []
    for ed_frame, es_frame in curve["beat_frames"]:
        pair = {(view, "ED"): ed_frame, (view, "ES"): es_frame}
        labels = segmentation.predict_frames(models, pair, size, config.batch_size, config.tta, config.precision)
        row = ef.patient_ef({key: (labels[key], frame.spacing_mm) for key, frame in pair.items()},
                            f"simpson_single_plane_{view.lower()}")
        efs.append(float(row["ef"]) if is_measured(row["status"]) else math.nan)
    return efs


def beat_summary(per_view: dict[str, tuple[list[tuple[int, int]], list[float]]]) -> tuple[str, float, float, int]:
    """The ``beats`` column ('4CH 3 beats: ED 2 ES 10 EF 55.1; ...') and, for one loop view, the
    mean and SD of its beats' EFs and their number (NaN, NaN, 0 otherwise or without a beat)."""
    text = "; ".join(f"{view} {len(found)} beat(s): " + ", ".join(f"ED {ed} ES {es} EF {value:.1f}" for (ed, es), value in zip(found, efs))
                     for view, (found, efs) in per_view.items() if found)
    if len(per_view) != 1:
        return text, math.nan, math.nan, 0
    values = np.array([v for v in next(iter(per_view.values()))[1] if np.isfinite(v)])
    return (text, float(values.mean()) if len(values) else math.nan, float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            int(len(values)))


def read_frames(study: StudyFiles, models: list[torch.nn.Module], size: int, config: Infer,
                spacing_mm: tuple[float, float] | None, phase_frames: dict[str, tuple[int, int]]
                ) -> tuple[dict[tuple[str, str], camus.Frame], dict[tuple[str, str], Path], dict[str, dict], list[str]]:
    """The readable frames of a study (its single frames, and ED and ES of its loops), the file each
    came from, each loop's area curve, and a note for each file that could not be used; StudyError
    (the first one's) when nothing can be read."""
    frames, sources, curves, notes, errors = {}, {}, {}, list(study.notes), []
    for (view, phase), path in study.phases.items():
        try:
            frame = imagefile.read_single(path, spacing_mm)
            frames[(view, phase)] = camus.Frame(frame.frames[0].astype(np.float32), None, frame.spacing_mm, frame.header,
                                                frame.spacing_stated)
            sources[(view, phase)] = path
        except StudyError as error:
            errors.append(error)
            notes.append(f"{view}_{phase} {error}")
    for view, path in study.loops.items():
        try:
            chosen, curves[view] = loop_phases(view, path, models, size, config, spacing_mm, phase_frames.get(view))
            frames.update(chosen)
            sources.update(dict.fromkeys(chosen, path))
        except StudyError as error:
            errors.append(error)
            notes.append(f"{view} loop {error}")
    if not frames:
        raise errors[0] if errors else StudyError("missing_frame", "; ".join(notes) or "no frame given")
    return frames, sources, curves, notes


def as_ef_only(row: dict) -> dict:
    """A row measured on a nominal pixel size: its EF kept (the discs' volume ratio does not depend on
    the scale of the pixels), its volumes emptied, a measured status ``ok_ef_only`` (the method
    column says single plane or biplane). Plausibility checks of volumes do not apply: only EF."""
    status = row["status"]
    if status.startswith("implausible:volume"):
        status = "ok" if row["ef"] > 0 else status
    if is_measured(status):
        rest = status.removeprefix("ok_single_plane").removeprefix("ok")
        status = "ok_ef_only" + rest
    return {**row, "edv_ml": math.nan, "esv_ml": math.nan, "status": status}


def frame_errors(curves: dict[str, dict], reference: dict) -> dict:
    """How the loop's ED and ES picks compare with the frames traced by the site (``reference``'s
    ``ed_ref_frame``, ``es_ref_frame``, of a one-loop study): the measured frames' errors (picked
    minus traced), and ``beat_error_frames``, the larger of the distances from the traced ED to the
    nearest ED found in the loop and from the traced ES to the nearest ES (of every complete beat and
    the measured pair): the site may have traced another beat than the one measured, or an ES before
    its ED. NaN without tracing or loop."""
    ed_ref, es_ref = reference.get("ed_ref_frame", math.nan), reference.get("es_ref_frame", math.nan)
    found = {"ed_ref_frame": ed_ref, "es_ref_frame": es_ref, "ed_error_frames": math.nan, "es_error_frames": math.nan,
             "beat_error_frames": math.nan}
    if len(curves) != 1 or not (math.isfinite(ed_ref) and math.isfinite(es_ref)):
        return found
    curve = next(iter(curves.values()))
    found["ed_error_frames"], found["es_error_frames"] = curve["ed"] - ed_ref, curve["es"] - es_ref
    pairs = [(curve["ed"], curve["es"]), *curve["beats"]]
    found["beat_error_frames"] = max(min(abs(ed - ed_ref) for ed, _ in pairs), min(abs(es - es_ref) for _, es in pairs))
    return found


def calibrated_ef(row: dict, calibrator: dict) -> float:
    """The calibrated EF of a measured row by the method the calibrator was fitted for, else NaN."""
    if not is_measured(row["status"]) or row["method"] != calibrator.get("ef_method", "simpson_biplane"):
        return math.nan
    return float(calibration.apply(calibrator, np.array([row["ef"]]), {key: [value] for key, value in row.items()})[0])


def predict_study(study: StudyFiles, models: list[torch.nn.Module], size: int, calibrator: dict, infer_config: Infer,
                  out_dir: Path, spacing_mm: tuple[float, float] | None = None,
                  phase_frames: dict[str, tuple[int, int]] | None = None, novelty_reference: dict | None = None) -> dict:
    """Segment the ED and ES frames of one study (from a view's loop: the frames chosen by LV area,
    or ``phase_frames[view]``), write its label maps beside an overlay PNG (and the area curves of
    its loops), return its EF row. With a ``novelty_reference`` (``model.novelty``) the row has its
    novelty score, and ``unlike_training`` among its review reasons when the score passes the threshold.

    Label maps are written as ``out_dir/<patient>/<patient>_<view>_<phase>_gt<ext>`` with the
    geometry of their input image (NIfTI for inputs without a header), so ``echoef ef ... --labels
    out_dir`` reads them back. A file that cannot be used is left out and named in ``detail``; EF
    then comes from the complete views that remain.
    """
    if study.problem:
        raise study.problem
    patient = study.name
    folder = study_folder(out_dir, patient)
    frames, sources, curves, notes = read_frames(study, models, size, infer_config, spacing_mm, phase_frames or {})
    labels, members, raw, uncertainty = segmentation.predict_frames_with_members(models, frames, size, infer_config.batch_size,
                                                                                 infer_config.tta, infer_config.precision)
    features = novelty.study_features(labels, {k: f.spacing_mm for k, f in frames.items()}, members, uncertainty)
    novelty_score, unlike = novelty.flag(novelty_reference, features)
    try:
        claim_folder(folder, "the study's folder")
    except ForeignFolderError as error:
        raise StudyError("foreign_output", str(error)) from error
    for (view, phase), frame in frames.items():
        stem = f"{patient}_{view}_{phase}_gt"
        if frame.spacing_stated:
            imagefile.write_label(labels[(view, phase)], frame.header, imagefile.label_path_for(sources[(view, phase)], folder, stem))
        else:  # a picture without a pixel size: its label map as a picture too, never with an invented one
            imagefile.write_label_picture(labels[(view, phase)], folder / f"{stem}.png")
    if curves:
        figures.area_curves(curves, folder / f"{patient}_lv_area.png")
    maps = {k: (labels[k], f.spacing_mm) for k, f in frames.items()}
    found, problem = ef.geometries(maps, [k for k in camus.FRAME_KEYS if k in frames])
    method = ef_method({v for v in camus.VIEWS if all((v, p) in frames for p in camus.PHASES)})
    if method is None:
        row = {"method": "", "edv_ml": math.nan, "esv_ml": math.nan, "ef": math.nan, "status": "no_complete_view"}
    else:
        row = ef.patient_ef(maps, method) if problem else ef.ef_of({k: found[k] for k in ef.needed_frames(method)}, method)
        if method != "simpson_biplane" and is_measured(row["status"]):
            row["status"] = row["status"].replace("ok", "ok_single_plane", 1)
    ef_only = not all(frames[key].spacing_stated for key in ef.needed_frames(method)) if method else False
    if ef_only:  # the volume ratio holds on a nominal pixel size; the volumes do not
        row = as_ef_only(row)
    row["ef_calibrated"] = calibrated_ef(row, calibrator)
    row["ef_low"], row["ef_high"] = (float(v[0]) for v in calibration.interval(calibrator, [row["ef_calibrated"]]))
    per_view = {view: (c["beats"], beat_efs(view, c, models, size, infer_config)) for view, c in curves.items()}
    loops = review.loop_reasons({view: cine.outlier_frames(c["areas"]) for view, c in curves.items()},
                                {view: efs for view, (_, efs) in per_view.items()},
                                {view: c["frames"] * c["frame_ms"] if c["frame_ms"] else None
                                 for view, c in curves.items() if c["beats_searched"] and not c["beats"]},
                                {view: c["picture_change_percent"] for view, c in curves.items()})
    row["review"] = "; ".join((["no_pixel_size"] if ef_only else []) + ([unlike] if unlike else [])
                              + review.reasons(row, frames, raw, members) + loops)
    row["novelty_score"] = novelty_score
    row["frames"] = "+".join(f"{v}_{p}" for v, p in frames)
    row["cine"] = "; ".join(f"{view} ED {c['ed']} ES {c['es']} of {c['frames']}" for view, c in curves.items())
    row["beats"], row["ef_beat_mean"], row["ef_beat_sd"], row["n_beats"] = beat_summary(per_view)
    row["ef_ref"] = study.reference.get("ef_ref", math.nan)
    row.update(frame_errors(curves, study.reference))
    row["detail"] = "; ".join(notes)
    row = {"patient": patient, **row}
    figures.simpson_construction({k: (f.image, f.spacing_mm, found.get(k)) for k, f in frames.items()}, report.study_title(row),
                                 folder / f"{patient}_overlay.png")
    report.write_study_page(row, folder)
    return row
