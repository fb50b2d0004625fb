"""Every input the commands read, broken every way we know of: Info cfg files, NIfTI and MetaImage
headers and payloads, label values, truncated, empty and missing files, symlink loops, duplicate
patients. Property, for `ef`, ingest and `predict`: no traceback, every study accounted for with a
known reason, the good study beside the broken one unchanged.

Hypothesis draws the breakages (derandomized in conftest, so a red run repeats); the examples are
bounded so the whole module runs in well under a minute.
"""

import gzip
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings, strategies as st

from echoef.errors import StudyError
from echoef.io import camus, dicom, imagefile, ingest

from conftest import ROOT, echoef_in_process, encapsulated_dicom

FUZZ = settings(max_examples=18, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GOOD, BROKEN = "patient0001", "patient0002"
FILES = [f"{v}_{p}{gt}" for v, p in camus.FRAME_KEYS for gt in ("", "_gt")]

# Reasons a study may be refused with; anything else (above all 'error', an unforeseen exception) fails.
READ_REASONS = {"missing_frame", "unreadable_file", "unsupported_format", "no_spacing", "bad_geometry", "bad_spacing",
                "bad_pixels", "several_channels", "bad_labels", "grid_mismatch", "duplicate_patient"}
EF_REASONS = {"empty_mask", "tiny_mask", "no_contour", "no_basal_chord", "implausible"}
INGEST_REASONS = READ_REASONS | {"bad_cfg", "bad_reference_ef", "empty_expert_lv"}


# ---- breakages: each damages one patient folder -------------------------------------------------

def _nifti(folder: Path, name: str) -> Path:
    return folder / f"{folder.name}_{name}.nii.gz"


def _edit_nifti_header(path: Path, fmt: str, offset: int, *values) -> None:
    data = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(gzip.compress(bytes(data)))


def pixdim(folder, name, axis, value):
    _edit_nifti_header(_nifti(folder, name), "<f", 76 + 4 * axis, value)


def dims(folder, name, values):  # dim[0] (the number of axes) and dim[1..3]
    _edit_nifti_header(_nifti(folder, name), "<4h", 40, *values)


def datatype(folder, name, code_and_bitpix):
    _edit_nifti_header(_nifti(folder, name), "<2h", 70, *code_and_bitpix)


def rotate(folder, name, degrees):  # the direction cosines of one file
    path = _nifti(folder, name)
    image = sitk.ReadImage(str(path))
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    image.SetDirection((cos, -sin, sin, cos))
    sitk.WriteImage(image, str(path))


def labels(folder, name, kind):
    path = _nifti(folder, f"{name}_gt")
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array = {"negative": np.where(array == 2, -1, array), "four": np.where(array == 3, 4, array),
             "half": array * 1.5, "nan": np.where(array == 1, np.nan, array), "empty": array * 0,
             "all_lv": array * 0 + 1, "float_exact": array}[kind]
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


def nan_pixels(folder, name, value):  # a float image with one pixel NaN or infinite (ITK reads it as 0)
    path = _nifti(folder, name)
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array[array.shape[0] // 2, array.shape[1] // 2] = value
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


def truncate(folder, name, fraction):
    path = _nifti(folder, name) if name != "cfg" else folder / "Info_2CH.cfg"
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])


def replace_file(folder, name, how):
    path = _nifti(folder, name)
    path.unlink()
    if how == "directory":
        path.mkdir()
    elif how == "symlink_loop":
        os.symlink(path.name + ".other", path)
        os.symlink(path.name, str(path) + ".other")
    elif how == "dangling":
        os.symlink("nowhere.nii.gz", path)
    elif how == "png":  # another format's bytes under the expected name
        png = path.with_name("frame.png")
        sitk.WriteImage(sitk.Image(30, 20, sitk.sitkUInt8), str(png))
        png.rename(path)


def cfg(folder, content, encoding):
    (folder / "Info_2CH.cfg").write_bytes(content.encode(encoding, "replace") if isinstance(content, str) else content)


def cfg_folder(folder):
    (folder / "Info_2CH.cfg").unlink()
    (folder / "Info_2CH.cfg").mkdir()


def whole_folder(folder, how):
    shutil.rmtree(folder)
    if how == "file":
        folder.write_text("not a folder")
    elif how == "symlink_loop":
        os.symlink(folder.name, folder)
    elif how == "empty":
        folder.mkdir()


def duplicate(folder):
    # patient001 is patient0001 exported twice: kept once, the other reported.
    shutil.copytree(folder.parent / GOOD, folder.parent / "patient001")


def metaimage(folder, name, key, value):
    path = folder / f"{folder.name}_{name}.mhd"
    lines = [line for line in path.read_text().splitlines() if line.split("=")[0].strip() != key]
    if value is not None:
        lines.insert(len(lines) - 1, f"{key} = {value}")  # ElementDataFile stays last
    path.write_text("\n".join(lines) + "\n")


def raw_size(folder, name, fraction):
    raw = folder / f"{folder.name}_{name}.raw"
    raw.write_bytes((raw.read_bytes() * 2)[: int(raw.stat().st_size * fraction)])


CFG_KEYS = st.sampled_from(["EF", "LVef", "Age", "ImageQuality", "LVedv", "Sex", "ED", "ES", "", "EF ", "é"])
CFG_VALUES = st.sampled_from(["", "abc", "nan", "inf", "-inf", "-5", "150", "1e400", "55", "55.5", "0x10", "Good", "∞"])
NIFTI = st.sampled_from(FILES)
BREAKAGES = st.one_of(
    st.tuples(st.just(pixdim), NIFTI, st.sampled_from([1, 2]), st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e9, 1e-9, 0.3])),
    st.tuples(st.just(dims), NIFTI, st.sampled_from([(1, 200, 1, 1), (2, 1, 200, 1), (3, 200, 200, 2), (3, 100, 100, 1),
                                                     (4, 10, 10, 10), (0, 0, 0, 0), (-1, 5, 5, 5), (2, 30000, 30000, 1)])),
    st.tuples(st.just(datatype), NIFTI, st.sampled_from([(16, 32), (4, 16), (32, 64), (128, 24), (2304, 32), (1, 1),
                                                         (0, 8), (999, 8), (64, 64)])),
    st.tuples(st.just(rotate), NIFTI, st.sampled_from([0, 90, 180, 30, 1e-5])),
    st.tuples(st.just(labels), st.sampled_from([f"{v}_{p}" for v, p in camus.FRAME_KEYS]),
              st.sampled_from(["negative", "four", "half", "nan", "empty", "all_lv", "float_exact"])),
    st.tuples(st.just(nan_pixels), NIFTI, st.sampled_from([math.nan, math.inf, -math.inf])),
    st.tuples(st.just(truncate), st.sampled_from(FILES + ["cfg"]), st.sampled_from([0.0, 0.01, 0.3, 0.6, 0.99])),
    st.tuples(st.just(replace_file), NIFTI, st.sampled_from(["missing", "directory", "symlink_loop", "dangling", "png"])),
    st.tuples(st.just(cfg), st.one_of(st.binary(max_size=300),
                                      st.dictionaries(CFG_KEYS, CFG_VALUES, max_size=6).map(
                                          lambda d: "".join(f"{k}: {v}\n" for k, v in d.items())),
                                      st.text(max_size=200), st.just("EF: 50\n" * 200_000)),
              st.sampled_from(["utf-8", "utf-16", "latin-1"])),
    st.tuples(st.just(cfg_folder)),
    st.tuples(st.just(whole_folder), st.sampled_from(["file", "symlink_loop", "empty"])),
    st.tuples(st.just(duplicate)),
)
MHD_FIELDS = {"DimSize": ["30 40", "549 778 2", "100000 100000", "0 40", "-3 4", "30", "a b"],
              "ElementSpacing": ["0 0.15", "-1 1", "nan 1", "1e300 1", "x", None],
              "ElementType": ["MET_SHORT", "MET_DOUBLE", "MET_NONSENSE", "MET_UCHAR_ARRAY"],
              "ElementNumberOfChannels": ["3", "0"], "NDims": ["1", "4"],
              "TransformMatrix": ["-1 0 0 0 1 0 0 0 1", "0 1 0 1 0 0 0 0 1", "0.7 0.7 0 -0.7 0.7 0 0 0 1"],
              "ElementDataFile": ["missing.raw", "", "LOCAL", "/etc/hostname", "../patient0001/patient0001_2CH_ED.raw",
                                  "/dev/zero", "LIST", "."]}
MHD_BREAKAGES = st.one_of(
    st.tuples(st.just(metaimage), NIFTI, st.sampled_from(sorted(MHD_FIELDS)).flatmap(
        lambda key: st.tuples(st.just(key), st.sampled_from(MHD_FIELDS[key])))).map(lambda t: (t[0], t[1], *t[2])),
    st.tuples(st.just(raw_size), NIFTI, st.sampled_from([0.0, 0.5, 0.99, 1.5])),
)


# ---- the commands under test ----------------------------------------------------------------------

def _rows(table: pd.DataFrame) -> dict:
    return {row["patient"]: row for row in table.astype(object).where(table.notna(), None).to_dict(orient="records")}


def run_ef(root: Path) -> tuple[int, dict, str]:
    out = root.parent / "ef.csv"
    result = echoef_in_process("ef", root, "--out", out, "--jobs", 1)
    return result.returncode, _rows(pd.read_csv(out)), result.stderr


def run_predict(folders: list[Path], model: Path, out: Path) -> tuple[int, dict, str]:
    result = echoef_in_process("predict", *folders, "--out", out, "--model", model / "segmenter.pt",
                               "--calibrator", model / "calibrator.json", "--device", "cpu")
    return result.returncode, _rows(pd.read_csv(out / "summary.csv")), result.stderr


def entries(root: Path) -> set[str]:
    return {p.name for p in camus.find_patients(root)}


@pytest.fixture(scope="module")
def sources(phantom_root, tmp_path_factory):
    """The good and the to-be-broken patient in both layouts (2023 NIfTI, 2019 MetaImage)."""
    base = tmp_path_factory.mktemp("fuzz_sources")
    for name in (GOOD, BROKEN):
        shutil.copytree(phantom_root / "database_nifti" / name, base / "nifti" / name)
        mhd = base / "mhd" / name
        mhd.mkdir(parents=True)
        for file in (base / "nifti" / name).iterdir():
            if file.suffix == ".cfg":
                shutil.copy(file, mhd / file.name)
            else:
                sitk.WriteImage(sitk.ReadImage(str(file)), str(mhd / file.name.replace(".nii.gz", ".mhd")))
    return base


@pytest.fixture(scope="module")
def baseline(sources, tiny_model, tmp_path_factory):
    """What each command gives the good patient alone, in each layout."""
    rows = {}
    for layout in ("nifti", "mhd"):
        work = tmp_path_factory.mktemp(f"baseline_{layout}")
        shutil.copytree(sources / layout / GOOD, work / "root" / GOOD)
        rows[("ef", layout)] = run_ef(work / "root")[1][GOOD]
        rows[("predict", layout)] = run_predict([work / "root" / GOOD], tiny_model, work / "pred")[1][GOOD]
    return rows


def unstated_spacing(breakage) -> str | None:
    """The file (``2CH_ED``, ``4CH_ES_gt`` ...) whose header a breakage leaves with no usable pixel size."""
    apply, *arguments = breakage
    if apply is pixdim and not (math.isfinite(arguments[2]) and arguments[2] > 0):
        return arguments[0]
    if apply is metaimage and arguments[1] == "ElementSpacing" and arguments[2] is None:
        return arguments[0]
    return None


def check_all_commands(sources, baseline, tiny_model, layout, breakage):
    apply, *arguments = breakage
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        for name in (GOOD, BROKEN):
            shutil.copytree(sources / layout / name, root / name, symlinks=True)
        apply(root / BROKEN, *arguments)
        found = entries(root)

        status, rows, stderr = run_ef(root)
        assert status == 0 and "Traceback" not in stderr and "unexpected" not in stderr, stderr
        assert set(rows) == found and rows[GOOD] == baseline[("ef", layout)]
        for name in found - {GOOD}:
            reason = rows[name]["status"].split(":")[0]
            assert reason == "ok" or reason.startswith("ok_") or reason in READ_REASONS | EF_REASONS, rows[name]

        cohort, exclusions = ingest.ingest(root, Path(tmp) / "ingested", strict=False)
        assert set(cohort["patient"]) | set(exclusions["patient"]) == found and GOOD in set(cohort["patient"])
        assert set(exclusions["reason"]) <= INGEST_REASONS, exclusions

        unstated = unstated_spacing(breakage)  # the file broken states no usable pixel size
        if unstated and unstated.endswith("_gt") and BROKEN in rows:
            assert not rows[BROKEN]["status"].startswith("ok"), rows[BROKEN]

        folders = [root / name for name in sorted(found)]
        status, rows, stderr = run_predict(folders, tiny_model, Path(tmp) / "pred")
        assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
        assert rows[GOOD] == baseline[("predict", layout)]
        if unstated and not unstated.endswith("_gt") and BROKEN in rows:
            # measured, if at all, from the other frames only: never with a pixel size the file does not state
            assert unstated not in (rows[BROKEN]["frames"] or "").split("+"), rows[BROKEN]
        for name in found - {GOOD}:
            reason = rows[name]["status"].split(":")[0]
            assert reason.startswith("ok") or reason in READ_REASONS | EF_REASONS | {"missing_study", "duplicate_study"}, rows[name]


@FUZZ
@given(breakage=BREAKAGES)
def test_broken_nifti_patients(sources, baseline, tiny_model, breakage):
    check_all_commands(sources, baseline, tiny_model, "nifti", breakage)


@settings(FUZZ, max_examples=6)
@given(breakage=MHD_BREAKAGES)
def test_broken_metaimage_patients(sources, baseline, tiny_model, breakage):
    check_all_commands(sources, baseline, tiny_model, "mhd", breakage)


# One of every kind, side by side in one folder, through the command line as a user runs it.
EVERY_CASE = [
    (pixdim, "2CH_ED", 1, 0.0), (pixdim, "4CH_ES", 2, math.nan), (pixdim, "2CH_ES", 1, 1e9), (pixdim, "4CH_ED_gt", 1, 0.9),
    (dims, "2CH_ED", (3, 100, 100, 2)), (dims, "4CH_ED", (2, 1, 200, 1)), (datatype, "2CH_ES", (32, 64)),
    (datatype, "4CH_ES", (128, 24)), (rotate, "2CH_ED", 30), (rotate, "4CH_ED_gt", 180), (labels, "4CH_ED", "four"),
    (labels, "2CH_ES", "half"), (labels, "2CH_ED", "empty"), (truncate, "4CH_ES", 0.5), (truncate, "2CH_ED_gt", 0.0),
    (replace_file, "4CH_ED", "symlink_loop"), (replace_file, "2CH_ES", "png"), (replace_file, "4CH_ES_gt", "directory"),
    (cfg, b"\x00\xff" * 50 + b"\nEF: zz\n", "utf-8"), (cfg_folder,), (whole_folder, "symlink_loop"), (whole_folder, "file"),
]


def test_ef_on_a_folder_of_every_broken_case(sources, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(sources / "nifti" / GOOD, root / GOOD)
    for number, (apply, *arguments) in enumerate(EVERY_CASE, start=100):
        folder = root / f"patient{number:04d}"
        shutil.copytree(sources / "nifti" / BROKEN, folder)
        for file in folder.iterdir():
            file.rename(folder / file.name.replace(BROKEN, folder.name))
        apply(folder, *arguments)
    duplicate(root / GOOD)
    result = subprocess.run([sys.executable, "-m", "echoef", "ef", str(root), "--out", str(tmp_path / "ef.csv")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    table = pd.read_csv(tmp_path / "ef.csv").set_index("patient")
    assert set(table.index) == entries(root) and len(table) == len(EVERY_CASE) + 2  # + the good one and the duplicate
    assert table.loc[GOOD, "status"] == "ok" and table.loc[GOOD, "ef"] > 0
    bad = table.drop(index=GOOD)
    # A reason for every broken patient: a status that is not 'ok', or (a cfg the EF does not need) a detail.
    assert (~bad["status"].str.startswith("ok") | bad["detail"].notna()).all(), bad
    assert "error" not in set(bad["status"])
    assert f"{len(table)} patients: " in result.stdout and "failed (" in result.stdout


def test_oversized_header_is_refused_before_reading(tmp_path):
    path = tmp_path / "frame.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((40, 30), np.uint8)), str(path))
    path.write_text(path.read_text().replace("DimSize = 30 40", "DimSize = 100000 100000"))
    with pytest.raises(camus.StudyError, match="bad_geometry"):
        imagefile.read_image(path)


# ---- one file of every format, damaged byte by byte, through the reader every command uses --------

def _every_format(folder: Path) -> dict[str, bytes]:
    """A 5-frame 48 x 40 loop (or its first frame, for picture formats) in every format read: the bytes
    of each file, by name."""
    import pydicom
    from pydicom.uid import RLELossless

    from echoef.io import video

    from conftest import deflated_copy, write_dicom

    loop = np.random.default_rng(0).integers(0, 255, (5, 48, 40)).astype(np.uint8)
    for name, pixels, compress in [("a.nii", loop, False), ("a.nii.gz", loop, False), ("a.mha", loop, False),
                                   ("c.mha", loop, True), ("a.png", loop[0], False), ("a.tif", loop[0], False),
                                   ("a.bmp", loop[0], False), ("a.jpg", loop[0], False)]:
        image = sitk.GetImageFromArray(pixels)
        image.SetSpacing((0.3, 0.3, 1.0)[: pixels.ndim])
        sitk.WriteImage(image, str(folder / name), compress)
    # The layouts Pillow decodes for ITK (imagefile._itk_misread_layouts): grey and alpha, a palette loop.
    from PIL import Image

    Image.fromarray(np.stack([loop[0], np.full_like(loop[0], 200)], axis=-1), "LA").save(folder / "g.png")
    palette = [Image.fromarray(frame).convert("P") for frame in loop]
    palette[0].save(folder / "p.tif", save_all=True, append_images=palette[1:])
    write_dicom(folder / "a.dcm", loop, region_spacing_mm=(0.3, 0.3), frame_ms=20)
    rle = pydicom.dcmread(folder / "a.dcm")
    rle.compress(RLELossless, generate_instance_uid=False)  # the same bytes on every run, as write_dicom
    rle.save_as(folder / "r.dcm")
    deflated_copy(folder / "a.dcm", folder / "d.dcm")
    video.write_video(folder / "a.avi", loop, codec="mjpeg")
    video.write_video(folder / "a.mp4", loop)
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


class Originals(dict):
    """The original files by name (a short repr: hypothesis prints its arguments when a case fails)."""

    def __repr__(self) -> str:
        return f"<{len(self)} original files>"


@pytest.fixture(scope="module")
def every_format(tmp_path_factory):
    return Originals(_every_format(tmp_path_factory.mktemp("every_format")))


# Formats whose bytes carry a checksum (PNG's chunks, zlib's and gzip's streams): a damaged file of
# these is the original or refused, never other pixels.
CHECKSUMMED = {"a.png", "g.png", "a.nii.gz", "c.mha"}


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_file_of_any_format_is_read_or_refused_as_a_study_never_an_error(every_format, tmp_path_factory, data):
    """Bytes flipped, cut, zeroed or inserted anywhere in a file of each format: reading it gives a
    loop or a StudyError, never another exception (which would end the study as an internal error)
    or a crash; a file whose bytes carry a checksum is never read as other pixels. Found this way:
    DICOM values pydicom converts only when read (a US of three bytes, an unknown VR, a damaged
    transfer syntax UID, a frame table that ends early), a video stream without a decoder, MetaImage
    headers that killed the process (see the next test), and a compressed MetaImage whose header lost
    its CompressedData line, read with its stream as pixels."""
    name = data.draw(st.sampled_from(sorted(every_format)))
    damaged = bytearray(every_format[name])
    how = data.draw(st.sampled_from(["flip", "cut", "zero", "insert"]))
    at = data.draw(st.integers(0, len(damaged) - 1))
    if how == "flip":
        damaged[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del damaged[at:]
    elif how == "zero":
        damaged[at:at + 64] = bytes(len(damaged[at:at + 64]))
    else:
        damaged[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path_factory.mktemp("damaged") / name
    path.write_bytes(bytes(damaged))
    try:
        loop = imagefile.read_loop(path, (0.3, 0.3))
    except StudyError as error:
        assert str(error).split(":")[0] in READ_REASONS, error
        return
    if name in CHECKSUMMED:
        original = tmp_path_factory.mktemp("original") / name
        original.write_bytes(every_format[name])
        np.testing.assert_array_equal(loop.frames, imagefile.read_loop(original, (0.3, 0.3)).frames)


def read_in_a_child_process(folder, pattern: str) -> dict[str, str]:
    """Each file of ``folder`` matching ``pattern`` read by ``imagefile.read_loop`` in a child process, so
    that a library's crash or endless loop fails the test instead of ending or stalling the suite:
    {stem: 'read <frames>' or the StudyError's reason}."""
    script = ("import sys; from pathlib import Path; from echoef.io import imagefile; from echoef.errors import StudyError\n"
              "for path in sorted(Path(sys.argv[1]).glob(sys.argv[2])):\n"
              "    try: print(path.stem, 'read', len(imagefile.read_loop(path).frames))\n"
              "    except StudyError as error: print(path.stem, str(error).split(':')[0])\n")
    result = subprocess.run([sys.executable, "-c", script, str(folder), pattern], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-500:]
    return dict(line.split(maxsplit=1) for line in result.stdout.splitlines())


def test_jp2_frames_that_pydicom_would_walk_forever_are_refused_before_it(tmp_path):
    """A JPEG 2000 frame in the JP2 file format (as Pillow writes it) whose second box has length 0:
    pydicom's decoder, stepping from box to box to find the codestream, never moved on, and the batch
    hung (found by zeroing 64 bytes of a frame of a 5-frame loop). So did a frame whose boxes end with
    fewer than 4 bytes. Read in a child process, both are ``unreadable_file``; the sound loop reads."""
    import io as bytes_io

    from PIL import Image
    from pydicom.uid import JPEG2000

    loop = np.random.default_rng(0).integers(0, 255, (5, 48, 40)).astype(np.uint8)
    frames = []
    for picture in loop:
        stream = bytes_io.BytesIO()
        Image.fromarray(picture).save(stream, "JPEG2000", irreversible=False)
        frames.append(stream.getvalue())
    assert all(frame.startswith(dicom.JP2_SIGNATURE) for frame in frames)
    zeroed = frames[2][:12] + bytes(8) + frames[2][20:]  # the file type box's length and type zeroed
    for name, loop_frames in [("sound", frames), ("zeroed", frames[:2] + [zeroed] + frames[3:]),
                              ("short", frames[:2] + [frames[2][:12] + b"\x00\x00"] + frames[3:])]:
        encapsulated_dicom(tmp_path / f"{name}.dcm", b"", JPEG2000, frames=loop_frames, rows=48, cols=40)
    assert read_in_a_child_process(tmp_path, "*.dcm") == {"sound": "read 5", "zeroed": "unreadable_file",
                                                          "short": "unreadable_file"}


def test_a_jp2_frame_is_refused_exactly_when_pydicoms_walk_would_not_end():
    """3,000 generated JP2 box sequences (box lengths of 0, 1, 8-40 or any 32-bit value, types among them
    jp2c, tails of 0-3 bytes), in a child process with a time limit: each one ``jp2_box_problem`` lets
    through, pydicom's own ``get_j2k_parameters`` reads to its end, and each one it refuses is one whose
    walk, stepped as pydicom steps it, does not end within as many steps as the frame has bytes."""
    script = """
import numpy as np
from pydicom.pixels.utils import get_j2k_parameters
from echoef.io import dicom
rng = np.random.default_rng(0)
refused = passed = 0
for _ in range(3000):
    frame = dicom.JP2_SIGNATURE + b"\\r\\n\\x87\\n"
    for _ in range(rng.integers(0, 5)):
        length = int(rng.choice([0, 1, int(rng.integers(8, 41)), int(rng.integers(0, 2**32))]))
        kind = [b"jp2c", b"ftyp", b"jp2h", bytes(4)][rng.integers(0, 4)]
        frame += length.to_bytes(4, "big") + kind + bytes(int(rng.integers(0, 33)))
    frame += bytes(int(rng.integers(0, 4)))
    if dicom.jp2_box_problem(frame) is None:
        get_j2k_parameters(frame)
        passed += 1
        continue
    offset, steps = 12, 0
    while offset < len(frame) and steps <= len(frame):
        if frame[offset + 4:offset + 8] == b"jp2c":
            break
        offset += int.from_bytes(frame[offset:offset + 4], "big")
        steps += 1
    assert steps > len(frame), frame
    refused += 1
print(passed, refused)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-800:]
    passed, refused = map(int, result.stdout.split())
    assert passed + refused == 3000 and passed > 500 and refused > 500, result.stdout


def test_metaimage_headers_that_crashed_itk_are_refused_before_it_parses_them(tmp_path):
    """ITK's MetaIO sizes its arrays for at most 10 axes and trusts NDims: NDims -1, 83, 65535 or 2**31,
    or a second NDims line, corrupted its memory and the process died (segmentation fault, abort) in
    21 of 1,500 randomly damaged headers, ending a whole batch. Read in a child process, each is now
    ``bad_geometry``."""
    headers = {"minus": "NDims = -1\nDimSize = 40 48 5", "many": "NDims = 83\nDimSize = 40 48 5",
               "short": "NDims = 65535\nDimSize = 40 48 5", "int": "NDims = 2147483648\nDimSize = 40 48 5",
               "twice": "NDims = 3\nNDims = 2147483648\nDimSize = 40 48 5", "sizes": "NDims = 3\nDimSize = 40 48"}
    for name, lines in headers.items():
        (tmp_path / f"{name}.mha").write_bytes(f"ObjectType = Image\n{lines}\nElementSpacing = 0.3 0.3 1\n"
                                               "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n".encode() + bytes(9600))
    assert read_in_a_child_process(tmp_path, "*.mha") == dict.fromkeys(headers, "bad_geometry")


def test_nifti_transforms_that_hung_itk_are_refused_before_it_parses_them(tmp_path):
    """An sform row of (1, 0, +-inf, 0) sent ITK's NIfTI reader into a loop that did not end (found by
    fuzzing the header's fields, 1 of the first 67 damaged headers), which would hang a whole batch; NaN
    in the sform or the quaternion gave NaN axes. Read in a child process with a time limit, each is
    now ``bad_geometry``, and the undamaged file still reads."""
    import nibabel

    image = nibabel.Nifti1Image((np.arange(3 * 48 * 64) % 200).astype(np.uint8).reshape(64, 48, 1, 3), np.diag([0.3, 0.3, 1, 1]))
    image.header.set_xyzt_units("mm", "msec")
    image.header.set_qform(np.diag([0.3, 0.3, 1, 1]), code=1)
    nibabel.save(image, tmp_path / "whole.nii")
    whole = (tmp_path / "whole.nii").read_bytes()
    damage = {"sform_inf": {312: 1.0, 320: float("inf")}, "sform_minus_inf": {312: 1.0, 320: float("-inf")},
              "sform_nan": {300: float("nan")}, "quatern_nan": {256: float("nan")}, "qoffset_inf": {268: float("inf")}}
    for name, values in damage.items():
        data = bytearray(whole)
        for offset, value in values.items():
            data[offset:offset + 4] = struct.pack("<f", value)
        (tmp_path / f"{name}.nii").write_bytes(bytes(data))
    assert read_in_a_child_process(tmp_path, "*.nii") == {**dict.fromkeys(damage, "bad_geometry"), "whole": "read 3"}


def test_a_tiff_page_header_that_crashed_itk_is_refused_before_itk_reads_it(tmp_path):
    """Four bytes inserted into a 3-page palette TIFF before its last page header (found by fuzzing the
    layouts Pillow decodes): Pillow finds a page without its dimensions, and ITK's reader, handed the
    file, ended the process with a segmentation fault. A TIFF whose page headers Pillow cannot read is
    ``unreadable_file`` before ITK sees it. Read in a child process, so that a crash fails the test."""
    from PIL import Image

    pages = np.random.default_rng(0).integers(0, 255, (3, 40, 48)).astype(np.uint8)
    images = [Image.fromarray(page).convert("P") for page in pages]
    images[0].save(tmp_path / "loop.tif", save_all=True, append_images=images[1:])
    stored = (tmp_path / "loop.tif").read_bytes()
    (tmp_path / "loop.tif").write_bytes(stored[:5215] + bytes.fromhex("e7bc81f9") + stored[5215:])
    with Image.open(tmp_path / "loop.tif") as image, pytest.raises(TypeError, match="Missing dimensions"):
        image.seek(2)  # the damage this test is about
    script = ("import sys; from echoef.io import imagefile; from echoef.errors import StudyError\n"
              "try: imagefile.read_loop(sys.argv[1], (0.3, 0.3)); print('read')\n"
              "except StudyError as error: print(error)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "loop.tif")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.strip() == "unreadable_file: loop.tif: a damaged TIFF page header (TypeError: Missing dimensions)"
