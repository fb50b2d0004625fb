"""Read CAMUS-layout folders: the 2023 NIfTI release and the 2019 MetaImage release.

A patient folder holds ``patientXXXX_{2CH,4CH}_{ED,ES}[_gt].{nii.gz,mhd}`` and ``Info_{2CH,4CH}.cfg``.
Arrays come out (H, W) in canonical orientation (``imagefile``: apex at the top for apical views),
with their (row, col) spacing in mm and the header of their file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..domain import FRAME_KEYS, HEART_LABELS, PHASES, VIEWS, Frame, Label, Phase, View  # noqa: F401 - the reader's vocabulary
from ..errors import StudyError
from .imagefile import Header, read_image
from .untrusted import read_bounded

EXTENSIONS = {"2023": ".nii.gz", "2019": ".mhd"}
SPLIT_FILES = {"train": "subgroup_training.txt", "val": "subgroup_validation.txt", "test": "subgroup_testing.txt"}
PATIENT_DIR = re.compile(r"^patient\d+$")
MAX_CFG_BYTES = 1 << 20  # an Info_*.cfg is a few hundred bytes; a megabyte is not one


@dataclass
class Study:
    """One patient: frames keyed (view, phase), the cfg fields (and the error of any cfg file that
    could not be read), and which layout they came from."""

    patient: str
    layout: str
    frames: dict[tuple[str, str], Frame]
    info: dict[str, dict[str, str]] = field(default_factory=dict)
    cfg_error: StudyError | None = None

    @property
    def ef_ref(self) -> float:
        """Reference EF (%): ``EF`` in the 2023 release, ``LVef`` in the 2019 one (another quantity).
        Raises the cfg's StudyError ('bad_cfg') when a cfg file could not be read or parsed."""
        if self.cfg_error:
            raise self.cfg_error
        return _cfg_ef(self.info)

    def cohort_row(self) -> dict:
        """Patient-level fields for the cohort table (NaN or '' where the cfg lacks them)."""
        info2, info4 = self.info.get("2CH", {}), self.info.get("4CH", {})
        both = {**info4, **info2}
        return {
            "patient": self.patient,
            "layout": self.layout,
            "ef_ref": self.ef_ref,
            "ef_ref_key": "EF" if "EF" in both else ("LVef" if "LVef" in both else ""),
            "edv_ref_ml": _float(both.get("LVedv", "nan"), "LVedv"),
            "esv_ref_ml": _float(both.get("LVesv", "nan"), "LVesv"),
            "quality_2ch": info2.get("ImageQuality", ""),
            "quality_4ch": info4.get("ImageQuality", ""),
            "sex": both.get("Sex", ""),
            "age": _float(both.get("Age", "nan"), "Age"),
        }


def _cfg_ef(info: dict[str, dict[str, str]]) -> float:
    """The EF of the cfg fields (``EF``, else ``LVef``), NaN if none; StudyError('bad_cfg') for text."""
    for view in VIEWS:
        fields = info.get(view, {})
        for key in ("EF", "LVef"):
            if key in fields:
                return _float(fields[key], f"{view} cfg {key}")
    return float("nan")


def reference_ef(info: dict[str, dict[str, str]], cfg_error: StudyError | None) -> tuple[float, str]:
    """A patient's usable reference EF from its cfg fields and '', or NaN and why they give none (the
    EF from the masks does not need it, so a bad cfg is noted, not fatal)."""
    if cfg_error:
        return math.nan, str(cfg_error)
    try:
        ef = _cfg_ef(info)
    except StudyError as error:
        return math.nan, str(error)
    if not math.isnan(ef) and not 0 <= ef <= 100:
        return math.nan, f"bad_reference_ef: {ef} is outside 0-100"
    return ef, ""


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError as error:
        raise StudyError("bad_cfg", f"{what} is not a number: {text!r}") from error


def read_cfg(path: Path) -> dict[str, str]:
    """Parse an Info_*.cfg file of ``key: value`` lines; unknown or blank lines are ignored.

    UTF-8 (with or without a byte-order mark) or UTF-16 with its mark, as editors save text;
    undecodable bytes become U+FFFD. Raises StudyError('bad_cfg') for an unreadable or huge file.
    """
    try:
        raw = read_bounded(path, MAX_CFG_BYTES)
    except OSError as error:
        raise StudyError("bad_cfg", f"{Path(path).name}: {error.strerror or error}") from error
    except ValueError as error:
        raise StudyError("bad_cfg", f"{error}: not an Info cfg file") from error
    utf16 = raw.startswith((b"\xff\xfe", b"\xfe\xff"))
    text = raw.decode("utf-16" if utf16 else "utf-8-sig", errors="replace")
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return fields


def find_patients(root: Path) -> list[Path]:
    """Every ``patientNNNN`` entry under a CAMUS root (2023 ``database_nifti/`` or the root itself),
    sorted: folders, and also files or broken links of that name, so that a reader reports them
    instead of a batch silently skipping them."""
    root = Path(root)
    base = root / "database_nifti" if (root / "database_nifti").is_dir() else root
    return sorted(p for p in base.iterdir() if PATIENT_DIR.match(p.name))


def duplicates(folders: list[Path]) -> dict[Path, str]:
    """Folders naming a patient number already seen (``patient0001`` then ``patient001``, one patient
    exported twice), each mapped to the first folder's name; the first in sorted order is kept."""
    seen, repeated = {}, {}
    for folder in folders:
        number = int(folder.name.removeprefix("patient"))
        if number in seen:
            repeated[folder] = seen[number]
        else:
            seen[number] = folder.name
    return repeated


def detect_layout(patient_dir: Path) -> str:
    """'2023' (NIfTI) or '2019' (MetaImage), from the files present."""
    try:
        names = [p.name for p in Path(patient_dir).iterdir()]
    except OSError as error:  # not a folder, a link loop, no permission
        raise StudyError("unreadable_file", f"{Path(patient_dir).name}: {error.strerror or error}") from error
    if any(n.endswith(".nii.gz") for n in names):
        return "2023"
    if any(n.endswith(".mhd") for n in names):
        return "2019"
    raise StudyError("missing_frame", "no .nii.gz or .mhd file")


def frame_path(patient_dir: Path, view: str, phase: str, layout: str, gt: bool = False) -> Path:
    """Path of one frame's image (or label map with ``gt``) in a patient folder."""
    suffix = "_gt" if gt else ""
    return patient_dir / f"{patient_dir.name}_{view}_{phase}{suffix}{EXTENSIONS[layout]}"


def read_label(path: Path) -> tuple[np.ndarray, tuple[float, float], Header]:
    """A label map (uint8, values 0-3) with its spacing and header; StudyError('bad_labels') for
    values that are not whole numbers from 0 to 3."""
    label, spacing_mm, header = read_image(path)
    if label.size and (label.min() < 0 or label.max() > 3 or not np.array_equal(label, np.round(label))):
        raise StudyError("bad_labels", f"{path.name}: labels other than 0, 1, 2, 3 "
                                       f"({label.min()}..{label.max()}, {label.dtype})")
    return label.astype(np.uint8), spacing_mm, header


def same_grid(shape_a: tuple[int, int], spacing_a, header_a: Header, shape_b: tuple[int, int], spacing_b,
              header_b: Header) -> bool:
    """Whether two canonical arrays cover the same pixels in space (shape, spacing and first-pixel
    position agree to a small fraction of a pixel)."""
    tolerance_mm = 1e-3 * min(spacing_a)
    return (tuple(shape_a) == tuple(shape_b) and np.allclose(spacing_a, spacing_b, rtol=1e-4)
            and np.allclose(header_a.corner_mm(shape_a), header_b.corner_mm(shape_b), atol=tolerance_mm))


def read_frame(patient_dir: Path, view: str, phase: str, layout: str, labels_dir: Path | None = None,
               with_label: bool = True) -> Frame:
    """Read one frame and its label map (from ``labels_dir`` if given, named the same way)."""
    image, spacing_mm, header = read_image(frame_path(patient_dir, view, phase, layout))
    label = None
    if with_label:
        label_dir = patient_dir if labels_dir is None else Path(labels_dir) / patient_dir.name
        label, label_spacing, label_header = read_label(frame_path(label_dir, view, phase, layout, gt=True))
        if not same_grid(image.shape, spacing_mm, header, label.shape, label_spacing, label_header):
            raise StudyError("grid_mismatch", f"{view} {phase}: image {image.shape} {spacing_mm} mm at "
                                              f"{header.corner_mm(image.shape)} vs labels {label.shape} {label_spacing} mm "
                                              f"at {label_header.corner_mm(label.shape)}")
    return Frame(image=image.astype(np.float32), label=label, spacing_mm=spacing_mm, header=header)


def read_study(patient_dir: Path, labels_dir: Path | None = None, with_label: bool = True) -> Study:
    """Read the four frames and both cfg files of one patient; raises StudyError with a reason."""
    patient_dir = Path(patient_dir)
    layout = detect_layout(patient_dir)
    frames = {(v, p): read_frame(patient_dir, v, p, layout, labels_dir, with_label) for v, p in FRAME_KEYS}
    return Study(patient_dir.name, layout, frames, *read_info(patient_dir))


def read_info(patient_dir: Path) -> tuple[dict[str, dict[str, str]], StudyError | None]:
    """Both cfg files' fields by view, and the error of one that could not be read (the masks can
    still be measured; the reference is what is lost). A missing cfg is no error."""
    info, cfg_error = {}, None
    for view in VIEWS:
        cfg = Path(patient_dir) / f"Info_{view}.cfg"
        try:
            if cfg.exists() or cfg.is_symlink():
                info[view] = read_cfg(cfg)
        except StudyError as error:
            cfg_error = error
    return info, cfg_error


def image_paths(patient_dir: Path) -> dict[tuple[str, str], Path]:
    """The image files (not label maps) present in a patient folder of either layout, keyed (view, phase)."""
    patient_dir = Path(patient_dir)
    layout = detect_layout(patient_dir)
    paths = {(v, p): frame_path(patient_dir, v, p, layout) for v, p in FRAME_KEYS}
    return {key: path for key, path in paths.items() if path.is_file()}


def read_split_lists(root: Path) -> dict[str, list[str]] | None:
    """The dataset's own ``database_split`` lists, or None when the root has none."""
    split_dir = Path(root) / "database_split"
    if not all((split_dir / name).is_file() for name in SPLIT_FILES.values()):
        return None
    return {subset: read_bounded(split_dir / name).decode("utf-8", errors="replace").split() for subset, name in SPLIT_FILES.items()}
