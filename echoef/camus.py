"""Read CAMUS-layout folders: the 2023 NIfTI release and the 2019 MetaImage release.

A patient folder holds ``patientXXXX_{2CH,4CH}_{ED,ES}[_gt].{nii.gz,mhd}`` and ``Info_{2CH,4CH}.cfg``.
Arrays come out (H, W) as SimpleITK returns them, apex at the top, with their (row, col) spacing in mm.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")
FRAME_KEYS = tuple((v, p) for v in VIEWS for p in PHASES)
LABELS = {"background": 0, "lv_cavity": 1, "myocardium": 2, "left_atrium": 3}
EXTENSIONS = {"2023": ".nii.gz", "2019": ".mhd"}
SPLIT_FILES = {"train": "subgroup_training.txt", "val": "subgroup_validation.txt", "test": "subgroup_testing.txt"}
PATIENT_DIR = re.compile(r"^patient\d+$")

sitk.ProcessObject.SetGlobalWarningDisplay(False)  # unreadable files are reported as exclusions


class StudyError(ValueError):
    """A patient that cannot be used; ``reason`` is the short code written to the exclusion table."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Frame:
    """One apical frame: image, expert label map (or None) and (row, col) spacing in mm."""

    image: np.ndarray
    label: np.ndarray | None
    spacing_mm: tuple[float, float]


@dataclass
class Study:
    """One patient: frames keyed (view, phase), the cfg fields, and which layout they came from."""

    patient: str
    layout: str
    frames: dict[tuple[str, str], Frame]
    info: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def ef_ref(self) -> float:
        """Reference EF (%): ``EF`` in the 2023 release, ``LVef`` in the 2019 one (another quantity)."""
        for view in VIEWS:
            info = self.info.get(view, {})
            for key in ("EF", "LVef"):
                if key in info:
                    return _float(info[key], f"{view} cfg {key}")
        return float("nan")

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


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError as error:
        raise StudyError("bad_cfg", f"{what} is not a number: {text!r}") from error


def read_cfg(path: Path) -> dict[str, str]:
    """Parse an Info_*.cfg file of ``key: value`` lines; unknown or blank lines are ignored."""
    fields = {}
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return fields


def find_patients(root: Path) -> list[Path]:
    """Patient folders under a CAMUS root (2023 ``database_nifti/`` or the root itself), sorted."""
    root = Path(root)
    base = root / "database_nifti" if (root / "database_nifti").is_dir() else root
    return sorted(p for p in base.iterdir() if p.is_dir() and PATIENT_DIR.match(p.name))


def detect_layout(patient_dir: Path) -> str:
    """'2023' (NIfTI) or '2019' (MetaImage), from the files present."""
    names = [p.name for p in patient_dir.iterdir()]
    if any(n.endswith(".nii.gz") for n in names):
        return "2023"
    if any(n.endswith(".mhd") for n in names):
        return "2019"
    raise StudyError("missing_frame", "no .nii.gz or .mhd file")


def frame_path(patient_dir: Path, view: str, phase: str, layout: str, gt: bool = False) -> Path:
    """Path of one frame's image (or label map with ``gt``) in a patient folder."""
    suffix = "_gt" if gt else ""
    return patient_dir / f"{patient_dir.name}_{view}_{phase}{suffix}{EXTENSIONS[layout]}"


def _check_gzip_complete(path: Path) -> None:
    """SimpleITK zero-fills a truncated .nii.gz without complaint; gzip itself notices."""
    try:
        with gzip.open(path) as stream:
            while stream.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as error:
        raise StudyError("unreadable_file", f"{path.name}: truncated or corrupt gzip ({error})") from error


MAX_PIXELS = 4096 * 4096  # larger "2D echo frames" are corrupt headers, not images


def read_image(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a 2D image (a trailing singleton slice is dropped) and its (row, col) spacing in mm.

    The header is checked before any pixel is read, so a corrupt size cannot exhaust memory.
    """
    if not path.is_file():
        raise StudyError("missing_frame", f"{path.name} not found")
    if path.name.endswith(".gz"):
        _check_gzip_complete(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = reader.GetSize()
        if len(size) not in (2, 3) or (len(size) == 3 and size[2] != 1) or min(size) < 1 or np.prod(size) > MAX_PIXELS:
            raise StudyError("bad_geometry", f"{path.name}: expected a 2D image, the header says size {size}")
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1][:200]
        # ITK itself refuses a zero spacing in the header; name it as the spacing problem it is.
        reason = "bad_spacing" if "spacing" in message.lower() else "unreadable_file"
        raise StudyError(reason, f"{path.name}: {message}") from error
    spacing = image.GetSpacing()
    if array.ndim == 3:
        array = array[0]
    if min(array.shape) < 2:
        raise StudyError("bad_geometry", f"{path.name}: expected a 2D image, got shape {array.shape}")
    spacing_mm = (float(spacing[1]), float(spacing[0]))  # SimpleITK spacing is (x=col, y=row)
    if not all(np.isfinite(spacing_mm)) or min(spacing_mm) <= 0:
        raise StudyError("bad_spacing", f"{path.name}: spacing {spacing_mm} mm is not positive")
    return array, spacing_mm


def read_frame(patient_dir: Path, view: str, phase: str, layout: str, labels_dir: Path | None = None,
               with_label: bool = True) -> Frame:
    """Read one frame and its label map (from ``labels_dir`` if given, named the same way)."""
    image, spacing_mm = read_image(frame_path(patient_dir, view, phase, layout))
    label = None
    if with_label:
        label_dir = patient_dir if labels_dir is None else Path(labels_dir) / patient_dir.name
        label, label_spacing = read_image(frame_path(label_dir, view, phase, layout, gt=True))
        if label.shape != image.shape or not np.allclose(label_spacing, spacing_mm, rtol=1e-4):
            raise StudyError("grid_mismatch", f"{view} {phase}: image {image.shape} {spacing_mm} vs "
                                              f"labels {label.shape} {label_spacing}")
        if label.min() < 0 or label.max() > 3:
            raise StudyError("bad_labels", f"{view} {phase}: labels outside 0-3 ({label.min()}..{label.max()})")
        label = label.astype(np.uint8)
    return Frame(image=image.astype(np.float32), label=label, spacing_mm=spacing_mm)


def read_study(patient_dir: Path, labels_dir: Path | None = None, with_label: bool = True) -> Study:
    """Read the four frames and both cfg files of one patient; raises StudyError with a reason."""
    patient_dir = Path(patient_dir)
    layout = detect_layout(patient_dir)
    frames = {(v, p): read_frame(patient_dir, v, p, layout, labels_dir, with_label) for v, p in FRAME_KEYS}
    info = {}
    for view in VIEWS:
        cfg = patient_dir / f"Info_{view}.cfg"
        if cfg.is_file():
            info[view] = read_cfg(cfg)
    return Study(patient=patient_dir.name, layout=layout, frames=frames, info=info)


def image_paths(patient_dir: Path) -> dict[tuple[str, str], Path]:
    """The image files (not label maps) present in a patient folder of either layout, keyed (view, phase)."""
    patient_dir = Path(patient_dir)
    layout = detect_layout(patient_dir)
    paths = {(v, p): frame_path(patient_dir, v, p, layout) for v, p in FRAME_KEYS}
    return {key: path for key, path in paths.items() if path.is_file()}


def write_label_like(label: np.ndarray, reference: Path, out: Path) -> None:
    """Write a label map with the geometry (size, spacing, origin, direction) and format of an image."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(reference))
    reader.ReadImageInformation()
    array = label.astype(np.uint8)
    image = sitk.GetImageFromArray(array[None] if reader.GetDimension() == 3 else array)
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(out), useCompression=out.name.endswith(".gz"))


def read_split_lists(root: Path) -> dict[str, list[str]] | None:
    """The dataset's own ``database_split`` lists, or None when the root has none."""
    split_dir = Path(root) / "database_split"
    if not all((split_dir / name).is_file() for name in SPLIT_FILES.values()):
        return None
    return {subset: (split_dir / name).read_text().split() for subset, name in SPLIT_FILES.items()}
