"""Synthetic CAMUS cohort in the 2023 release layout, for the default run and the tests.

Each patient is a truncated prolate ellipsoid LV (varied length, radii, tilt, wall thickness) with a
left atrium below its base, cut by two orthogonal apical planes (2CH, 4CH) at ED and ES, rendered
in an apical sector with speckle and depth attenuation. The reference EF comes from the true 3D
volumes, so the EF pipeline has an independent answer to reach.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

QUALITIES = ("Good", "Medium", "Poor")
NOISE_BY_QUALITY = {"Good": 0.25, "Medium": 0.45, "Poor": 0.7}
# Grids as in the real data: 4CH isotropic, 2CH coarser and anisotropic; (rows, cols), mm.
GRIDS = {"4CH": ((256, 288), (0.58, 0.58)), "2CH": ((176, 176), (0.85, 0.95))}
SECTOR_HALF_ANGLE_DEG = 38
WRITTEN = ("*.nii.gz", "Info_*.cfg")  # all a cohort folder of write_cohort holds


def draw_patient(rng: np.random.Generator) -> dict:
    """Random anatomy of one patient: ED geometry in mm, EF, wall thickness, tilt, quality."""
    length_ed = rng.uniform(65, 90)
    radius_2ch_ed = rng.uniform(19, 27)
    radius_4ch_ed = radius_2ch_ed * rng.uniform(0.85, 1.15)
    ef = rng.uniform(15, 80)
    # ES shortens the long axis a little (a few %, as the disc method with one shared disc height
    # assumes) and the radii more, keeping V_es = V_ed (1 - EF).
    length_scale = (1 - ef / 100) ** 0.05
    radius_scale = np.sqrt((1 - ef / 100) / length_scale)
    return {
        "length_mm": {"ED": length_ed, "ES": length_ed * length_scale},
        "radius_mm": {("2CH", "ED"): radius_2ch_ed, ("4CH", "ED"): radius_4ch_ed,
                      ("2CH", "ES"): radius_2ch_ed * radius_scale, ("4CH", "ES"): radius_4ch_ed * radius_scale},
        "wall_mm": rng.uniform(7, 12),
        "tilt_deg": {"2CH": rng.uniform(-10, 10), "4CH": rng.uniform(-10, 10)},
        "apex_depth_mm": rng.uniform(12, 22),
        "atrium_mm": (rng.uniform(15, 21), rng.uniform(14, 20)),
        "quality": QUALITIES[int(rng.integers(0, 3))],
        "age": int(rng.integers(25, 90)),
        "sex": "MF"[int(rng.integers(0, 2))],
    }


def true_volume_ml(length_mm: float, radius_a_mm: float, radius_b_mm: float) -> float:
    """Volume of a prolate half-ellipsoid (apex to equatorial base plane): 2/3 pi a b L."""
    return 2 / 3 * np.pi * radius_a_mm * radius_b_mm * length_mm / 1000


def reference_ef(anatomy: dict) -> int:
    """EF (%) from the true 3D volumes, rounded like the CAMUS reference."""
    r = anatomy["radius_mm"]
    edv = true_volume_ml(anatomy["length_mm"]["ED"], r[("2CH", "ED")], r[("4CH", "ED")])
    esv = true_volume_ml(anatomy["length_mm"]["ES"], r[("2CH", "ES")], r[("4CH", "ES")])
    return int(round(100 * (edv - esv) / edv))


def render_frame(anatomy: dict, view: str, phase: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Image (uint8), label map and (row, col) spacing of one apical view at one phase."""
    (n_rows, n_cols), (row_mm, col_mm) = GRIDS[view]
    depth = (np.arange(n_rows) + 0.5)[:, None] * row_mm + np.zeros((1, n_cols))
    lateral = ((np.arange(n_cols) + 0.5) - n_cols / 2)[None, :] * col_mm + np.zeros((n_rows, 1))
    # Coordinates along (s) and across (t) the tilted LV long axis, from the apex.
    tilt = np.deg2rad(anatomy["tilt_deg"][view])
    apex = np.array([anatomy["apex_depth_mm"], 0.0])
    s = (depth - apex[0]) * np.cos(tilt) + (lateral - apex[1]) * np.sin(tilt)
    t = -(depth - apex[0]) * np.sin(tilt) + (lateral - apex[1]) * np.cos(tilt)
    length, radius, wall = anatomy["length_mm"][phase], anatomy["radius_mm"][(view, phase)], anatomy["wall_mm"]
    # The ellipsoid's centre is on the base plane (s = length); the cavity is its apical half.
    cavity = ((s - length) / length) ** 2 + (t / radius) ** 2 <= 1
    cavity &= s <= length
    outer = ((s - length) / (length + wall)) ** 2 + (t / (radius + wall)) ** 2 <= 1
    myocardium = outer & ~cavity & (s <= length)
    atrium_r, atrium_l = anatomy["atrium_mm"]
    atrium = ((s - length - atrium_l) / atrium_l) ** 2 + (t / atrium_r) ** 2 <= 1
    atrium &= (s > length + 1.0) & ~myocardium
    atrium_wall = ((s - length - atrium_l) / (atrium_l + 3)) ** 2 + (t / (atrium_r + 3)) ** 2 <= 1
    atrium_wall &= ~atrium & ~outer
    label = np.zeros((n_rows, n_cols), dtype=np.uint8)
    label[myocardium] = 2
    label[atrium] = 3
    label[cavity] = 1
    # Echo appearance: tissue mid-grey, blood dark, myocardium and valve plane bright.
    echogenicity = np.full((n_rows, n_cols), 0.35)
    echogenicity[myocardium] = 0.8
    echogenicity[atrium_wall] = 0.6
    echogenicity[cavity | atrium] = 0.06
    valve = (np.abs(s - length - 0.5) < 1.0) & (np.abs(t) < radius + wall) & ~cavity
    echogenicity[valve] = 0.75
    sector = np.abs(np.arctan2(lateral, depth)) <= np.deg2rad(SECTOR_HALF_ANGLE_DEG)
    speckle = rng.rayleigh(scale=np.sqrt(2 / np.pi), size=(n_rows, n_cols))  # mean 1
    noise = NOISE_BY_QUALITY[anatomy["quality"]]
    attenuation = np.exp(-depth / 180.0)
    image = echogenicity * (1 - noise + noise * speckle) * attenuation + 0.04 * noise * rng.standard_normal((n_rows, n_cols))
    image = np.clip(image, 0, 1) * sector
    return (image * 255).round().astype(np.uint8), label, (row_mm, col_mm)


def _write_image(array: np.ndarray, spacing_mm: tuple[float, float], path: Path) -> None:
    """An image (H, W), or a loop (T, H, W) whose frames lie on the third axis at 1 per unit."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((spacing_mm[1], spacing_mm[0], 1.0)[: array.ndim])  # SimpleITK spacing is (x=col, y=row[, t])
    sitk.WriteImage(image, str(path), useCompression=True)


def write_cohort(root: str | Path, n_patients: int, seed: int) -> list[str]:
    """Write ``n_patients`` synthetic patients under ``root/database_nifti`` (CAMUS 2023 layout)."""
    root = Path(root)
    names = []
    for index in range(n_patients):
        rng = np.random.default_rng([seed, index])
        anatomy = draw_patient(rng)
        name = f"patient{index + 1:04d}"
        folder = root / "database_nifti" / name
        folder.mkdir(parents=True, exist_ok=True)
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                image, label, spacing = render_frame(anatomy, view, phase, rng)
                _write_image(image, spacing, folder / f"{name}_{view}_{phase}.nii.gz")
                _write_image(label, spacing, folder / f"{name}_{view}_{phase}_gt.nii.gz")
        ef = reference_ef(anatomy)
        common = f"Sex: {anatomy['sex']}\nAge: {anatomy['age']}\nImageQuality: {anatomy['quality']}\nEF: {ef}\n"
        (folder / "Info_2CH.cfg").write_text(f"ED: 1\nES: 14\nNbFrame: 20\n{common}FrameRate: 50.0\n")
        (folder / "Info_4CH.cfg").write_text(common)
        names.append(name)
    return names


def anatomy_at(anatomy: dict, weight: float) -> dict:
    """The anatomy between end-systole (``weight`` 0) and end-diastole (1), as its ED entries."""
    def between(ed, es):
        return es + weight * (ed - es)

    length = anatomy["length_mm"]
    radius = anatomy["radius_mm"]
    return {**anatomy, "length_mm": {"ED": between(length["ED"], length["ES"])},
            "radius_mm": {(view, "ED"): between(radius[(view, "ED")], radius[(view, "ES")]) for view in ("2CH", "4CH")}}


def contraction(t: int, ed: int, period: int) -> float:
    """How far frame ``t`` of a loop beating every ``period`` frames from ED at frame ``ed`` is from
    end-systole (0) to end-diastole (1): a cosine, so ES is half a period after each ED."""
    return (1 + np.cos(2 * np.pi * (t - ed) / period)) / 2


def complete_beats(ed: int, period: int, n_frames: int) -> list[tuple[int, int]]:
    """(ED, ES) of every beat of such a loop whose ED and ES both lie in its ``n_frames`` frames."""
    return [(start, start + period // 2) for start in range(ed % period, n_frames, period) if start + period // 2 < n_frames]


def write_loops(root: str | Path, n_patients: int, seed: int, n_frames: int = 20, period: int | None = None) -> dict[str, dict]:
    """Beside each patient of ``write_cohort(root, n_patients, seed)``, one beating cine loop per view
    (``patientXXXX_<view>_sequence.nii.gz``, frames on the third axis): the LV of that patient
    contracting sinusoidally from ED to ES and back every ``period`` frames (default ``n_frames``:
    one beat), from an ED frame drawn per view, so ES is ``period / 2`` later (modulo the loop).
    Returns per patient and view the true ED and ES frame indices, the (ED, ES) of every complete beat
    inside the loop (``beats``: ED then ES, both in it), and the patient's reference EF (that of its ED
    and ES anatomy)."""
    period = period or n_frames
    truth = {}
    for index in range(n_patients):
        anatomy = draw_patient(np.random.default_rng([seed, index]))  # the cohort's patient, drawn again
        rng = np.random.default_rng([seed, index, 1])  # loops draw their own speckle: the cohort's files stay as they are
        name = f"patient{index + 1:04d}"
        folder = Path(root) / "database_nifti" / name
        truth[name] = {"ef": reference_ef(anatomy)}
        for view in ("2CH", "4CH"):
            ed = int(rng.integers(0, n_frames if period == n_frames else period))
            frames = []
            for t in range(n_frames):
                image, _, spacing = render_frame(anatomy_at(anatomy, contraction(t, ed, period)), view, "ED", rng)
                frames.append(image)
            _write_image(np.stack(frames), spacing, folder / f"{name}_{view}_sequence.nii.gz")
            beats = complete_beats(ed, period, n_frames)
            truth[name][view] = {"ed": ed, "es": (ed + period // 2) % n_frames, "beats": beats}
    return truth


ECHONET_SIZE = 112  # EchoNet-Dynamic's videos are 112 x 112 pixels
ECHONET_SPLITS = ("TRAIN", "TRAIN", "TRAIN", "VAL", "TEST")  # by patient number, as the release's thirds are not


def lv_tracing_mm(anatomy: dict, view: str, n_chords: int = 20) -> np.ndarray:
    """The LV of one view of ``anatomy`` (its ED entries) traced as EchoNet-Dynamic's sonographers
    trace it: the long axis from apex to base centre, then ``n_chords`` chords across the cavity at
    evenly spaced heights from base to apex, each as (depth, lateral) mm pairs (n_chords + 1, 2, 2).
    Exact for the half-ellipse the renderer draws, so the tracing has an answer of its own."""
    length, radius = anatomy["length_mm"]["ED"], anatomy["radius_mm"][(view, "ED")]
    tilt = np.deg2rad(anatomy["tilt_deg"][view])
    s = length * (n_chords - np.arange(n_chords) - 0.5) / n_chords  # heights from the apex, base first
    half = radius * np.sqrt(1 - ((s - length) / length) ** 2)
    along = np.concatenate([[0.0, length], np.repeat(s, 2)]).reshape(-1, 2)
    across = np.concatenate([[0.0, 0.0], np.column_stack([-half, half]).ravel()]).reshape(-1, 2)
    depth = anatomy["apex_depth_mm"] + along * np.cos(tilt) - across * np.sin(tilt)
    lateral = along * np.sin(tilt) + across * np.cos(tilt)
    return np.stack([depth, lateral], axis=-1)


def write_echonet(root: str | Path, n_patients: int, seed: int, n_frames: int = 40, period: int = 20, fps: float = 50.0,
                  codec: str = "mjpeg") -> dict[str, dict]:
    """A synthetic cohort in the EchoNet-Dynamic layout under ``root``: per patient one apical
    4-chamber video (``Videos/<FileName>.avi``, 112 x 112 pixels, no pixel size, the sector cut square
    and resized as the release's are) of the LV beating every ``period`` frames from an ED frame drawn
    per patient; ``FileList.csv`` with the reference EF (of the true 3D volumes), volumes, sizes, frame
    rate, frame count and split; ``VolumeTracings.csv`` with the LV traced (long axis and 20 chords)
    on the ED and ES frames of the first complete beat. Returns per FileName the reference EF, the
    traced ED and ES frames, every complete beat, and the pixel size (mm) the video does not state."""
    from .video import write_video  # PyAV only where a video is written

    root = Path(root)
    (root / "Videos").mkdir(parents=True, exist_ok=True)
    (n_rows, n_cols), (row_mm, col_mm) = GRIDS["4CH"]
    side = min(n_rows, n_cols)
    first_col = (n_cols - side) // 2
    scale = ECHONET_SIZE / side
    listing, tracings, truth = [], [], {}
    for index in range(n_patients):
        anatomy = draw_patient(np.random.default_rng([seed, index]))
        rng = np.random.default_rng([seed, index, 2])
        name = f"0X{seed:04X}{index:012X}"
        ed = int(rng.integers(0, period))
        if ed + period // 2 >= n_frames:
            ed = 0  # the loop holds the traced beat whole
        frames = []
        for t in range(n_frames):
            image, _, _ = render_frame(anatomy_at(anatomy, contraction(t, ed, period)), "4CH", "ED", rng)
            frames.append(ndimage.zoom(image[:side, first_col:first_col + side].astype(float), scale, order=1))
        write_video(root / "Videos" / f"{name}.avi", np.clip(np.stack(frames), 0, 255).round(), fps=fps, codec=codec)
        beats = complete_beats(ed, period, n_frames)
        es = ed + period // 2
        for frame, weight in ((ed, 1.0), (es, 0.0)):
            lines = lv_tracing_mm(anatomy_at(anatomy, weight), "4CH")
            rows = (lines[..., 0] / row_mm - 0.5 + 0.5) * scale - 0.5  # native pixel centres, then the resized grid's
            cols = (lines[..., 1] / col_mm + n_cols / 2 - 0.5 - first_col + 0.5) * scale - 0.5
            tracings += [{"FileName": f"{name}.avi", "X1": c[0], "Y1": r[0], "X2": c[1], "Y2": r[1], "Frame": frame}
                         for r, c in zip(rows, cols)]
        r = anatomy["radius_mm"]
        edv = true_volume_ml(anatomy["length_mm"]["ED"], r[("2CH", "ED")], r[("4CH", "ED")])
        esv = true_volume_ml(anatomy["length_mm"]["ES"], r[("2CH", "ES")], r[("4CH", "ES")])
        listing.append({"FileName": name, "EF": reference_ef(anatomy), "ESV": round(esv, 2), "EDV": round(edv, 2),
                        "FrameHeight": ECHONET_SIZE, "FrameWidth": ECHONET_SIZE, "FPS": fps, "NumberOfFrames": n_frames,
                        "Split": ECHONET_SPLITS[index % len(ECHONET_SPLITS)]})
        truth[name] = {"ef": reference_ef(anatomy), "ed": ed, "es": es, "beats": beats,
                       "spacing_mm": (row_mm / scale, col_mm / scale)}
    pd.DataFrame(listing).to_csv(root / "FileList.csv", index=False)
    pd.DataFrame(tracings).to_csv(root / "VolumeTracings.csv", index=False, float_format="%.3f")
    return truth
