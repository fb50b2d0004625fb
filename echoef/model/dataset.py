"""Network inputs from frames: normalised images letterboxed onto the square grid, in the order a
network reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import StudyError
from ..io import camus, framefile
from . import geometry


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
    input each view must have both frames on one grid, else StudyError('unpaired_view')."""
    keys = [key for key in camus.FRAME_KEYS if key in frames]
    if phases_per_input == 2:
        for view in dict.fromkeys(v for v, _ in keys):
            pair = [frames.get((view, phase)) for phase in camus.PHASES]
            if None in pair:
                raise StudyError("unpaired_view", f"{view}: this model segments a view's ED and ES frames together; give both")
            if pair[0].image.shape != pair[1].image.shape or not np.allclose(pair[0].spacing_mm, pair[1].spacing_mm):
                raise StudyError("unpaired_view", f"{view}: the ED and ES frames differ in size or spacing; this model needs them on one grid")
    return keys


def training_tensors(patients: list[str], ingested: Path, network, paired: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid tensors (images, labels) of the patients' ingested frames, in the input order every member
    of ``network`` (a ``params.Network``) can read; ``paired``: in a view's ED and ES pairs whatever the
    members read (the EF term of the loss needs both). A patient that cannot be read so (a view without
    both phases) is left out, and named."""
    frames, skipped = [], []
    for patient in patients:
        study = framefile.load(framefile.patient_path(patient, ingested))
        try:
            frames += [study[key] for key in input_order(study, 2 if paired else max(network.member_phases()))]
        except StudyError as error:  # a paired member cannot read this patient; the others still train
            skipped.append(f"{patient} ({error})")
    if skipped:
        print(f"train: {len(skipped)} patient(s) left out: " + "; ".join(skipped))
    images, labels, _ = grid_tensors(frames, network.input_size)
    return images, labels

