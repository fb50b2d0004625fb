"""Ingest: every patient folder of a CAMUS root into the pipeline's per-patient frame files, with a
cohort table and an exclusion table that give every folder found a row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import IngestError, StudyError
from . import camus, framefile
from .atomic import write_csv
from .camus import Label

COHORT, EXCLUSIONS = "cohort.csv", "exclusions.csv"  # beside the frame files
WRITTEN = (framefile.FRAME_FILES, COHORT, EXCLUSIONS)  # all an ingest folder holds


def _check_study(study: camus.Study) -> None:
    ef = study.ef_ref
    if not np.isfinite(ef) or not 0 <= ef <= 100:
        raise StudyError("bad_reference_ef", f"reference EF {ef} missing or outside 0-100")
    for (view, phase), frame in study.frames.items():
        if not (frame.label == Label.LV).any():
            raise StudyError("empty_expert_lv", f"{view} {phase}: the expert mask has no LV cavity")


def ingest(root: str | Path, out_dir: str | Path, strict: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every patient folder under ``root``; write one .npz per usable patient.

    Returns (cohort, exclusions): every folder found is in exactly one of them, an exclusion with
    its reason. With ``strict`` the first exclusion raises IngestError.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise IngestError(f"data.root = {str(root)!r} is not a folder; point it at a CAMUS download "
                          "(the folder holding database_nifti/, or the patient folders of the 2019 release)")
    folders = camus.find_patients(root)
    if not folders:
        raise IngestError(f"data.root = {str(root)!r} holds no patientXXXX folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, exclusions = [], []
    repeated = camus.duplicates(folders)
    for folder in tqdm(folders, desc="ingest", mininterval=5):
        try:
            if folder in repeated:
                raise StudyError("duplicate_patient", f"same patient number as {repeated[folder]}")
            study = camus.read_study(folder)
            _check_study(study)
        except StudyError as error:
            if strict:
                raise IngestError(f"{folder.name} excluded ({error}); ingest.strict is true") from error
            exclusions.append({"patient": folder.name, "reason": error.reason, "detail": error.detail})
            continue
        framefile.save(framefile.patient_path(study.patient, out_dir), study.frames)
        rows.append(study.cohort_row())
    if not rows:
        raise IngestError(f"no usable patient under {root} ({len(exclusions)} excluded; see the exclusions table)")
    cohort = pd.DataFrame(rows)
    exclusion_table = pd.DataFrame(exclusions, columns=["patient", "reason", "detail"])
    write_csv(out_dir / COHORT, cohort)
    write_csv(out_dir / EXCLUSIONS, exclusion_table)
    return cohort, exclusion_table


def counts(cohort: pd.DataFrame, exclusions: pd.DataFrame) -> dict:
    """metrics/ingest.json: patients included and excluded, and the excluded by reason."""
    return {"n_included": len(cohort), "n_excluded": len(exclusions),
            **{f"excluded_{k}": int(v) for k, v in exclusions["reason"].value_counts().items()}}
