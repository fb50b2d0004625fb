"""What `echoef predict` is given, as studies: for each, the file of each view's phase (ED, ES) and/or
the cine loop of each view, from CAMUS folders, files named on the command line, or a folder of
DICOM files grouped by patient and study."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StudyError, UsageError
from ..io import camus
from ..io.imagefile import is_dicom
from ..io.untrusted import read_bounded
from ..names import safe_name

PHASE_IN_NAME = {"ED": re.compile(r"(^|[^a-z])(ed|end[ _-]?diastol\w*)([^a-z]|$)", re.I),
                 "ES": re.compile(r"(^|[^a-z])(es|end[ _-]?systol\w*)([^a-z]|$)", re.I)}


@dataclass
class StudyFiles:
    """One study's files: ``phases[(view, phase)]`` single frames, ``loops[view]`` cine loops, and
    notes on files that were found but could not be placed; ``problem`` when the whole study is unusable.
    ``name`` is made a safe file name (``names.safe_name``) whatever it was given as: it names the
    study's output folder. ``reference`` holds what the input states of the study (``ef_ref``, and a
    loop's traced ``ed_ref_frame`` and ``es_ref_frame``), for the agreement report, never for measuring;
    ``traced_frames[view]`` the (ED, ES) frames traced in that view's loop."""

    name: str
    phases: dict[tuple[str, str], Path] = field(default_factory=dict)
    loops: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problem: StudyError | None = None
    reference: dict = field(default_factory=dict)
    traced_frames: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self):
        self.name = safe_name(self.name)


def from_folder(folder: Path) -> StudyFiles:
    """A CAMUS-layout patient folder (its ED and ES image files)."""
    study = StudyFiles(folder.name)
    try:
        if not folder.is_dir():
            raise StudyError("missing_study", f"{folder} is not a folder")
        study.phases = camus.image_paths(folder)
        if not study.phases:
            raise StudyError("missing_frame", f"{folder}: no patientXXXX_<view>_<phase> image file")
        study.reference = {"ef_ref": camus.reference_ef(*camus.read_info(folder))[0]}
    except StudyError as error:
        study.problem = error
    return study


def from_echonet(root: Path, split: str | None) -> list[StudyFiles]:
    """The videos of an EchoNet-Dynamic folder (``io.echonet``) as apical 4-chamber loop studies,
    each with its reference EF and, where traced, the frames of its traced beat."""
    from ..io import echonet

    studies = []
    for video in echonet.read_cohort(root, split):
        study = StudyFiles(video.name, loops={"4CH": video.path} if video.path else {}, problem=video.problem)
        phases = video.traced_phases()
        study.reference = {"ef_ref": video.ef_ref,
                           "ed_ref_frame": phases[0].frame if phases else math.nan,
                           "es_ref_frame": phases[1].frame if phases else math.nan}
        if phases:
            study.traced_frames = {"4CH": (phases[0].frame, phases[1].frame)}
        studies.append(study)
    return studies


def read_views(path: Path | None) -> dict[str, str]:
    """A ``--views`` table (CSV with columns file, view): file name -> 2CH or 4CH."""
    if path is None:
        return {}
    try:
        rows = list(csv.DictReader(io.StringIO(read_bounded(path).decode("utf-8-sig"), newline="")))
        views = {Path(row["file"]).name: row["view"].strip().upper() for row in rows}
    except (OSError, ValueError, KeyError, csv.Error, AttributeError) as error:
        raise UsageError(f"--views {path}: need a CSV with columns file and view ({error})") from error
    unknown = sorted(v for v in views.values() if v not in camus.VIEWS)
    if unknown:
        raise UsageError(f"--views {path}: views must be 2CH or 4CH, not {', '.join(unknown)}")
    return views


def from_dicom_folder(folder: Path, views: dict[str, str]) -> list[StudyFiles]:
    """The DICOM files under ``folder``, one study per patient and study UID (named
    ``<patient id>_<end of study UID>``). A file's view comes from ``views`` or its name; a
    multi-frame file is that view's loop, a single frame is a phase named in its file name (ED, ES)."""
    from ..io import dicom  # pydicom only where DICOM is read

    studies: dict[tuple[str, str], StudyFiles] = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_dicom(p)):
        try:
            patient, uid, frames = dicom.header_facts(path)
        except Exception as error:  # noqa: BLE001 - an unreadable header is one file's problem, reported with it
            key = ("unreadable", path.name)
            studies.setdefault(key, StudyFiles(path.stem, problem=StudyError("unreadable_file", f"{path.name}: {error}")))
            continue
        study = studies.setdefault((patient, uid), StudyFiles(f"{patient}_{uid[-8:]}"))
        view = views.get(path.name) or dicom.view_from_name(path)
        if view is None:
            study.notes.append(f"{path.name}: view unknown (put 2CH or 4CH in its name, or list it in --views)")
            continue
        if frames > 1:
            if view in study.loops:
                study.notes.append(f"{path.name}: a second {view} loop, left out ({study.loops[view].name} is used)")
            else:
                study.loops[view] = path
            continue
        phase = [p for p, pattern in PHASE_IN_NAME.items() if pattern.search(path.stem)]
        if len(phase) != 1:
            study.notes.append(f"{path.name}: a single frame of {view} with no ED or ES in its name")
            continue
        if (view, phase[0]) in study.phases:
            study.notes.append(f"{path.name}: a second {view} {phase[0]} frame, left out "
                               f"({study.phases[(view, phase[0])].name} is used)")
            continue
        study.phases[(view, phase[0])] = path
    named: dict[str, int] = {}
    for study in studies.values():
        named[study.name.casefold()] = named.get(study.name.casefold(), 0) + 1
    for (patient, uid), study in studies.items():
        if named[study.name.casefold()] > 1 and patient != "unreadable":  # UIDs that end alike: the whole UID tells them apart
            study.name = safe_name(f"{patient}_{uid}")
    return list(studies.values())
