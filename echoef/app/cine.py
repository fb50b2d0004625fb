"""Cine loops: the LV area of every frame, and end-diastole (largest area) and end-systole (smallest
area) within one heart cycle, for loops in which nobody marked them."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..io.camus import Frame, Label
from ..measure.simpson import clean_lv_mask
from ..model import dataset
from ..model.network import predict_scores

MIN_FRAMES = 3  # fewer frames are no loop to choose phases from
# A frame stands apart when its area differs from its neighbours' by more than this share of the
# curve's range and of the area itself (a segmentation jitter of a few per cent is no outlier, even
# in a ventricle that hardly contracts).
OUTLIER_SHARE_OF_RANGE, OUTLIER_SHARE_OF_AREA = 0.25, 0.20
# The area curve's mean spans about this share of a beat (beats of fewer than 28 frames: 3 frames).
SMOOTHING_SHARE_OF_BEAT = 1 / 8
# How finely a picture is cut into blocks whose mean grey levels are compared from frame to frame: the
# means hide pixel noise, and a block of a contracting wall changes by much of the picture's brightness.
CHANGE_GRID_BLOCKS = 32


def lv_areas_mm2(models: list[torch.nn.Module], frames: np.ndarray, spacing_mm: tuple[float, float], size: int,
                 batch_size: int, precision: str = "auto") -> np.ndarray:
    """LV-cavity area (mm²) of each frame of a loop (T, H, W) by the one-frame members of an ensemble
    (mean softmax on the network grid, the largest LV component with holes filled). A paired member
    reads a view's ED and ES together, which are what is being looked for, so it takes no part."""
    members = [m for m in models if m.phases_per_input == 1]
    if not members:
        raise ValueError("no one-frame member")
    images, _, boxes = dataset.grid_tensors([Frame(f, None, spacing_mm) for f in frames], size, with_labels=False)
    scores = torch.stack([predict_scores(m, images, batch_size, False, precision) for m in members]).mean(0)
    box = boxes[0]
    pixel_mm2 = (max(np.array(box.native_shape) * np.asarray(spacing_mm)) / size) ** 2  # square grid pixels
    areas = [clean_lv_mask(label.numpy() == Label.LV)[0].sum() for label in scores.argmax(1)]
    return np.asarray(areas, dtype=float) * pixel_mm2


def _outlier_limit(steady: np.ndarray) -> np.ndarray:
    """Per frame, how far an area may stand from the steadied curve before it is an outlier."""
    return np.maximum(OUTLIER_SHARE_OF_RANGE * (steady.max() - steady.min()), OUTLIER_SHARE_OF_AREA * steady)


def _steadied(areas: np.ndarray) -> np.ndarray:
    """Each frame's area with a frame that stands alone removed: an inner frame replaced by the median
    of it and its two neighbours; an end frame, which has one neighbour, replaced by the straight
    continuation of the two nearest steadied ones (2 s1 - s2), only where it stands further from
    that than the outlier limit. A true ED or ES at a loop's end lies close to the continuation: on a
    beat of 12 frames it misses the top by about a ninth of the range, the limit is at least a quarter."""
    padded = np.pad(areas, 1, mode="edge")
    steady = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    if len(areas) >= MIN_FRAMES:
        limit = _outlier_limit(steady)
        for end, near, next_near in ((0, 1, 2), (-1, -2, -3)):
            continued = 2 * steady[near] - steady[next_near]  # steadied: an outlier beside the end does not carry into it
            steady[end] = continued if abs(areas[end] - continued) > limit[end] else areas[end]
    return steady


def outlier_frames(areas: np.ndarray) -> list[int]:
    """The frames whose LV area stands apart from the steadied curve (``_steadied``) by more than
    ``OUTLIER_SHARE_OF_RANGE`` of its range and ``OUTLIER_SHARE_OF_AREA`` of the area: frames the
    network read unlike the frames around them. The smoothing leaves them out of the choice of ED and
    ES; the study is flagged for review. None for a curve with a missing area."""
    areas = np.asarray(areas, dtype=float)
    if len(areas) < MIN_FRAMES or not np.isfinite(areas).all():
        return []
    steady = _steadied(areas)
    return [int(i) for i in np.flatnonzero(np.abs(areas - steady) > _outlier_limit(steady))]


def _smoothed(areas: np.ndarray) -> np.ndarray:
    """The area curve smoothed: steadied (``_steadied``: a frame that alone collapsed or leaked, on
    another site's loops the likeliest kind of outlier, is replaced, where a mean would only spread it
    into a false ED or ES), then a mean over ``smoothing_window`` frames (ends held). ED and ES are the
    extremes of this curve: of noisy areas, the largest and smallest are frames the noise made so, and
    the more frames a beat has the more compete, so the window grows with the beat (EF bias from the
    choice, ``benchmarks/cine_frame_choice.py``). On a smooth curve it moves no extreme by more than a
    frame or two."""
    steady = _steadied(areas)
    light = _running_mean(steady, 3)
    width = smoothing_window(dominant_period(light), len(areas))
    return light if width == 3 else _running_mean(steady, width)


def smoothing_window(period: int, frames: int) -> int:
    """Frames in the mean that smooths a loop's area curve: about ``SMOOTHING_SHARE_OF_BEAT`` of its
    beat, odd, and 3 at least; 3 where no beat length was found (``period`` the loop's length)."""
    if period >= frames:
        return 3
    return max(3, int(round(period * SMOOTHING_SHARE_OF_BEAT)) | 1)


def _running_mean(values: np.ndarray, width: int) -> np.ndarray:
    """The mean over ``width`` (odd) frames centred on each, the end values held beyond the ends."""
    return np.convolve(np.pad(values, width // 2, mode="edge"), np.ones(width) / width, mode="valid")


def dominant_period(areas: np.ndarray) -> int:
    """Frames per heart cycle: the first autocorrelation peak of the area curve, or the loop's
    length when it holds less than two cycles' evidence."""
    centred = areas - areas.mean()
    n = len(centred)
    if n < 2 * MIN_FRAMES or not centred.any():
        return n
    correlation = np.correlate(centred, centred, "full")[n - 1:] / (centred @ centred)
    for lag in range(2, n - 1):
        if correlation[lag] > 0.3 and correlation[lag] >= correlation[lag - 1] and correlation[lag] >= correlation[lag + 1]:
            return lag
    return n


def end_diastole_systole(areas: np.ndarray) -> tuple[int, int]:
    """(ED, ES) frame indices of one beat. Where the loop holds a complete beat (``beats``), the beat
    of the largest ED area (lightly smoothed): ED and its ES are then of one contraction, never a
    systole of another beat. Otherwise ED is the largest area of the loop, ES the smallest within one
    period of it, after ED or before it; a minimum at the loop's first or last frame may be a systole
    the loop cut short, so a true minimum inside the loop on the other side wins."""
    areas = np.asarray(areas, dtype=float)
    if len(areas) < MIN_FRAMES:
        raise ValueError(f"{len(areas)} frames")
    smooth = _smoothed(areas)
    complete = beats(areas)
    if complete:
        return max(complete, key=lambda beat: smooth[beat[0]])
    ed = int(np.argmax(smooth))
    period = dominant_period(smooth)
    windows = [w for w in (np.arange(ed + 1, min(len(areas), ed + period)), np.arange(max(0, ed - period + 1), ed)) if len(w)]
    lowest = [int(w[np.argmin(smooth[w])]) for w in windows]
    inside = [i for i in lowest if 0 < i < len(areas) - 1]
    return ed, inside[0] if inside else min(lowest, key=lambda i: smooth[i])


def beats(areas: np.ndarray) -> list[tuple[int, int]]:
    """(ED, ES) of every complete beat of a loop's LV area curve: ED a peak of the lightly smoothed
    curve (at least 0.6 of a period after the previous one and standing out by a fifth of the curve's
    range), ES the lowest frame before the next ED, or before the loop's end if the curve rises again
    after it. The loop's first frame is an ED when the curve falls from it and it stands as high as
    the loop's other peaks (``_first_frame_is_end_diastole``: loops recorded from the ECG's R wave
    start there). A beat cut off by either end of the loop is left out; a loop of less than one beat
    gives none (``end_diastole_systole`` still picks its frames)."""
    from scipy.signal import find_peaks

    areas = np.asarray(areas, dtype=float)
    if len(areas) < 2 * MIN_FRAMES or not np.isfinite(areas).all():
        return []
    smooth = _smoothed(areas)
    span = smooth.max() - smooth.min()
    period = dominant_period(smooth)
    if span <= 0 or period >= len(areas):
        return []
    peaks, _ = find_peaks(smooth, distance=max(2, int(0.6 * period)), prominence=0.2 * span)
    if _first_frame_is_end_diastole(smooth, peaks, period, span):
        peaks = np.concatenate([[0], peaks])
    found = []
    for index, ed in enumerate(peaks):
        stop = peaks[index + 1] if index + 1 < len(peaks) else len(areas)
        es = ed + 1 + int(np.argmin(smooth[ed + 1 : stop])) if stop > ed + 1 else None
        if es is None or es >= len(areas) - 1 or smooth[ed] - smooth[es] < 0.3 * span:
            continue  # no trough yet: the loop ends in systole
        found.append((int(ed), es))
    return found


def _first_frame_is_end_diastole(smooth: np.ndarray, peaks: np.ndarray, period: int, span: float) -> bool:
    """Whether frame 0 of a smoothed area curve is an ED that ``find_peaks`` cannot see (it finds no
    peak at an end): the curve falls from it, the next peak is at least 0.6 of a period later, and it
    stands within a tenth of the curve's range of the lowest other peak (of the curve's top where
    there is none). A loop that starts part way into systole starts lower than its peaks, so its
    first frame is no ED; one or two frames past a true ED at a high frame rate pass, as any peak
    found within a frame does."""
    if len(smooth) < 2 or smooth[0] <= smooth[1]:
        return False
    if len(peaks) and peaks[0] < 0.6 * period:
        return False
    level = smooth[peaks].min() if len(peaks) else smooth.max()
    return bool(smooth[0] >= level - 0.1 * span)


def block_means(frame: np.ndarray, blocks: int = CHANGE_GRID_BLOCKS) -> np.ndarray:
    """A picture's mean grey level in each of ``blocks`` x ``blocks`` blocks of (nearly) equal size
    (fewer along a side of fewer pixels)."""
    height, width = frame.shape
    row_starts = np.linspace(0, height, min(blocks, height) + 1).astype(int)[:-1]
    col_starts = np.linspace(0, width, min(blocks, width) + 1).astype(int)[:-1]
    sums = np.add.reduceat(np.add.reduceat(np.asarray(frame, dtype=np.float64), row_starts, axis=0), col_starts, axis=1)
    counts = np.outer(np.diff(np.append(row_starts, height)), np.diff(np.append(col_starts, width)))
    return sums / counts


def picture_change_percent(frames: np.ndarray) -> float:
    """How much a loop's picture changes: the largest range over the loop of any block's mean grey
    level (``block_means``), in per cent of the loop's brightness (the 99th percentile of its block
    means). A beating heart's walls move: between the ED and ES frames of the 898 CAMUS pairs in
    ``../shared`` some block changes by 25% at least (median 65%); one frame repeated, with or without
    pixel noise, changes by the noise's share of its block means only. 0 for a black loop."""
    means = np.stack([block_means(frame) for frame in frames])
    brightness = float(np.percentile(means, 99))
    if not math.isfinite(brightness) or brightness <= 0:
        return 0.0
    return float((means.max(axis=0) - means.min(axis=0)).max() / brightness * 100)
