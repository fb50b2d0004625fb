"""The ways into `predict` beyond CAMUS files: DICOM (single and multi-frame, pixel size from the
ultrasound region or PixelSpacing, colour, grouping by study, views from names or a table) and cine
loops with ED and ES found by LV area."""

import math
import re

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import given, settings, strategies as st

from echoef.app import cine
from echoef.errors import StudyError
from echoef.io import camus, imagefile, phantom

from conftest import CAMUS, echoef_in_process, needs_shared, write_dicom


def predict(trained, *args):
    return echoef_in_process("predict", *args, "--model", trained / "segmenter.pt", "--calibrator", trained / "calibrator.json")


def as_dicom_folder(folder, out, region=True, rgb=False):
    """The four frames of a CAMUS patient folder as single-frame DICOM files named by view and phase."""
    for view, phase in camus.FRAME_KEYS:
        image, spacing_mm, _ = imagefile.read_image(camus.frame_path(folder, view, phase, camus.detect_layout(folder)))
        write_dicom(out / f"{folder.name}_{view}_{phase}.dcm", image, region_spacing_mm=spacing_mm if region else None,
                    patient=folder.name, rgb=rgb)
    return out


def labels_of(out, patient):
    return {key: camus.read_label(next((out / patient).glob(f"*_{key[0]}_{key[1]}_gt.*")))[0] for key in camus.FRAME_KEYS}


@pytest.mark.parametrize("rgb", [False, True])
def test_dicom_frames_give_the_masks_and_ef_of_the_nifti_ones(trained, phantom_root, tmp_path, rgb):
    folder = camus.find_patients(phantom_root)[10]
    as_dicom_folder(folder, tmp_path / "dicom", rgb=rgb)
    assert predict(trained, folder, "--out", tmp_path / "nifti").returncode == 0
    result = predict(trained, "--dicom", tmp_path / "dicom", "--out", tmp_path / "from_dicom")
    assert result.returncode == 0, result.stderr
    nifti, dicom = (pd.read_csv(tmp_path / name / "summary.csv").iloc[0] for name in ("nifti", "from_dicom"))
    assert dicom["patient"].startswith(folder.name) and dicom["status"] == nifti["status"] == "ok"
    assert dicom["ef"] == nifti["ef"] and dicom["edv_ml"] == nifti["edv_ml"]
    a, b = labels_of(tmp_path / "nifti", folder.name), labels_of(tmp_path / "from_dicom", dicom["patient"])
    assert all(np.array_equal(a[key], b[key]) for key in camus.FRAME_KEYS)


@needs_shared
def test_a_real_patient_as_dicom_gives_the_same_ef(trained, tmp_path):
    folder = CAMUS / "database_nifti" / "patient0002"  # anisotropic 2CH grid, 0.308 mm 4CH
    as_dicom_folder(folder, tmp_path / "dicom")
    nifti = predict(trained, folder, "--out", tmp_path / "nifti")
    dicom = predict(trained, "--dicom", tmp_path / "dicom", "--out", tmp_path / "from_dicom")
    rows = [pd.read_csv(tmp_path / name / "summary.csv").iloc[0] for name in ("nifti", "from_dicom")]
    assert nifti.returncode == dicom.returncode and rows[0]["status"] == rows[1]["status"]
    assert rows[0]["edv_ml"] == rows[1]["edv_ml"] and rows[0]["esv_ml"] == rows[1]["esv_ml"]
    assert math.isclose(rows[0]["ef"], rows[1]["ef"], abs_tol=0.5) or (math.isnan(rows[0]["ef"]) and math.isnan(rows[1]["ef"]))


def test_pixel_size_only_from_the_file_or_the_user(trained, phantom_root, tmp_path):
    folder = camus.find_patients(phantom_root)[10]
    as_dicom_folder(folder, tmp_path / "dicom", region=False)
    result = predict(trained, "--dicom", tmp_path / "dicom", "--out", tmp_path / "none")
    row = pd.read_csv(tmp_path / "none" / "summary.csv").iloc[0]
    assert result.returncode == 1 and row["status"] == "no_spacing" and "give --spacing-mm" in row["detail"]
    frame = imagefile.read_image(folder / f"{folder.name}_2CH_ED.nii.gz")[0]
    write_dicom(tmp_path / "ps.dcm", frame, pixel_spacing_mm=(0.85, 0.95))
    write_dicom(tmp_path / "both.dcm", frame, region_spacing_mm=(0.5, 0.6), pixel_spacing_mm=(0.85, 0.95))
    assert imagefile.read_loop(tmp_path / "ps.dcm").spacing_mm == pytest.approx((0.85, 0.95))
    assert imagefile.read_loop(tmp_path / "both.dcm").spacing_mm == pytest.approx((0.5, 0.6))  # the region wins


SIZES_MM = [(0.3, 0.3), (0.15, 0.15), (0.3, 0.2)]


def _regions_by_pixel(regions, rows, cols):
    """The slow reference for what a file's regions make of its picture: each pixel's set of stated
    sizes, the size that most pixels have alone (the first listed of equals), and whether each pixel
    has that size and no other (None where no pixel has one size alone)."""
    stated = [[{size for x0, y0, x1, y1, size in regions if y0 <= row <= y1 and x0 <= col <= x1} for col in range(cols)]
              for row in range(rows)]
    order = list(dict.fromkeys(size for *_, size in regions))
    alone = {size: sum(pixel == {size} for line in stated for pixel in line) for size in order}
    chosen = max(order, key=lambda size: (alone[size], -order.index(size)))
    return chosen, (np.array([[pixel == {chosen} for pixel in line] for line in stated]) if alone[chosen] else None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 45), st.integers(0, 35), st.integers(1, 30), st.integers(1, 25),
                          st.sampled_from(SIZES_MM)), min_size=1, max_size=4))
def test_only_pixels_of_the_pixel_size_measured_are_kept(tmp_path_factory, boxes):
    """Regions at different pixel sizes (a zoomed picture beside or inside the whole): the size that
    most pixels have alone is measured, on those pixels only, the rest of its box black, and a file
    where no pixel has one size alone is refused; compared pixel by pixel with a slow reference over
    the regions clipped to the 30 x 40 picture (a region wholly outside it holds none of its pixels)."""
    rows, cols = 30, 40
    regions = [(x0, y0, x0 + width, y0 + height, size) for x0, y0, width, height, size in boxes]
    clipped = [(max(x0, 0), max(y0, 0), min(x1, cols - 1), min(y1, rows - 1), size) for x0, y0, x1, y1, size in regions]
    inside = [region for region in clipped if region[2] - region[0] >= 1 and region[3] - region[1] >= 1]
    frame = np.arange(1, rows * cols + 1).reshape(rows, cols) % 250 + 1  # no black pixel of its own
    path = write_dicom(tmp_path_factory.mktemp("regions") / "a.dcm", frame, regions=regions)
    if not inside:
        with pytest.raises(StudyError) as refused:
            imagefile.read_loop(path)
        assert refused.value.reason == "no_spacing"
        return
    chosen, kept = _regions_by_pixel(inside, rows, cols)
    if kept is None:
        with pytest.raises(StudyError) as refused:
            imagefile.read_loop(path)
        assert refused.value.reason == "bad_spacing" and "for the same pixels" in refused.value.detail
        return
    loop = imagefile.read_loop(path)
    assert loop.spacing_mm == pytest.approx(chosen)
    lines, columns = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    box = (slice(lines[0], lines[-1] + 1), slice(columns[0], columns[-1] + 1))
    assert np.array_equal(loop.frames[0], np.where(kept, frame, 0)[box])
    assert loop.header.corner_mm(loop.frames[0].shape) == pytest.approx([columns[0] * chosen[1], lines[0] * chosen[0]])


def test_a_heart_is_measured_only_at_the_pixel_size_of_its_own_region(trained, phantom_root, tmp_path):
    """Each frame of a phantom patient in a wider picture, with a zoomed region of another pixel size
    beside it. The heart's region covers most pixels: the study is measured as the NIfTI frames are,
    the zoomed strip cut away (seen whole, it made the network's LV touch the border). Inside a larger
    region at twice its size the heart's pixels have two sizes: they are black and the study measures
    nothing (at the larger region's size every volume would be eight times too large)."""
    folder = camus.find_patients(phantom_root)[10]
    for view, phase in camus.FRAME_KEYS:
        image, spacing_mm, _ = imagefile.read_image(camus.frame_path(folder, view, phase, camus.detect_layout(folder)))
        rows, cols = image.shape
        canvas = np.zeros((rows, cols + 24), dtype=np.uint8)
        canvas[:, :cols], canvas[: rows // 2, cols + 4:] = np.clip(image, 0, 255), 200  # the zoomed strip is bright
        heart = (0, 0, cols - 1, rows - 1, spacing_mm)
        zoom = (cols + 4, 0, cols + 23, rows // 2 - 1, (spacing_mm[0] / 2, spacing_mm[1] / 2))
        write_dicom(tmp_path / "beside" / f"{folder.name}_{view}_{phase}.dcm", canvas, regions=[heart, zoom], patient=folder.name)
        whole = (0, 0, cols + 23, rows - 1, (spacing_mm[0] * 2, spacing_mm[1] * 2))
        write_dicom(tmp_path / "inside" / f"{folder.name}_{view}_{phase}.dcm", canvas, regions=[whole, heart], patient=folder.name)
    assert predict(trained, folder, "--out", tmp_path / "nifti").returncode == 0
    assert predict(trained, "--dicom", tmp_path / "beside", "--out", tmp_path / "from_beside").returncode == 0
    inside = predict(trained, "--dicom", tmp_path / "inside", "--out", tmp_path / "from_inside")
    nifti, beside, blacked = (pd.read_csv(tmp_path / name / "summary.csv").iloc[0] for name in ("nifti", "from_beside", "from_inside"))
    assert nifti["status"] == beside["status"] == "ok"
    assert (beside["ef"], beside["edv_ml"], beside["esv_ml"]) == (nifti["ef"], nifti["edv_ml"], nifti["esv_ml"])
    assert inside.returncode == 1 and not blacked["status"].startswith("ok") and math.isnan(blacked["edv_ml"])


def _with_functional_groups(path, shared=None, per_frame=()):
    """The DICOM at ``path`` rewritten with its pixel size only in enhanced multi-frame functional
    groups: Pixel Measures of the shared group (``shared``) and/or of each frame (``per_frame``)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def group(spacing):
        measures, holder = Dataset(), Dataset()
        if spacing is not None:
            measures.PixelSpacing = list(spacing)
        holder.PixelMeasuresSequence = Sequence([measures])
        return holder

    dataset = pydicom.dcmread(path)
    if shared is not None:
        dataset.SharedFunctionalGroupsSequence = Sequence([group(shared)])
    if per_frame:
        dataset.PerFrameFunctionalGroupsSequence = Sequence([group(spacing) for spacing in per_frame])
    dataset.save_as(path)
    return path


@pytest.mark.parametrize("shared, per_frame, expected", [
    ((0.42, 0.37), (), (0.42, 0.37)),  # the shared group states it
    (None, [(0.3, 0.35)] * 3, (0.3, 0.35)),  # every frame states the same
    ((0.42, 0.37), [(0.3, 0.35)] * 3, (0.42, 0.37)),  # the shared group wins, as the standard has it
    (None, [(0.3, 0.35), (0.3, 0.35), (0.31, 0.35)], None),  # frames measured differently: no one pixel size
    (None, [(0.3, 0.35), None, (0.3, 0.35)], None),  # one frame states none
    ((9.87654, 0.3), (), None), ((-0.3, 0.3), (), None), ((0.3, float("nan")), (), None),  # crafted values count as none
])
def test_an_enhanced_multiframe_file_states_its_pixel_size_in_functional_groups(tmp_path, shared, per_frame, expected):
    path = write_dicom(tmp_path / "a4c.dcm", np.zeros((3, 40, 30)), frame_ms=20)
    _with_functional_groups(path, shared, per_frame)
    data = path.read_bytes()
    if b"9.87654" in data:  # a value no DS can hold, put in the file as a crafted one would be
        path.write_bytes(data.replace(b"9.87654", b"abcdefg"))
    if expected is None:
        with pytest.raises(StudyError, match="no_spacing"):
            imagefile.read_loop(path)
    else:
        assert imagefile.read_loop(path).spacing_mm == pytest.approx(expected)


@pytest.mark.parametrize("stated_ms, expected", [(20, 20.0), (0.1, 0.1), (1000, 1000.0), (0.05, None), (1e-6, None),
                                                  (1000.5, None), (1e9, None), (-20, None), (0, None)])
def test_a_loops_frame_time_counts_only_where_it_is_plausible(tmp_path, stated_ms, expected):
    """A stated time between frames far outside what echo loops use (a wrong unit, a crafted tag) counts
    as none stated, whichever format states it: a DICOM FrameTime, a NIfTI loop's pixdim[4] in ms."""
    import nibabel

    pixels = np.random.default_rng(0).integers(0, 255, (3, 40, 30)).astype(np.uint8)
    dicom_path = write_dicom(tmp_path / "a4c.dcm", pixels, region_spacing_mm=(0.3, 0.3), frame_ms=stated_ms)
    nifti = nibabel.Nifti1Image(pixels.transpose(2, 1, 0)[:, :, None, :], np.diag([0.3, 0.3, 1.0, 1.0]))
    nifti.header.set_xyzt_units("mm", "msec")
    nifti.header["pixdim"][4] = stated_ms
    nibabel.save(nifti, tmp_path / "a4c.nii.gz")
    for path in (dicom_path, tmp_path / "a4c.nii.gz"):
        loop = imagefile.read_loop(path)
        assert loop.frames.shape == (3, 40, 30)
        assert loop.frame_ms == (pytest.approx(expected) if expected else None), path.name


@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30), st.text(max_size=8)))
def test_a_stated_frame_time_is_plausible_or_none(value):
    stated = imagefile.stated_frame_ms(value)
    assert stated is None or (imagefile.FRAME_MS_RANGE[0] <= stated <= imagefile.FRAME_MS_RANGE[1] and stated == float(value))


def _as_palette_colour(path, table_rgb: np.ndarray | None):
    """The file's 8-bit values as indices into a 256-entry palette colour table ``table_rgb`` (256, 3),
    16 bits per entry as scanners write it; None: a palette-colour file that lacks its table."""
    dataset = pydicom.dcmread(path)
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    if table_rgb is not None:
        for colour, column in zip(("Red", "Green", "Blue"), table_rgb.T):
            setattr(dataset, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            dataset[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"  # the standard's "US or SS", made definite
            setattr(dataset, f"{colour}PaletteColorLookupTableData", (column.astype(np.uint16) * 257).tobytes())
    dataset.save_as(path, enforce_file_format=False)
    return path


def test_a_palette_colour_file_is_read_through_its_colour_table(tmp_path):
    """Palette colour stores indices into the file's own table: the grey a viewer shows is the table's
    colour, not the index. An inverted grey table gives 255 - index (scaled to 16 bits), a red-only
    one the luminance of its red; a file without its table is refused, not read as indices."""
    indices = np.random.default_rng(0).integers(0, 256, (2, 20, 16))
    ramp = np.arange(256)
    inverted = _as_palette_colour(write_dicom(tmp_path / "a.dcm", indices, region_spacing_mm=(0.3, 0.3)),
                                  np.stack([255 - ramp] * 3, axis=1))
    assert imagefile.read_loop(inverted).frames == pytest.approx((255 - indices) * 257.0, rel=1e-5)
    red = _as_palette_colour(write_dicom(tmp_path / "b.dcm", indices, region_spacing_mm=(0.3, 0.3)),
                             np.stack([ramp, 0 * ramp, 0 * ramp], axis=1))
    assert imagefile.read_loop(red).frames == pytest.approx(0.299 * indices * 257.0, rel=1e-3)
    with pytest.raises(StudyError, match="unreadable_file.*Palette"):
        imagefile.read_loop(_as_palette_colour(write_dicom(tmp_path / "c.dcm", indices, region_spacing_mm=(0.3, 0.3)), None))


def test_views_from_names_or_a_table_and_studies_by_uid(trained, phantom_root, tmp_path):
    folders = camus.find_patients(phantom_root)[10:12]
    for index, folder in enumerate(folders):
        as_dicom_folder(folder, tmp_path / "dicom" / f"series{index}")
    anonymous = tmp_path / "dicom" / "series0" / f"{folders[0].name}_4CH_ED.dcm"
    anonymous.rename(anonymous.with_name("IM_0007_ED.dcm"))
    result = predict(trained, "--dicom", tmp_path / "dicom", "--out", tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("patient")
    assert len(table) == 2  # one study per patient and study UID
    first = table.loc[[p for p in table.index if p.startswith(folders[0].name)][0]]
    assert first["status"] == "ok_single_plane" and "IM_0007_ED.dcm: view unknown" in first["detail"]
    (tmp_path / "views.csv").write_text("file,view\nIM_0007_ED.dcm,4CH\n")
    predict(trained, "--dicom", tmp_path / "dicom", "--views", tmp_path / "views.csv", "--out", tmp_path / "mapped")
    assert (pd.read_csv(tmp_path / "mapped" / "summary.csv")["status"] == "ok").all() and result.returncode == 0


@pytest.mark.parametrize("ed,period,frames", [(5, 20, 20), (0, 20, 11), (10, 20, 11), (3, 14, 40), (19, 20, 20)])
def test_end_diastole_and_systole_of_an_area_curve(ed, period, frames):
    # A beating area curve with ED at `ed`, ES half a period later (or before, when the loop stops
    # first), with noise: ED is the largest area, ES the smallest of that cycle.
    t = np.arange(frames)
    areas = 1500 + 700 * (1 + np.cos(2 * np.pi * (t - ed) / period)) / 2 + np.random.default_rng(ed).normal(0, 15, frames)
    found_ed, found_es = cine.end_diastole_systole(areas)
    shift = (found_ed - ed) % period
    assert min(shift, period - shift) <= 1  # an ED of one of the loop's cycles
    expected_es = found_ed + period // 2 if found_ed + period // 2 < frames else found_ed - period // 2
    assert abs(found_es - expected_es) <= 1


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
    """The conftest cohort again (same seed: the same patients), each beating in a loop per view."""
    root = tmp_path_factory.mktemp("loops")
    phantom.write_cohort(root, 12, seed=3)
    return root, phantom.write_loops(root, 12, seed=3)


def test_a_cine_loop_is_read_at_its_ed_and_es(trained, loops, tmp_path):
    root, truths = loops
    folder = camus.find_patients(root)[11]  # not one the model was trained on
    truth = truths[folder.name]
    args = [f"--{v.lower()}" if i == 0 else folder / f"{folder.name}_{v}_sequence.nii.gz" for v in camus.VIEWS for i in (0, 1)]
    result = predict(trained, *args, "--patient", "loop", "--out", tmp_path / "cine")
    assert result.returncode == 0, result.stderr
    row = pd.read_csv(tmp_path / "cine" / "summary.csv").iloc[0]
    chosen = {v: (int(ed), int(es)) for v, ed, es in re.findall(r"(\w+) ED (\d+) ES (\d+) of 20", row["cine"])}
    for view in camus.VIEWS:
        ed, es = chosen[view]
        n = 20
        assert min(abs(ed - truth[view]["ed"]), n - abs(ed - truth[view]["ed"])) <= 1, (view, chosen, truth)
        assert min(abs(es - truth[view]["es"]), n - abs(es - truth[view]["es"])) <= 1, (view, chosen, truth)
    assert (tmp_path / "cine" / "loop" / "loop_lv_area.png").stat().st_size > 5000
    # How close EF comes to the truth is the model's affair (benchmarks/cine_check.py measures the
    # default pipeline model); here: the frames chosen give the EF the true frames give.
    # The true frames given by hand: the EF the model gives for the true ED and ES.
    given = [a for v in camus.VIEWS for a in ("--phase-frames", f"{v}:{truth[v]['ed']}:{truth[v]['es']}")]
    predict(trained, *args, *given, "--patient", "loop", "--out", tmp_path / "given")
    exact = pd.read_csv(tmp_path / "given" / "summary.csv").iloc[0]
    assert exact["cine"] == "; ".join(f"{v} ED {truth[v]['ed']} ES {truth[v]['es']} of 20" for v in camus.VIEWS)
    assert abs(row["ef"] - exact["ef"]) <= 3


def test_a_dropped_frame_in_a_loop_is_flagged_and_not_taken_for_ed_or_es(trained, loops, tmp_path):
    """A loop with one black frame (a frame dropped in an export): the LV area curve falls to nothing
    there, the frame choice passes over it, and review names it."""
    root, truths = loops
    folder = camus.find_patients(root)[11]
    truth = truths[folder.name]["4CH"]
    loop = imagefile.read_loop(folder / f"{folder.name}_4CH_sequence.nii.gz")
    dropped = (truth["ed"] + 5) % len(loop.frames)
    dropped = dropped if 0 < dropped < len(loop.frames) - 1 else 5
    frames = loop.frames.copy()
    frames[dropped] = 0
    write_dicom(tmp_path / "dicom" / "a4c.dcm", frames, region_spacing_mm=loop.spacing_mm, frame_ms=20)
    assert predict(trained, "--dicom", tmp_path / "dicom", "--out", tmp_path / "out").returncode == 0
    row = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    ed, es = (int(v) for v in re.fullmatch(r"4CH ED (\d+) ES (\d+) of 20", row["cine"]).groups())
    assert min(abs(ed - truth["ed"]), 20 - abs(ed - truth["ed"])) <= 1 and min(abs(es - truth["es"]), 20 - abs(es - truth["es"])) <= 1
    assert "area_outliers:4CH_1_frames" in row["review"], row["review"]


def test_a_multiframe_dicom_is_the_same_loop(trained, loops, tmp_path):
    folder = camus.find_patients(loops[0])[11]
    for view in camus.VIEWS:
        loop = imagefile.read_loop(folder / f"{folder.name}_{view}_sequence.nii.gz")
        write_dicom(tmp_path / "dicom" / f"{folder.name}_{view}.dcm", loop.frames, region_spacing_mm=loop.spacing_mm, frame_ms=20)
        assert imagefile.read_loop(tmp_path / "dicom" / f"{folder.name}_{view}.dcm").frame_ms == 20
    args = [f"--{v.lower()}" if i == 0 else folder / f"{folder.name}_{v}_sequence.nii.gz" for v in camus.VIEWS for i in (0, 1)]
    predict(trained, *args, "--patient", "loop", "--out", tmp_path / "nifti")
    predict(trained, "--dicom", tmp_path / "dicom", "--out", tmp_path / "dicom_out")
    a, b = (pd.read_csv(tmp_path / name / "summary.csv").iloc[0] for name in ("nifti", "dicom_out"))
    assert a["cine"] == b["cine"] and a["ef"] == b["ef"]
    assert sitk.ReadImage(str(next((tmp_path / "dicom_out").glob("*/*_2CH_ED_gt.nii.gz")))).GetSpacing()[:2] == \
        pytest.approx(imagefile.read_loop(tmp_path / "dicom" / f"{folder.name}_2CH.dcm").header.spacing[:2])


@pytest.mark.parametrize("period,frames,start", [(16, 50, 3), (12, 40, 0), (20, 45, 9), (9, 40, 5)])
def test_every_complete_beat_of_an_area_curve_is_found(period, frames, start):
    """Several beats of known timing, with noise: every ED peak and ES trough inside the loop within one
    frame, and no beat cut off by the loop's ends."""
    t = np.arange(frames)
    areas = 1000 + 300 * np.cos(2 * np.pi * (t - start) / period) + np.random.default_rng(period).normal(0, 8, frames)
    truth = [(ed, ed + period // 2) for ed in range(start % period, frames, period) if ed + period // 2 < frames - 1]
    found = cine.beats(areas)
    assert len(found) == len(truth), (found, truth)
    assert all(abs(f_ed - ed) <= 1 and abs(f_es - es) <= 1 for (f_ed, f_es), (ed, es) in zip(found, truth)), (found, truth)


@pytest.mark.parametrize("period,frames", [(16, 50), (12, 40), (20, 45), (30, 70)])
@pytest.mark.parametrize("seed", range(3))
def test_a_loop_that_starts_at_end_diastole_counts_its_first_beat_and_one_that_starts_in_systole_does_not(period, frames, seed):
    """Frame 0 is an ED only when the loop starts at one (an R-wave-triggered recording): started a
    quarter period into systole or in diastole, the first, cut beat is left out, as before."""
    t = np.arange(frames)
    noise = np.random.default_rng(seed).normal(0, 8, frames)

    def curve(ed):
        return 1000 + 300 * np.cos(2 * np.pi * (t - ed) / period) + noise

    at_ed = cine.beats(curve(0))
    assert at_ed[0][0] == 0 and abs(at_ed[0][1] - period // 2) <= 1, at_ed
    assert len(at_ed) == len([ed for ed in range(0, frames, period) if ed + period // 2 < frames - 1])
    for ed in (-(period // 4), period // 4):  # frame 0 a quarter period into systole, or before an ED in diastole
        found = cine.beats(curve(ed))
        assert found and found[0][0] > 0 and abs(found[0][0] - ed % period) <= 1, (ed, found)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_one_frame_whose_segmentation_collapsed_or_leaked_moves_neither_ed_nor_es(data):
    """On another site's loop the likeliest failure is one frame segmented badly (its LV area a
    fraction or a multiple of the truth). Property: with one such frame anywhere but the loop's two
    ends, ED and ES are still found within a frame, or ED at frame 0 where the loop starts within a
    tenth of the range below the top. A 3-frame mean alone was fooled in about a third of such
    loops. (At an end, judged by the continuation of its neighbours, it fools the choice in about
    0.2% of such loops: `benchmarks/cine_outliers.py` measures it with the rest.)"""
    period = data.draw(st.integers(12, 40), "period")
    frames = data.draw(st.integers(int(1.2 * period), int(3.5 * period)), "frames")
    ed = data.draw(st.integers(0, period - 1), "ed")
    outlier = data.draw(st.integers(1, frames - 2), "outlier frame")
    factor = data.draw(st.one_of(st.floats(0.1, 0.6), st.floats(1.4, 2.5)), "its area, times the truth")
    truth = 1500 + 700 * (1 + np.cos(2 * np.pi * (np.arange(frames) - ed) / period)) / 2
    areas = truth.copy()
    areas[outlier] *= factor
    found_ed, found_es = cine.end_diastole_systole(areas)

    def frames_off(a, b):
        return min((a - b) % period, (b - a) % period)

    assert frames_off(found_ed, ed) <= 1 or (found_ed == 0 and truth[0] >= truth.max() - 70), (found_ed, found_es)
    assert frames_off(found_es, ed + period // 2) <= 1, (found_ed, found_es)


def test_frames_read_unlike_their_neighbours_are_named_and_flagged():
    """outlier_frames names a frame whose area stands apart from its neighbours', never one of a
    loop's ordinary jitter (a few per cent, even in a ventricle that hardly contracts), and review
    says so, with beats whose EFs spread."""
    from echoef.measure import review

    rng = np.random.default_rng(0)
    t = np.arange(60)
    beating = 1500 + 700 * (1 + np.cos(2 * np.pi * t / 20)) / 2 + rng.normal(0, 15, 60)
    akinetic = 1500 + 120 * (1 + np.cos(2 * np.pi * t / 20)) / 2 + rng.normal(0, 30, 60)  # EF about 10%
    assert cine.outlier_frames(beating) == [] and cine.outlier_frames(akinetic) == []
    broken = beating.copy()
    broken[[0, 13, 37]] *= [0.3, 0.3, 1.7]  # an end frame is judged by the continuation of its neighbours
    assert cine.outlier_frames(broken) == [0, 13, 37]
    assert cine.end_diastole_systole(broken) == cine.end_diastole_systole(beating)
    assert cine.outlier_frames(np.where(t == 5, np.nan, beating)) == []
    assert review.loop_reasons({"2CH": [13, 37], "4CH": []}, {"2CH": [55.0, 57.0], "4CH": [40.0, 62.0, 51.0]}) == [
        "area_outliers:2CH_2_frames", "beats_disagree:4CH_11_points"]
    assert review.loop_reasons({"4CH": []}, {"4CH": [55.0, 60.0, float("nan")]}) == []


def test_a_loop_of_one_beat_or_less_has_no_beat_list():
    t = np.arange(20)
    assert cine.beats(1000 + 300 * np.cos(2 * np.pi * t / 20)) == []
    assert cine.beats(np.full(30, 500.0)) == []


def test_every_beat_of_a_multi_beat_phantom_loop(trained, tmp_path):
    """The phantom beating three times in 48 frames: predict finds each complete beat's ED and ES within
    one frame, gives each beat's EF and their mean and spread."""
    root = tmp_path / "beats"
    phantom.write_cohort(root, 12, seed=3)
    truths = phantom.write_loops(root, 12, seed=3, n_frames=48, period=16)
    folder = camus.find_patients(root)[11]
    truth = truths[folder.name]["4CH"]["beats"]
    result = predict(trained, "--4ch", folder / f"{folder.name}_4CH_sequence.nii.gz", "--patient", "beats", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    row = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    found = [(int(ed), int(es)) for ed, es in re.findall(r"ED (\d+) ES (\d+) EF", row["beats"])]
    complete = truth
    assert len(found) == len(complete) >= 2, (found, truth)
    assert all(abs(f_ed - ed) <= 1 and abs(f_es - es) <= 1 for (f_ed, f_es), (ed, es) in zip(found, complete)), (found, truth)
    efs = [float(v) for v in re.findall(r"EF (-?[\d.]+)", row["beats"])]
    assert row["n_beats"] == len(efs) and row["ef_beat_mean"] == pytest.approx(np.mean(efs), abs=0.06)
    assert row["ef_beat_sd"] == pytest.approx(np.std(efs, ddof=1), abs=0.06)


def test_a_still_picture_stored_as_a_loop_is_flagged_and_a_beating_one_is_not(trained, tmp_path):
    """A loop of 3.8 s (48 frames of 80 ms) that is one picture repeated with speckle-like noise holds no
    heart cycle: predict still picks an ED and an ES, and review says `no_beat` and, from its pictures,
    `still_loop`. The same phantom beating three times in the same 3.8 s is flagged neither; the still
    loop without a stated frame time (its length in seconds unknown), or of 12 frames, or repeated
    without noise, is still a still loop."""
    from echoef.measure import review

    root = tmp_path / "beats"
    phantom.write_cohort(root, 12, seed=3)
    phantom.write_loops(root, 12, seed=3, n_frames=48, period=16)
    folder = camus.find_patients(root)[11]
    loop = imagefile.read_loop(folder / f"{folder.name}_4CH_sequence.nii.gz")
    noise = np.random.default_rng(0).normal(0, 8, loop.frames.shape)
    still = np.clip(np.repeat(loop.frames[:1], len(loop.frames), axis=0) + noise, 0, 255)
    repeated = np.repeat(loop.frames[:1], 12, axis=0)
    names = ("beating", "still", "still_untimed", "still_short", "repeated")
    for name, frames, frame_ms in (("beating", loop.frames, 80), ("still", still, 80), ("still_untimed", still, None),
                                   ("still_short", still[:12], 80), ("repeated", repeated, None)):
        write_dicom(tmp_path / name / "a4c.dcm", frames, region_spacing_mm=loop.spacing_mm, frame_ms=frame_ms)
        # 1 where the study is not measured: the still loop's ESV may come out at its EDV, and still be flagged
        assert predict(trained, "--dicom", tmp_path / name, "--out", tmp_path / f"{name}_out").returncode in {0, 1}
    rows = {name: pd.read_csv(tmp_path / f"{name}_out" / "summary.csv", keep_default_na=False).iloc[0]
            for name in names}
    beating = rows["beating"]
    assert beating["status"] == "ok_single_plane" and beating["n_beats"] >= 2 and "no_beat" not in beating["review"], beating["review"]
    assert "still_loop" not in beating["review"]
    assert rows["still"]["n_beats"] == 0 and "no_beat:4CH_3.8_s" in rows["still"]["review"].split("; "), rows["still"]["review"]
    assert "no_beat" not in rows["still_untimed"]["review"] and rows["still_untimed"]["cine"] == rows["still"]["cine"]
    for name in names[1:]:
        assert re.search(r"(^|; )still_loop:4CH_\d\.\d_percent(;|$)", rows[name]["review"]), (name, rows[name]["review"])
    assert "still_loop:4CH_0.0_percent" in rows["repeated"]["review"]
    # The threshold itself: a beatless loop just under 3 s, of an unknown or an impossible length, is not flagged.
    assert review.loop_reasons({}, {}, {"2CH": 2999.0, "4CH": None}) == []
    assert review.loop_reasons({}, {}, {"2CH": math.nan, "4CH": 3000.0}) == ["no_beat:4CH_3.0_s"]
    assert review.loop_reasons({}, {}, {}, {"2CH": 9.96, "4CH": 10.0}) == ["still_loop:2CH_10.0_percent"]


def test_picture_change_is_the_largest_range_of_a_block_mean_in_per_cent_of_the_brightness():
    """Against numbers worked out by hand: a 64 x 96 grey picture (blocks of 2 x 3 pixels), in one of
    three frames one block brighter by 50 grey levels, or a third of a block by 150."""
    frames = np.full((3, 64, 96), 100.0)
    assert cine.picture_change_percent(frames) == 0.0 and cine.picture_change_percent(frames * 0) == 0.0
    frames[1, 10:12, 30:33] += 50
    assert cine.picture_change_percent(frames) == pytest.approx(50.0)
    frames[1, 10:12, 30:33] = 100
    frames[2, 40:42, 60] += 150  # one column of a 3-column block: its mean rises by 50
    assert cine.picture_change_percent(frames) == pytest.approx(50.0)
    # 3 rows in 2 blocks: rows 0 and 1-2; 4 columns: 0-1 and 2-3.
    assert cine.block_means(np.arange(12.0).reshape(3, 4), blocks=2).tolist() == [[0.5, 2.5], [6.5, 8.5]]


@needs_shared
def test_the_ed_and_es_frames_of_real_patients_change_far_more_than_a_still_loop_may():
    """Every ED and ES pair of every eleventh CAMUS patient (41), read as a loop of two frames, changes by more than
    twice the still-loop limit (all 898 pairs: 24.9% at least, 65% median)."""
    from echoef.measure import review

    patients = sorted(path for path in (CAMUS / "database_nifti").iterdir() if path.is_dir())[::11]
    changes = [cine.picture_change_percent(np.stack([imagefile.read_image(folder / f"{folder.name}_{view}_{phase}.nii.gz")[0]
                                                     for phase in ("ED", "ES")]))
               for folder in patients for view in ("2CH", "4CH")]
    assert len(changes) == 2 * len(patients) >= 80 and min(changes) > 2 * review.STILL_LOOP_PERCENT


def test_ed_and_es_of_a_loop_with_many_frames_per_beat_do_not_inflate_ef():
    """Of noisy areas the largest and smallest are frames the noise made so: with a 3-frame mean, loops
    of 60-90 frames per beat and 2% area noise came out about 3 EF points too high on average. The
    mean's window grows with the beat (an eighth of it), and the bias is gone; beats of fewer than 28
    frames keep the 3-frame mean."""
    assert [cine.smoothing_window(period, 200) for period in (9, 27, 28, 40, 60, 80)] == [3, 3, 5, 5, 9, 11]
    assert cine.smoothing_window(50, 50) == 3  # no beat length found: the light mean
    rng = np.random.default_rng(5)
    errors = []
    for _ in range(120):
        period = int(rng.integers(60, 90))
        frames, start = int(period * rng.uniform(2.0, 3.5)), int(rng.integers(0, period))
        phase = ((np.arange(frames) - start) / period) % 1.0
        shape = np.where(phase < 0.35, (1 + np.cos(np.pi * phase / 0.35)) / 2, (1 - np.cos(np.pi * (phase - 0.35) / 0.65)) / 2)
        amplitude = rng.uniform(300, 700)
        areas = 1500 + amplitude * shape + rng.normal(0, 37, frames)
        ed, es = cine.end_diastole_systole(areas)
        errors.append(100 * (areas[ed] - areas[es]) / areas[ed] - 100 * amplitude / (1500 + amplitude))
    assert abs(np.mean(errors)) < 0.8 and np.mean(np.abs(errors)) < 2.5, (np.mean(errors), np.mean(np.abs(errors)))
