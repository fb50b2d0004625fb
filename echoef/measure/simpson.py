"""LV volumes and ejection fraction from LV-cavity masks.

``simpson_biplane`` reproduces the CAMUS reference algorithm (the Simpson's biplane method of discs
published with the dataset, Leclerc et al. 2019) number for number on the release's 0.308 mm pixels,
to which every mask is resampled first, but searches the basal chord with
exact integer geometry and vectorised filters instead of testing every contour pair in Python loops.
``simpson_single_plane`` and ``area_length`` are alternatives sharing the same landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

from ..domain import EF_METHODS

N_DISCS = 20
# The reference's constants below are in pixels of the CAMUS release grid (0.308 mm square). Every
# mask is resampled to that pixel size first, so they keep their physical size on any grid: on a
# coarser grid the 8-pixel band spans more millimetres and admits wrong mitral-plane chords.
REFERENCE_PIXEL_MM = 0.308
CHORD_MAX_ANGLE_DEG = 45  # fixed by the reference; the test below assumes 45 (dx >= |dy|)
CHORD_MAX_DEVIATION_PX = 8
EDGE_WALK_START_PX = 8
EDGE_WALK_STEP_PX = 0.5
MIN_LV_PIXELS = 50  # below this a "cavity" is noise, not a ventricle

METHODS = EF_METHODS


class LVGeometryError(ValueError):
    """A mask from which no LV geometry can be measured; ``status`` names why."""

    def __init__(self, status: str, detail: str = ""):
        super().__init__(f"{status}: {detail}" if detail else status)
        self.status = status


@dataclass(frozen=True)
class LVGeometry:
    """Landmarks and disc diameters of one LV-cavity mask, in mm."""

    diameters_mm: np.ndarray  # N_DISCS diameters from base to apex
    long_axis_mm: float  # base point to apex
    area_mm2: float  # cavity area on the native grid
    n_components: int  # connected components in the input mask (1 is clean)
    touches_border: bool  # the cavity reaches the image edge (volume may be truncated)
    base_mm: np.ndarray  # (row, col) of the base point on the native grid, mm
    apex_mm: np.ndarray
    # The construction as drawn for review, (row, col) mm from the image's top-left corner:
    contour_mm: np.ndarray  # (K, 2) the LV contour measured
    mitral_mm: np.ndarray  # (2, 2) the ends of the mitral-plane chord
    axis_mm: np.ndarray  # (2, 2) the base point and the apex
    disc_ends_mm: np.ndarray  # (N_DISCS, 2, 2) the two ends of each disc's diameter


@dataclass(frozen=True)
class Volumes:
    """End-diastolic and end-systolic LV volumes (mL) and EF (%)."""

    edv_ml: float
    esv_ml: float
    ef: float
    method: str


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest connected component of a binary mask (H, W) (all False if empty), and how many
    components it had."""
    labels, n_components = ndimage.label(mask)
    if n_components == 0:
        return np.zeros(mask.shape, dtype=bool), 0
    return labels == (1 + int(np.argmax(np.bincount(labels.ravel())[1:]))), n_components


def clean_lv_mask(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Largest connected component of a binary mask with holes filled; also the component count."""
    largest, n_components = largest_component(mask)
    if n_components == 0:
        return largest, 0
    # Holes are background components that do not reach the image edge (one labelling, cheaper
    # than ndimage.binary_fill_holes' iterated dilation).
    background, _ = ndimage.label(~largest)
    edge = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    return ~np.isin(background, edge[edge > 0]), n_components


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel in PIL's NEAREST resize: floor((i + 0.5) * in / out)."""
    return ((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)


def square_pixels_shape(shape: tuple[int, int], spacing_mm: tuple[float, float],
                        pixel_mm: float = REFERENCE_PIXEL_MM) -> tuple[int, int]:
    """Shape of the same field of view on square pixels of side ``pixel_mm`` (rounded half-to-even)."""
    spacing = np.asarray(spacing_mm, dtype=float)
    new_shape = (np.array(shape) * (spacing / pixel_mm)).round().astype(int)
    return int(new_shape[0]), int(new_shape[1])


def nearest_resample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A label map or mask (H, W) resampled to ``shape`` by PIL's NEAREST rule (the reference's)."""
    return mask[np.ix_(_nearest_index(mask.shape[0], shape[0]), _nearest_index(mask.shape[1], shape[1]))]


def square_pixels(mask: np.ndarray, spacing_mm: tuple[float, float],
                  pixel_mm: float = REFERENCE_PIXEL_MM) -> tuple[np.ndarray, float]:
    """Nearest-neighbour resample to square pixels of side ``pixel_mm``.

    Follows the reference on purpose (PIL NEAREST resize to the numpy-rounded size).
    """
    return nearest_resample(mask, square_pixels_shape(mask.shape, spacing_mm, pixel_mm)), float(pixel_mm)


def _square_pixels_crop(crop: np.ndarray, origin: tuple[int, int], shape: tuple[int, int],
                        spacing_mm: tuple[float, float], pixel_mm: float):
    """``square_pixels`` of a full image that is background outside ``crop`` (placed at ``origin``),
    computed on the crop alone; returns (iso crop, its offset on the full iso grid, full iso shape).
    """
    iso_shape = square_pixels_shape(shape, spacing_mm, pixel_mm)
    index = []
    for axis in (0, 1):
        source = _nearest_index(shape[axis], iso_shape[axis]) - origin[axis]
        inside = np.nonzero((source >= 0) & (source < crop.shape[axis]))[0]
        index.append((inside[0], source[inside]))
    (row0, rows), (col0, cols) = index
    return crop[np.ix_(rows, cols)], np.array([row0, col0], dtype=float), iso_shape


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(first row, last row + 1, first col, last col + 1) of the True pixels, or None."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _dominance_pairs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (j, i), i >= j + 2, with u[j] >= u[i] and v[j] >= v[i]."""
    n = len(u)
    flat = np.flatnonzero((u[:, None] >= u[None, :]) & (v[:, None] >= v[None, :]))
    # Integer division done in floating point (exact here: flat < 2**40) is several times faster.
    j = np.floor((flat + 0.5) / n).astype(np.int64)
    i = flat - j * n
    keep = i >= j + 2
    return j[keep], i[keep]


class _Chords:
    """Candidate chords (j, i) of a contour in doubled integer coordinates, with exact band tests.

    Marching squares on a binary mask gives half-pixel positions, so doubled coordinates are
    integers and "distance to the line <= 8 px" is tested exactly as cross^2 <= (2*8)^2 |d|^2,
    where the reference compared floats.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, j: np.ndarray, i: np.ndarray):
        self.rows, self.cols, self.j, self.i = rows, cols, j, i
        self.d_row, self.d_col = rows[j] - rows[i], cols[j] - cols[i]
        self.length2 = self.d_row * self.d_row + self.d_col * self.d_col

    def subset(self, keep: np.ndarray) -> _Chords:
        """The candidates selected by a boolean mask or an index array, in that order."""
        return _Chords(self.rows, self.cols, self.j[keep], self.i[keep])

    def in_band(self, k: np.ndarray) -> np.ndarray:
        """Whether contour point k (one per chord, or a (chords, points) array) is within 8 px."""
        shape = (-1,) + (1,) * (k.ndim - 1)  # one chord per row of k
        i, d_row, d_col = self.i.reshape(shape), self.d_row.reshape(shape), self.d_col.reshape(shape)
        cross = d_row * (self.cols[i] - self.cols[k]) - d_col * (self.rows[i] - self.rows[k])
        return cross * cross <= (2 * CHORD_MAX_DEVIATION_PX) ** 2 * self.length2.reshape(shape)

    def in_band_at(self, fraction: float) -> np.ndarray:
        """Whether the contour point ``fraction`` of the way from j to i is within the band."""
        k = np.minimum(self.j + np.maximum(1, ((self.i - self.j) * fraction).astype(np.int64)), self.i - 1)
        return self.in_band(k)

    def arc_in_band(self) -> np.ndarray:
        """Whether every contour point strictly between j and i is within the band."""
        j, i = self.j[:, None], self.i[:, None]
        k = j + 1 + np.arange(int((i - j).max()) - 1)[None, :]
        inside = k < i
        return np.all(self.in_band(np.where(inside, k, j + 1)) | ~inside, axis=1)


def basal_chord(contour: np.ndarray) -> tuple[int, int]:
    """Indices (j, i), j < i, of the mitral-plane chord of the reference algorithm.

    The chord is the longest pair whose segment lies within 45 degrees of the horizontal, the
    earlier point on the right (the reference's |atan2(dy, dx)| <= 45 with dy, dx = p_j - p_i), and
    every contour point strictly between them within 8 px of their line. Ties go to the smallest i,
    then the smallest j, as in the reference's loop.
    """
    q = np.rint(2 * contour).astype(np.int64)
    rows, cols = q[:, 0].copy(), q[:, 1].copy()
    # The reference's atan2 test, exactly: |angle| <= 45 deg <=> d_col >= |d_row| <=> p_j dominates
    # p_i in both rotated coordinates u = col + row and v = col - row (compared in int16: fast).
    small = np.int16 if np.abs(q).max() < 2**13 else np.int64
    chords = _Chords(rows, cols, *_dominance_pairs((cols + rows).astype(small), (cols - rows).astype(small)))
    # Cheap necessary condition: the point halfway along the arc must lie in the band. Most chords
    # across the cavity fail here.
    chords = chords.subset(chords.in_band_at(0.5) & (chords.length2 > 0))  # > 0: not coincident ends
    # Test the rest longest first, a band of candidates at a time with ties kept together: the
    # answer is almost always in the first band.
    while len(chords.j):
        top = max(len(chords.j) - 64, 0)
        in_top = chords.length2 >= np.partition(chords.length2, top)[top]
        band = chords.subset(in_top)
        band = band.subset(np.lexsort((band.j, band.i, -band.length2)))
        valid = band.arc_in_band()
        if valid.any():
            first = int(np.argmax(valid))
            return int(band.j[first]), int(band.i[first])
        chords = chords.subset(~in_top)
    raise LVGeometryError("no_basal_chord", "no contour chord satisfies the mitral-plane test")


def _edge_distances(walk, points: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Distance (px) walked from each point along ``normal`` until background or outside the image.

    As in the reference: start 8 px out, 0.5 px steps, the position rounded half-to-even. ``walk``
    is (iso crop, its offset, full iso shape); everything outside the crop is background.
    """
    crop, offset, shape = walk
    corners = offset + np.array([[0, 0], [0, crop.shape[1]], [crop.shape[0], 0], crop.shape], dtype=float)
    reach = np.linalg.norm(points[:, None, :] - corners[None, :, :], axis=-1).max() + 2
    n_steps = max(1, int(np.ceil((reach - EDGE_WALK_START_PX) / EDGE_WALK_STEP_PX)) + 1)
    distances = EDGE_WALK_START_PX + EDGE_WALK_STEP_PX * np.arange(n_steps)
    rc = np.round(points[:, None, :] + distances[None, :, None] * normal).astype(np.int64)
    in_image = (rc[..., 0] >= 0) & (rc[..., 0] < shape[0]) & (rc[..., 1] >= 0) & (rc[..., 1] < shape[1])
    local = rc - offset.astype(np.int64)
    in_crop = ((local[..., 0] >= 0) & (local[..., 0] < crop.shape[0])
               & (local[..., 1] >= 0) & (local[..., 1] < crop.shape[1]))
    local = np.where(in_crop[..., None], local, 0)
    stop = ~in_image | ~(in_crop & crop[local[..., 0], local[..., 1]])
    return distances[np.argmax(stop, axis=1)]


def lv_geometry(mask: np.ndarray, spacing_mm: tuple[float, float],
                pixel_mm: float = REFERENCE_PIXEL_MM) -> LVGeometry:
    """Measure one LV-cavity mask: disc diameters, long axis and area (reference algorithm).

    The mask is cleaned first (largest component, holes filled) and measured on square pixels of
    side ``pixel_mm``; raises LVGeometryError with a status when the mask is empty, tiny or has no
    basal chord.
    """
    mask = np.asarray(mask, dtype=bool)
    box = _bounding_box(mask)
    if box is None:
        raise LVGeometryError("empty_mask", "no LV-cavity pixel")
    # Work on a crop around the cavity: same numbers, far fewer pixels. Its background margin must
    # survive a downsampling to square pixels, or the contour would open at the crop's edge.
    margin = 1 + np.ceil(pixel_mm / np.asarray(spacing_mm, dtype=float)).astype(int)
    r0, r1 = max(box[0] - margin[0], 0), min(box[1] + margin[0], mask.shape[0])
    c0, c1 = max(box[2] - margin[1], 0), min(box[3] + margin[1], mask.shape[1])
    lv, n_components = clean_lv_mask(mask[r0:r1, c0:c1])
    n_pixels = int(lv.sum())
    if n_pixels < MIN_LV_PIXELS:
        raise LVGeometryError("tiny_mask", f"{n_pixels} LV pixels < {MIN_LV_PIXELS}")
    lr0, lr1, lc0, lc1 = _bounding_box(lv)
    # A cavity cut by the image edge has an open contour; the reference measures it all the same
    # (one CAMUS expert mask does), so it is measured and flagged rather than refused.
    touches_border = r0 + lr0 == 0 or c0 + lc0 == 0 or r0 + lr1 == mask.shape[0] or c0 + lc1 == mask.shape[1]
    iso, offset, iso_shape = _square_pixels_crop(lv, (r0, c0), mask.shape, spacing_mm, pixel_mm)
    contours = find_contours(iso.astype(np.uint8), 0.5)
    if not contours:  # the cavity covers the whole image: it has no border to measure
        raise LVGeometryError("no_contour", "the LV cavity fills the image")
    contour = contours[0] + offset
    j, i = basal_chord(contour)
    base = contour[j + round((i - j) / 2)]  # Python's round, as the reference
    lengths = np.sqrt(((contour - base) ** 2).sum(1))
    apex = contour[int(np.argmax(lengths))]
    direction = apex - base
    normal = np.array([-direction[1], direction[0]])
    normal = normal / np.linalg.norm(normal)
    points = base + direction * np.linspace(0, 1, N_DISCS, endpoint=False)[:, None]
    walk = (iso, offset, iso_shape)
    ahead, behind = _edge_distances(walk, points, normal), _edge_distances(walk, points, -normal)
    diameters_px = ahead + behind
    ends = np.stack([points + ahead[:, None] * normal, points - behind[:, None] * normal], axis=1)
    return LVGeometry(
        diameters_mm=diameters_px * pixel_mm,
        long_axis_mm=float(lengths.max() * pixel_mm),
        area_mm2=float(n_pixels * spacing_mm[0] * spacing_mm[1]),
        n_components=n_components,
        touches_border=bool(touches_border),
        base_mm=base * pixel_mm,
        apex_mm=apex * pixel_mm,
        contour_mm=(contour + 0.5) * pixel_mm,  # contour positions are pixel indices; the corner is 0.5 before the first
        mitral_mm=(contour[[j, i]] + 0.5) * pixel_mm,
        axis_mm=(np.stack([base, apex]) + 0.5) * pixel_mm,
        disc_ends_mm=(ends + 0.5) * pixel_mm,
    )


def _discs_volume_ml(a_mm: np.ndarray, b_mm: np.ndarray, height_mm: float) -> float:
    """Volume of stacked elliptic discs, mL rounded to whole mL as the reference does."""
    return float(round(np.sum(a_mm * b_mm) * height_mm * np.pi / 4 / 1000))


def ejection_fraction(edv_ml: float, esv_ml: float) -> float:
    """EF in percent, rounded to an integer like the CAMUS reference; NaN if EDV is not positive."""
    if not edv_ml > 0:
        return float("nan")
    return float(round(100 * (edv_ml - esv_ml) / edv_ml))


def simpson_biplane(g2_ed: LVGeometry, g2_es: LVGeometry, g4_ed: LVGeometry, g4_es: LVGeometry) -> Volumes:
    """Biplane method of discs: one disc height (largest L/20 of the four) shared by ED and ES."""
    h = max(g.long_axis_mm for g in (g2_ed, g2_es, g4_ed, g4_es)) / N_DISCS
    edv = _discs_volume_ml(g2_ed.diameters_mm, g4_ed.diameters_mm, h)
    esv = _discs_volume_ml(g2_es.diameters_mm, g4_es.diameters_mm, h)
    return Volumes(edv, esv, ejection_fraction(edv, esv), "simpson_biplane")


def simpson_single_plane(g_ed: LVGeometry, g_es: LVGeometry, view: str) -> Volumes:
    """Single-plane method of discs (circular discs, a_k = b_k) from one view."""
    h = max(g_ed.long_axis_mm, g_es.long_axis_mm) / N_DISCS
    edv = _discs_volume_ml(g_ed.diameters_mm, g_ed.diameters_mm, h)
    esv = _discs_volume_ml(g_es.diameters_mm, g_es.diameters_mm, h)
    return Volumes(edv, esv, ejection_fraction(edv, esv), f"simpson_single_plane_{view.lower()}")


def _area_length_ml(g2: LVGeometry, g4: LVGeometry) -> float:
    # ASE convention: the shorter of the two long axes.
    length_mm = min(g2.long_axis_mm, g4.long_axis_mm)
    return float(round(8 / (3 * np.pi) * g2.area_mm2 * g4.area_mm2 / length_mm / 1000))


def area_length(g2_ed: LVGeometry, g2_es: LVGeometry, g4_ed: LVGeometry, g4_es: LVGeometry) -> Volumes:
    """Biplane area-length method, V = 8 A2 A4 / (3 pi L), areas and length in mm."""
    edv = _area_length_ml(g2_ed, g4_ed)
    esv = _area_length_ml(g2_es, g4_es)
    return Volumes(edv, esv, ejection_fraction(edv, esv), "area_length")


def volumes(geometries: dict[tuple[str, str], LVGeometry], method: str) -> Volumes:
    """Volumes and EF by ``method`` (one of METHODS) from geometries keyed (view, phase)."""
    if method == "simpson_biplane":
        return simpson_biplane(*(geometries[k] for k in (("2CH", "ED"), ("2CH", "ES"), ("4CH", "ED"), ("4CH", "ES"))))
    if method == "area_length":
        return area_length(*(geometries[k] for k in (("2CH", "ED"), ("2CH", "ES"), ("4CH", "ED"), ("4CH", "ES"))))
    if method in ("simpson_single_plane_2ch", "simpson_single_plane_4ch"):
        view = method[-3:].upper()
        return simpson_single_plane(geometries[(view, "ED")], geometries[(view, "ES")], view)
    raise ValueError(f"unknown EF method {method!r}; allowed: {', '.join(METHODS)}")
