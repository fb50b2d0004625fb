"""The ingested dataset: one .npz per patient (four frames with labels and spacing) + tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import camus, framefile, geometry
from .io import write_csv

INGESTED = Path("data/ingested")  # where the ingest stage writes, relative to the repository root
EF_BINS = (0, 40, 50, 101)  # reduced, mildly reduced, preserved (ESC classes)


class IngestError(RuntimeError):
    """Ingest cannot produce a dataset (no patient, or an exclusion under ``strict``)."""


def _check_study(study: camus.Study) -> None:
    ef = study.ef_ref
    if not np.isfinite(ef) or not 0 <= ef <= 100:
        raise camus.StudyError("bad_reference_ef", f"reference EF {ef} missing or outside 0-100")
    for (view, phase), frame in study.frames.items():
        if not (frame.label == camus.LABELS["lv_cavity"]).any():
            raise camus.StudyError("empty_expert_lv", f"{view} {phase}: the expert mask has no LV cavity")


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
                raise camus.StudyError("duplicate_patient", f"same patient number as {repeated[folder]}")
            study = camus.read_study(folder)
            _check_study(study)
        except camus.StudyError as error:
            if strict:
                raise IngestError(f"{folder.name} excluded ({error}); ingest.strict is true") from error
            exclusions.append({"patient": folder.name, "reason": error.reason, "detail": error.detail})
            continue
        framefile.save(out_dir / f"{study.patient}.npz", study.frames)
        rows.append(study.cohort_row())
    if not rows:
        raise IngestError(f"no usable patient under {root} ({len(exclusions)} excluded; see the exclusions table)")
    cohort = pd.DataFrame(rows)
    exclusion_table = pd.DataFrame(exclusions, columns=["patient", "reason", "detail"])
    write_csv(out_dir / "cohort.csv", cohort)
    write_csv(out_dir / "exclusions.csv", exclusion_table)
    return cohort, exclusion_table


def patient_path(patient: str, ingested: Path = INGESTED) -> Path:
    """The .npz of one ingested patient."""
    return Path(ingested) / f"{patient}.npz"


def normalise(image: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the image (echo gain differs between machines and patients)."""
    image = np.asarray(image, dtype=np.float64)  # float32 sums overflow on wide-range pixels
    return ((image - image.mean()) / (image.std() + 1e-6)).astype(np.float32)


def grid_tensors(frames: list[camus.Frame], size: int, with_labels: bool = True):
    """Stack frames on the network grid: images (N,1,S,S), labels (N,S,S) or None, letterboxes."""
    boxes = [geometry.letterbox(f.image.shape, f.spacing_mm, size) for f in frames]
    images = torch.stack([geometry.to_grid(normalise(f.image), b) for f, b in zip(frames, boxes)])[:, None]
    labels = torch.stack([geometry.labels_to_grid(f.label, b) for f, b in zip(frames, boxes)]) if with_labels else None
    return images, labels, boxes


def input_order(frames: dict[tuple[str, str], camus.Frame], phases_per_input: int) -> list[tuple[str, str]]:
    """The frames' keys in the network's input order: view by view, ED before ES. With 2 phases per
    input each view must have both frames on one grid, else camus.StudyError('unpaired_view')."""
    keys = [key for key in camus.FRAME_KEYS if key in frames]
    if phases_per_input == 2:
        for view in dict.fromkeys(v for v, _ in keys):
            pair = [frames.get((view, phase)) for phase in camus.PHASES]
            if None in pair:
                raise camus.StudyError("unpaired_view", f"{view}: this model segments a view's ED and ES frames together; give both")
            if pair[0].image.shape != pair[1].image.shape or not np.allclose(pair[0].spacing_mm, pair[1].spacing_mm):
                raise camus.StudyError("unpaired_view", f"{view}: the ED and ES frames differ in size or spacing; this model needs them on one grid")
    return keys


def ef_class(ef: np.ndarray) -> np.ndarray:
    """0 reduced (<40%), 1 mildly reduced (40-49%), 2 preserved (>=50%)."""
    return np.digitize(ef, EF_BINS[1:-1])
