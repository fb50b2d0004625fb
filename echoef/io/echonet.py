"""The EchoNet-Dynamic layout (Ouyang et al., Nature 2020) as an input: a cohort of apical 4-chamber
videos with a reference EF each, and the LV traced on two frames of one beat. EchoNet-Pediatric
(Reddy et al., JASE 2023; its A4C folder) shares the layout but traces the LV as outline points.

    ROOT/FileList.csv         FileName, EF, ESV, EDV, FrameHeight, FrameWidth, FPS, NumberOfFrames, Split
    ROOT/Videos/<FileName>.avi
    ROOT/VolumeTracings.csv   FileName, X1, Y1, X2, Y2, Frame   (Dynamic; optional)
                              FileName, X, Y, Frame             (Pediatric; optional)

A Dynamic tracing is, per traced frame, one row for the long axis and then one row per disc chord (20
in the release), each the two ends of a line in video pixels (x a column, y a row, a pixel's centre
at whole numbers). The LV outline is the polygon through the chords' first ends, base to apex, and
back through their second ends, as EchoNet-Dynamic's own loader draws it. A Pediatric tracing is the
outline itself, one row per point in order; a frame named "No Systolic" or "No Diastolic" (a phase
its tracer could not trace) is none. Of a video's traced frames the larger outline is
end-diastole, the smaller end-systole: the file's order is not relied on.

Every value is untrusted: file names must name a file inside ``Videos/``, numbers must be finite, and
a row that breaks a rule makes that video's problem, not the cohort's.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StudyError, UsageError
from .untrusted import read_bounded

FILE_LISTS = ("FileList.csv", "File List.csv")  # the release's name, and an earlier one of its loader
TRACINGS = "VolumeTracings.csv"
VIDEOS = "Videos"
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm")
MAX_TABLE_BYTES = 256 << 20  # the release's tracings of 10,030 videos are about 30 MB
MIN_TRACING_LINES = 3  # the long axis and two chords: the least that outlines an area
MAX_TRACING_LINES = 200
MIN_OUTLINE_POINTS, MAX_OUTLINE_POINTS = 3, 5000  # a Pediatric outline: a triangle at least
CHORD_COLUMNS, POINT_COLUMNS = ("X1", "Y1", "X2", "Y2"), ("X", "Y")


def file_list(root: Path) -> Path | None:
    """The cohort's file list if ``root`` is in the EchoNet-Dynamic layout (a file list and a
    ``Videos/`` folder), else None."""
    root = Path(root)
    if not (root / VIDEOS).is_dir():
        return None
    return next((root / name for name in FILE_LISTS if (root / name).is_file()), None)


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A CSV of the layout, its ``columns`` required; UsageError naming the file and the fix."""
    try:
        table = pd.read_csv(io.BytesIO(read_bounded(path, MAX_TABLE_BYTES)), dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise UsageError(f"{path}: not a readable CSV table ({str(error).splitlines()[0][:150]})") from error
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in columns if c not in table]
    if missing:
        raise UsageError(f"{path}: needs the columns {', '.join(columns)} of the EchoNet-Dynamic layout; "
                         f"{', '.join(missing)} missing")
    return table


def _number(text: str) -> float:
    """A finite number from a table's text, else NaN."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


@dataclass(frozen=True)
class Tracing:
    """One traced frame: its LV ``outline``, (K, 2) vertices (x, y) in video pixels, in order."""

    frame: int
    outline: np.ndarray

    @classmethod
    def from_chords(cls, frame: int, lines: np.ndarray) -> Tracing:
        """A Dynamic tracing from its ``lines`` (N, 4) of x1, y1, x2, y2, the long axis first: the
        chords' first ends in order, then their second ends back."""
        chords = lines[1:]
        return cls(frame, np.concatenate([chords[:, 0:2], chords[::-1, 2:4]]))

    def area_px(self) -> float:
        """The outline's area in pixels (shoelace)."""
        x, y = self.outline.T
        return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The pixels (H, W) whose centres lie inside the outline."""
        from matplotlib.path import Path as Outline

        rows, cols = np.mgrid[: shape[0], : shape[1]]
        inside = Outline(self.outline).contains_points(np.column_stack([cols.ravel(), rows.ravel()]))
        return inside.reshape(shape)


@dataclass
class Video:
    """One row of the file list: its video, reference EF, frame rate, split, and traced frames."""

    name: str
    path: Path | None
    ef_ref: float = math.nan
    fps: float = math.nan
    split: str = ""
    tracings: dict[int, Tracing] = field(default_factory=dict)
    problem: StudyError | None = None

    def traced_phases(self) -> tuple[Tracing, Tracing] | None:
        """(ED, ES) tracings: the largest and the smallest outline of the video; None with fewer than two."""
        if len(self.tracings) < 2:
            return None
        ordered = sorted(self.tracings.values(), key=Tracing.area_px)
        return ordered[-1], ordered[0]


def _video_path(videos: Path, name: str) -> Path | None:
    """The file ``name`` names in ``videos`` (the name as given, or with a video suffix added), only
    if it is a plain file name: no folder part, so no name reaches outside ``videos``."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
        return None
    candidates = [name] if Path(name).suffix.lower() in VIDEO_SUFFIXES else [name + s for s in VIDEO_SUFFIXES]
    for candidate in candidates:
        path = videos / candidate
        if path.is_file():
            return path
    return None


def _stem(name: str) -> str:
    """A FileName without its video suffix: the list names videos without it, the tracings with it."""
    path = Path(name)
    return path.stem if path.suffix.lower() in VIDEO_SUFFIXES else name


def read_tracings(path: Path) -> dict[str, dict[int, Tracing]]:
    """Tracings per video (by FileName without suffix) and frame, Dynamic's chords or Pediatric's
    outline points (whichever columns the file has); a frame with a non-finite number, a negative or
    non-numeric index ("No Systolic") or too few or too many rows is left out."""
    table = _read_table(path, ("FileName", "Frame"))
    chords = all(c in table for c in CHORD_COLUMNS)
    if not chords and not all(c in table for c in POINT_COLUMNS):
        raise UsageError(f"{path}: needs the columns X1, Y1, X2, Y2 (EchoNet-Dynamic's chords) or X, Y "
                         "(EchoNet-Pediatric's outline points) beside FileName and Frame")
    columns = CHORD_COLUMNS if chords else POINT_COLUMNS
    low, high = (MIN_TRACING_LINES, MAX_TRACING_LINES) if chords else (MIN_OUTLINE_POINTS, MAX_OUTLINE_POINTS)
    coords = np.column_stack([pd.to_numeric(table[c], errors="coerce").to_numpy(float) for c in columns])
    frames = pd.to_numeric(table["Frame"], errors="coerce").to_numpy(float)
    found: dict[str, dict[int, Tracing]] = {}
    for (name, frame), rows in pd.DataFrame({"name": table["FileName"].map(_stem), "frame": frames}).groupby(
            ["name", "frame"], sort=False).groups.items():
        values = coords[np.asarray(rows)]
        if not (math.isfinite(frame) and frame >= 0 and frame == int(frame) and np.isfinite(values).all()
                and low <= len(values) <= high):
            continue
        found.setdefault(name, {})[int(frame)] = Tracing.from_chords(int(frame), values) if chords else Tracing(int(frame), values)
    return found


def read_cohort(root: Path, split: str | None = None) -> list[Video]:
    """The videos of an EchoNet-Dynamic folder (those of ``split`` only, e.g. TEST, if given), each
    with its reference EF and tracings; a row whose video is missing or whose numbers are unusable
    carries a ``problem``."""
    root = Path(root)
    listing = file_list(root)
    if listing is None:
        raise UsageError(f"{root} is not in the EchoNet-Dynamic layout (FileList.csv and a Videos/ folder)")
    table = _read_table(listing, ("FileName", "EF"))
    tracings = read_tracings(root / TRACINGS) if (root / TRACINGS).is_file() else {}
    videos = []
    for row in table.to_dict(orient="records"):
        name = str(row["FileName"]).strip()
        row_split = str(row.get("Split", "")).strip().upper()
        if split is not None and row_split != split.upper():
            continue
        video = Video(_stem(name), _video_path(root / VIDEOS, name), _number(row["EF"]), _number(row.get("FPS", "")),
                      row_split, tracings.get(_stem(name), {}))
        if video.path is None:
            video.problem = StudyError("missing_study", f"{name[:80]!r}: no such video in {VIDEOS}/ (a plain file name)")
        if not 0 <= video.ef_ref <= 100:
            video.ef_ref = math.nan  # the EF column is the reference: without a usable one, no agreement
        videos.append(video)
    return videos
