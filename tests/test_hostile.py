"""Hostile input, class by class (docs/threat-model.md): names that would lead outside --out, output
folders that hold a user's files, pixel sizes a file does not state, data files that are not what
they say, model bundles and calibrators with impossible values, resumed rows made by another model,
and the messages of merge, Ctrl-C and odd flags.

Each property compares the whole tree around the run before and after it: nothing is created outside
--out, no file the command did not write is removed or changed, and no traceback is printed.
Hypothesis draws the inputs (derandomized in conftest); the examples are bounded to keep the suite short.
"""

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from echoef import names
from echoef.errors import CheckpointError, ForeignFolderError, StudyError
from echoef.io import atomic, dicom, imagefile
from echoef.model import network
from echoef.stats import calibration

from conftest import PEAK_KB, ROOT, deflated_copy, echoef_in_process, encapsulated_dicom, write_dicom

HOSTILE = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NAME_ATTACKS = ["..", ".", "...", "....", "../../escaped", "/etc/x", "a/../../b", ".hidden", "-rf", "~", "$HOME", "`id`",
                "a" * 300, "CON", "nul.txt", "é", "\u202e", " ", "", "a\x00b", "patient0001/..", "./.", "x" * 79 + "/.."]


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (links not followed) with its content's digest."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def outside_changes(before: dict, after: dict, out: str) -> dict:
    """What changed in a tree outside the folder ``out`` (relative)."""
    keys = set(before) | set(after)
    return {k: (before.get(k), after.get(k)) for k in keys
            if not (k == out or k.startswith(out + os.sep)) and before.get(k) != after.get(k)}


def _files(phantom_root, patient="patient0001"):
    folder = phantom_root / "database_nifti" / patient
    return {key: folder / f"{patient}_{key}.nii.gz" for key in ("2CH_ED", "2CH_ES", "4CH_ED", "4CH_ES")}


def _model_args(model: Path) -> list:
    return ["--model", model / "segmenter.pt", "--calibrator", model / "calibrator.json", "--device", "cpu"]


# ---- 1. identifiers become names, never paths -------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(identifier=st.one_of(st.sampled_from(NAME_ATTACKS), st.text(max_size=120)))
def test_a_safe_name_is_a_plain_file_name(identifier):
    name = names.safe_name(identifier)
    assert 0 < len(name) <= names.MAX_NAME
    assert "/" not in name and "\\" not in name and name not in (".", "..")
    assert name[0].isalnum() and name[-1].isalnum() and name.isascii()
    assert (Path("/out") / name).parent == Path("/out")
    assert names.safe_name(name) == name  # a safe name stays itself: resuming finds the same folder


@settings(max_examples=300, deadline=None)
@given(first=st.text(max_size=40), second=st.text(max_size=40))
def test_two_identifiers_never_share_a_name(first, second):
    if first != second:
        assert names.safe_name(first) != names.safe_name(second)


@HOSTILE
@given(patient=st.one_of(st.sampled_from(NAME_ATTACKS), st.text(min_size=1, max_size=60)))
def test_predict_writes_nothing_outside_out_whatever_the_patient_name(phantom_root, tiny_model, tmp_path_factory, patient):
    if "\x00" in patient:
        return  # a command line cannot carry a NUL
    work = tmp_path_factory.mktemp("names")
    (work / "deep" / "er").mkdir(parents=True)
    (work / "deep" / "mine.txt").write_text("the user's")
    files = _files(phantom_root)
    before = tree(work)
    result = echoef_in_process("predict", "--2ch-ed", files["2CH_ED"], "--2ch-es", files["2CH_ES"], f"--patient={patient}",
                               "--out", work / "deep" / "er" / "out", *_model_args(tiny_model))
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    assert outside_changes(before, tree(work), os.path.join("deep", "er", "out")) == {}
    summary = pd.read_csv(work / "deep" / "er" / "out" / "summary.csv", dtype={"patient": str})
    folder = work / "deep" / "er" / "out" / summary["patient"][0]
    assert folder.parent == work / "deep" / "er" / "out" and (folder / f"{folder.name}_row.json").is_file()


@HOSTILE
@given(patient_id=st.sampled_from(NAME_ATTACKS[:14]), uid=st.sampled_from(["1.2.3", "..", "../..", "/tmp", "1" * 200]))
def test_dicom_identifiers_stay_inside_out(tmp_path_factory, tiny_model, patient_id, uid):
    work = tmp_path_factory.mktemp("dicom_names")
    rng = np.random.default_rng(0)
    for phase in ("ED", "ES"):
        write_dicom(work / "in" / f"a4c_{phase}.dcm", rng.integers(0, 255, (48, 40)), region_spacing_mm=(0.3, 0.3),
                    patient=patient_id, study_uid=uid)
    before = tree(work)
    result = echoef_in_process("predict", "--dicom", work / "in", "--out", work / "out", *_model_args(tiny_model))
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    assert outside_changes(before, tree(work), "out") == {}
    summary = pd.read_csv(work / "out" / "summary.csv")
    assert len(summary) == 1 and summary["status"][0] != "error"
    assert (work / "out" / summary["patient"][0]).is_dir()


def test_dicom_studies_whose_uids_end_alike_get_two_folders(tmp_path, tiny_model):
    rng = np.random.default_rng(1)
    for uid in ("1.2.3.99912345678", "1.2.4.99912345678"):
        for phase in ("ED", "ES"):
            write_dicom(tmp_path / "in" / uid / f"a4c_{phase}.dcm", rng.integers(0, 255, (48, 40)),
                        region_spacing_mm=(0.3, 0.3), patient="P1", study_uid=uid)
    echoef_in_process("predict", "--dicom", tmp_path / "in", "--out", tmp_path / "out", *_model_args(tiny_model))
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(set(summary["patient"])) == 2 and "duplicate_study" not in set(summary["status"])


def test_a_second_single_frame_of_a_view_and_phase_is_named(tmp_path, tiny_model):
    from echoef.app.studies import from_dicom_folder

    rng = np.random.default_rng(2)
    for name in ("a4c_ED.dcm", "a4c_ED_again.dcm", "a4c_ES.dcm"):
        write_dicom(tmp_path / name, rng.integers(0, 255, (48, 40)), region_spacing_mm=(0.3, 0.3))
    (study,) = from_dicom_folder(tmp_path, {})
    assert study.phases[("4CH", "ED")].name == "a4c_ED.dcm"
    assert any("a4c_ED_again.dcm: a second 4CH ED frame, left out" in note for note in study.notes)


def test_a_patient_folder_with_odd_characters_or_a_long_name_gets_a_reason(phantom_root, tiny_model, tmp_path):
    for name in ("patient$0001", "p" * 200):
        folder = tmp_path / "in" / name
        folder.mkdir(parents=True)
        for file in (phantom_root / "database_nifti" / "patient0001").iterdir():
            shutil.copy(file, folder / file.name.replace("patient0001", name))
    result = echoef_in_process("predict", *sorted((tmp_path / "in").iterdir()), "--out", tmp_path / "out", *_model_args(tiny_model))
    assert "unexpected" not in result.stderr, result.stderr
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 2 and "error" not in set(summary["status"]), summary[["patient", "status", "detail"]]
    assert all(len(name) <= names.MAX_NAME for name in summary["patient"])


def test_a_study_folder_that_is_a_link_is_not_written_through(phantom_root, tiny_model, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    echoef_in_process("predict", phantom_root / "database_nifti" / "patient0002", "--out", out, *_model_args(tiny_model))
    os.symlink(elsewhere, out / "patient0001")
    result = echoef_in_process("predict", phantom_root / "database_nifti" / "patient0001", "--out", out, *_model_args(tiny_model))
    assert list(elsewhere.iterdir()) == []
    assert pd.read_csv(out / "summary.csv")["status"][0] == "unsafe_output", result.stderr


@pytest.mark.parametrize("name", ["../escaped", "/tmp/x", "..", ".hidden", "a/b"])
def test_a_record_name_is_a_plain_name(name, tmp_path):
    result = echoef_in_process("record", name, "--workspace", tmp_path, "--results", tmp_path / "results")
    assert result.returncode == 2 and "give a plain name" in result.stderr and not (tmp_path / "results").exists()


@settings(max_examples=200, deadline=None)
@given(cells=st.lists(st.one_of(st.text(max_size=30), st.sampled_from(["=HYPERLINK(\"x\")", "+1+1", "-2+3", "@SUM(A1)",
                                                                       "\t=1", "\r=1", "x\r99,=1", "=cmd|' /C calc'!A0"])),
                      min_size=1, max_size=8),
       numbers=st.lists(st.floats(allow_nan=True, allow_infinity=False, width=32), min_size=8, max_size=8))
def test_no_text_cell_of_a_written_table_is_a_spreadsheet_formula(tmp_path_factory, cells, numbers):
    """Text from file names and tags reaches summary.csv (``detail``); a spreadsheet must show it as
    text, never run it, and no such text may start a row: every text cell that would start a formula
    is written with a leading ', a carriage return or NUL as visible escapes, and numbers (negative
    ones too) are written as they are."""
    import csv

    table = pd.DataFrame({"text": cells, "ef": numbers[: len(cells)]})
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    atomic.write_csv(path, table)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert len(rows) == len(cells)  # no cell started a row of its own
    for row, cell, number in zip(rows, cells, numbers):
        shown = cell.replace("\r", "\\r").replace("\x00", "\\x00")
        assert not row[0].startswith(atomic.FORMULA_STARTS)
        assert row[0] == ("'" + shown if shown.startswith(atomic.FORMULA_STARTS) else shown)
        assert (row[1] == "" and math.isnan(number)) or float(row[1]) == number


def test_a_file_name_that_reads_as_a_formula_stays_text_in_the_summary(tmp_path, tiny_model):
    name = "=HYPERLINK(\"http:__x\",\"y\")_a4c.nii.gz"
    echoef_in_process("predict", *_model_args(tiny_model), "--4ch-ed", tmp_path / name, "--4ch-es", tmp_path / name,
                      "--out", tmp_path / "out")
    text = (tmp_path / "out" / "summary.csv").read_text()
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text and '"=HYPERLINK' not in text


# ---- 2. a user's folder is never written over or deleted ---------------------------------------------

def test_export_refuses_a_users_folder_and_keeps_its_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.json").write_text("the user's own")
    (mine / "notes.txt").write_text("keep me")
    before = tree(tmp_path)
    result = echoef_in_process("export", "--out", mine, "--model", tmp_path / "none.pt")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "did not write" in result.stderr
    assert tree(tmp_path) == before


def test_a_folder_echoef_wrote_is_replaced_but_not_with_a_users_file_added(tmp_path):
    target = tmp_path / "bundle"
    with atomic.atomic_folder(target) as folder:
        (folder / "a.txt").write_text("1")
    with atomic.atomic_folder(target) as folder:  # its own folder: replaced
        (folder / "a.txt").write_text("2")
    assert (target / "a.txt").read_text() == "2"
    (target / "mine.txt").write_text("the user's")
    with pytest.raises(ForeignFolderError, match="mine.txt"):
        with atomic.atomic_folder(target) as folder:
            (folder / "a.txt").write_text("3")
    assert (target / "mine.txt").read_text() == "the user's" and (target / "a.txt").read_text() == "2"


@pytest.mark.parametrize("command", ["predict", "merge"])
def test_predict_and_merge_refuse_a_folder_of_someone_elses(command, phantom_root, tiny_model, tmp_path):
    mine = tmp_path / "mine"
    (mine / "patient0001").mkdir(parents=True)
    (mine / "patient0001" / "patient0001_row.json").write_text("{}")
    (mine / "summary.csv").write_text("the user's")
    before = tree(tmp_path)
    arguments = [phantom_root / "database_nifti" / "patient0001", "--out", mine, *_model_args(tiny_model)] \
        if command == "predict" else [mine]
    result = echoef_in_process(command, *arguments)
    assert result.returncode == 2 and "did not write" in result.stderr and "Traceback" not in result.stderr
    assert tree(tmp_path) == before


def test_a_study_folder_of_someone_elses_inside_out_is_left_alone(phantom_root, tiny_model, tmp_path):
    out = tmp_path / "out"
    echoef_in_process("predict", phantom_root / "database_nifti" / "patient0002", "--out", out, *_model_args(tiny_model))
    (out / "patient0001").mkdir()
    (out / "patient0001" / "patient0001_2CH_ED_gt.nii.gz").write_text("an expert's mask")
    echoef_in_process("predict", phantom_root / "database_nifti" / "patient0001", "--out", out, *_model_args(tiny_model))
    assert (out / "patient0001" / "patient0001_2CH_ED_gt.nii.gz").read_text() == "an expert's mask"
    assert pd.read_csv(out / "summary.csv")["status"][0] == "foreign_output"


def test_a_stage_empties_only_a_folder_of_its_own_files(tmp_path):
    """remove_stage_output deletes a folder whose every file is of the stage's patterns (at any depth,
    links included, never followed), and refuses, deleting nothing, a folder with anything else in
    it, a link in the folder's place, or a file."""
    ours = tmp_path / "ours"
    (ours / "deep").mkdir(parents=True)
    (ours / "patient0001.npz").write_bytes(b"x")
    (ours / "deep" / "patient0002.npz").write_bytes(b"x")
    (ours / "cohort.csv").write_text("patient\n")
    keep = tmp_path / "keep.npz"
    keep.write_bytes(b"users")
    (ours / "linked.npz").symlink_to(keep)
    atomic.remove_stage_output(tmp_path / "absent", ("*.npz",))
    atomic.remove_stage_output(ours, ("*.npz", "cohort.csv"))
    assert not ours.exists() and keep.read_bytes() == b"users"
    users = tmp_path / "users"
    (users / "sub").mkdir(parents=True)
    (users / "a.npz").write_bytes(b"x")
    (users / "sub" / "thesis.docx").write_bytes(b"years of work")
    (tmp_path / "link").symlink_to(users)
    before = tree(tmp_path)
    for target in (users, tmp_path / "link", keep):
        with pytest.raises(ForeignFolderError, match="holds files this stage does not write|is a link or a file"):
            atomic.remove_stage_output(target, ("*.npz",))
    assert tree(tmp_path) == before
    # The stage's other outputs count as its own where its own flags put them inside the folder (the
    # fold's dice.csv), only there: a file of that name elsewhere in it is not the stage's.
    fold = tmp_path / "predictions"
    (fold / "sub").mkdir(parents=True)
    (fold / "patient0001.npz").write_bytes(b"x")
    (fold / "dice.csv").write_text("patient\n")
    (fold / "sub" / "dice.csv").write_text("someone's\n")
    with pytest.raises(ForeignFolderError, match=r"\(sub/dice.csv\)"):
        atomic.remove_stage_output(fold, ("*.npz",), files=(fold / "dice.csv", None))
    (fold / "sub" / "dice.csv").unlink()
    with pytest.raises(ForeignFolderError, match=r"\(dice.csv\)"):
        atomic.remove_stage_output(fold, ("*.npz",))
    atomic.remove_stage_output(fold, ("*.npz",), files=(Path(os.path.relpath(fold / "dice.csv")), None))
    assert not fold.exists()


def test_a_stage_run_by_hand_on_a_users_folder_deletes_nothing(tmp_path, phantom_root):
    """stages/ingest.py with --out naming a folder of someone else's: one line, exit 2, the folder as
    it was; the same command on a new folder, then again on the folder it wrote, succeeds."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")

    def ingest(out):
        return subprocess.run([sys.executable, str(ROOT / "stages/ingest.py"), "--root", str(phantom_root), "--out", str(out),
                               "--metrics", str(tmp_path / "ingest.json")], cwd=tmp_path, capture_output=True, text=True)

    refused = ingest(users)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: --out {users} holds files this stage does not write (notes.txt); give its own folder, or empty this one yourself"]
    assert [p.name for p in users.iterdir()] == ["notes.txt"] and not (tmp_path / "ingest.json").exists()
    assert ingest(tmp_path / "ingested").returncode == 0 and ingest(tmp_path / "ingested").returncode == 0
    assert (tmp_path / "ingested" / "cohort.csv").is_file()


# ---- 3. a pixel size only where the file states one ------------------------------------------------

def _nifti(path: Path, pixdim, qform_code=1, sform_code=0, pixels=None):
    """A 2D NIfTI written byte for byte as crafted (nibabel would "fix" a zero pixdim on save)."""
    array = np.asarray(pixels if pixels is not None else np.random.default_rng(0).random((40, 30)) * 200, np.float32)
    image = nibabel.Nifti1Image(array.T, np.diag([0.3, 0.3, 1, 1]))
    header = image.header
    header["qform_code"], header["sform_code"] = qform_code, sform_code
    nibabel.save(image, path)
    data = bytearray(path.read_bytes())
    data[80:88] = np.asarray(pixdim, "<f4").tobytes()  # pixdim[1], pixdim[2]
    path.write_bytes(bytes(data))
    return path


@settings(max_examples=40, deadline=None)
@given(pixdim=st.tuples(*[st.sampled_from([0.0, -0.3, math.nan, math.inf, 0.3, 0.45, 1.0])] * 2),
       codes=st.sampled_from([(0, 0), (1, 0), (0, 1), (1, 1), (2, 0)]))
def test_a_nifti_pixel_size_is_the_one_its_header_states(tmp_path_factory, pixdim, codes):
    path = _nifti(tmp_path_factory.mktemp("pixdim") / "frame.nii", pixdim, *codes)
    stored = nibabel.Nifti1Header.from_fileobj(open(path, "rb"), check=False)["pixdim"][1:3]
    try:
        loop = imagefile.read_loop(path)
    except StudyError as error:
        assert error.reason in {"no_spacing", "bad_spacing"}, error
        return
    # Read: the spacing is exactly the header's own (x along columns, y along rows).
    assert np.isfinite(stored).all() and (stored > 0).all()
    assert loop.spacing_mm == pytest.approx((float(stored[1]), float(stored[0])), rel=1e-6)


def test_a_nifti_without_a_pixel_size_is_measured_only_with_one_given(tmp_path):
    path = _nifti(tmp_path / "frame.nii", (0.0, 0.0))
    with pytest.raises(StudyError, match="no_spacing"):
        imagefile.read_loop(path)
    assert imagefile.read_loop(path, (0.2, 0.4)).spacing_mm == (0.2, 0.4)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mhd"])
def test_non_finite_pixels_are_bad_pixels_in_every_format(tmp_path, value, suffix):
    pixels = np.random.default_rng(0).random((40, 30)).astype(np.float32) * 100
    pixels[7, 3] = value
    path = tmp_path / f"frame{suffix}"
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((0.3, 0.3))
    if suffix == ".mhd":
        sitk.WriteImage(image, str(path))
    else:
        nibabel.save(nibabel.Nifti1Image(pixels.T, np.diag([0.3, 0.3, 1, 1])), path)
    with pytest.raises(StudyError, match="bad_pixels"):
        imagefile.read_loop(path)


# ---- 4. data files are regular files beside their header --------------------------------------------

def _metaimage(folder: Path, data_file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = folder / "frame.mhd"
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (40, 30)).astype(np.uint8))
    image.SetSpacing((0.3, 0.3))
    sitk.WriteImage(image, str(header))
    header.write_text(header.read_text().replace("ElementDataFile = frame.raw", f"ElementDataFile = {data_file}"))
    return header


@pytest.mark.parametrize("data_file", ["FIFO", "/etc/hostname", "ABSOLUTE", "../outside.raw", "sub/../../outside.raw",
                                       "/dev/zero", "LIST", "frame_%03d.raw 0 2 1", "folder"])
def test_a_metaimage_reads_only_a_regular_file_beside_it(tmp_path, data_file):
    outside = tmp_path / "outside.raw"
    outside.write_bytes(bytes(range(256)) * 5)
    if data_file == "ABSOLUTE":
        data_file = str(outside)
    header = _metaimage(tmp_path / "study", data_file)
    if data_file == "FIFO":
        os.mkfifo(tmp_path / "study" / "FIFO")
    if data_file == "folder":
        (tmp_path / "study" / "folder").mkdir()
    with pytest.raises(StudyError, match="unreadable_file"):
        imagefile.read_loop(header)


def test_a_fifo_data_file_never_blocks_the_batch(tmp_path, tiny_model, phantom_root):
    """predict in its own process, with a deadline: a header pointing at a FIFO fails its study, and the
    good study beside it and the summary are still written."""
    bad = tmp_path / "in" / "patient0009"  # the 2019 layout (MetaImage), one header naming a FIFO
    bad.mkdir(parents=True)
    for key, source in _files(phantom_root).items():
        sitk.WriteImage(sitk.ReadImage(str(source)), str(bad / f"patient0009_{key}.mhd"))
    header = bad / "patient0009_4CH_ES.mhd"
    header.write_text(header.read_text().replace("ElementDataFile = patient0009_4CH_ES.raw", "ElementDataFile = pipe"))
    os.mkfifo(bad / "pipe")
    result = subprocess.run([sys.executable, "-m", "echoef", "predict", str(bad), str(phantom_root / "database_nifti" / "patient0002"),
                             "--out", str(tmp_path / "out"), *map(str, _model_args(tiny_model))],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("patient")
    assert "Traceback" not in result.stderr and len(summary) == 2
    assert "4CH_ES unreadable_file" in summary.loc["patient0009", "detail"], summary.loc["patient0009"].to_dict()


# ---- 5. bundles and calibrators: every value checked on load ---------------------------------------

CALIBRATOR_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                              st.text(max_size=5), st.lists(st.floats(allow_nan=True), max_size=3),
                              st.just([95, 5]), st.just([5, 95]), st.just({"half_width": -1, "level": 0.9}))
GOOD_CALIBRATORS = [
    {"method": "linear", "slope": 1.04, "intercept": 0.05, "ef_range": [5, 95], "interval": {"level": 0.9, "half_width": 9.0, "n": 50}},
    {"method": "isotonic", "x": [20.0, 40.0, 60.0], "y": [25.0, 41.0, 58.0], "ef_range": [5, 95]},
    {"method": "ridge", "slope": 0.9, "intercept": 3.0, "features": {"edv_ml": 0.01, "ef_2ch": 0.1}, "ef_range": [5, 95]},
    {"method": "none", "ef_range": [5, 95]},
]


@settings(max_examples=400, deadline=None)
@given(base=st.sampled_from(GOOD_CALIBRATORS), key=st.sampled_from(["method", "slope", "intercept", "ef_range", "x", "y",
                                                                    "features", "interval", "ef_method"]),
       value=CALIBRATOR_VALUES)
def test_a_loaded_calibrator_gives_finite_ordered_efs_in_its_range(base, key, value):
    calibrator = json.loads(json.dumps({**base, key: value}))  # as read back from a file (NaN stays NaN)
    try:
        calibration.validate(calibrator)
    except ValueError:
        return
    efs = np.linspace(0, 100, 21)
    features = {name: np.full(21, 50.0) for name in calibration.RIDGE_FEATURES}
    calibrated = calibration.apply(calibrator, efs, features)
    low, high = calibration.interval(calibrator, calibrated)
    assert np.isfinite(calibrated).all()
    assert calibrator["ef_range"][0] <= calibrated.min() and calibrated.max() <= calibrator["ef_range"][1]
    if calibrator.get("interval", {}).get("half_width") is not None:
        assert (low <= calibrated).all() and (calibrated <= high).all()


@pytest.mark.parametrize("content", ['[1, 2]', '{"method": "linear", "slope": NaN, "intercept": 0, "ef_range": [5, 95]}',
                                     '{"method": "linear", "slope": 1e308, "intercept": 0, "ef_range": [5, 95]}',
                                     '{"method": "linear", "slope": 1, "intercept": 0, "ef_range": [95, 5]}',
                                     '{"method": "none", "ef_range": [5, 95], "interval": {"level": 0.9, "half_width": -3}}',
                                     '{"method": "linear", "slope": "1", "intercept": 0, "ef_range": [5, 95]}', '', '\x00\xff',
                                     '[' * 100000])
def test_predict_refuses_an_impossible_calibrator_in_one_line(content, phantom_root, tiny_model, tmp_path):
    (tmp_path / "bad.json").write_text(content, errors="surrogateescape")
    result = echoef_in_process("predict", phantom_root / "database_nifti" / "patient0001", "--out", tmp_path / "out",
                               "--model", tiny_model / "segmenter.pt", "--calibrator", tmp_path / "bad.json")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "bad.json" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def _bundle(folder: Path, tiny_model: Path, edit=None) -> Path:
    state = torch.load(tiny_model / "segmenter.pt", weights_only=True)
    if edit:
        edit(state)
    folder.mkdir(parents=True)
    network.save_bundle(folder, state)
    return folder


MODEL_EDITS = {
    "members": lambda s: s.update(members=list(range(7))),
    "members_int": lambda s: s.update(members=10**9),
    "input_size": lambda s: s["model_config"].update(input_size=10**6),
    "input_size_odd": lambda s: s["model_config"].update(input_size=33),
    "input_size_text": lambda s: s["model_config"].update(input_size="big"),
    "encoder": lambda s: s["model_config"].update(encoder="../../x"),
    "depth_bool": lambda s: s["model_config"].update(encoder_depth=True),
    "channels": lambda s: s["model_config"].update(decoder_channels=[10**9, 8, 4]),
    "phases": lambda s: s["model_config"].update(phases_per_input=7),
    "unknown": lambda s: s["model_config"].update(surprise=1),
    "trained_on": lambda s: s.update(trained_on=[1]),
    "nan_weight": lambda s: next(iter(s["state_dicts"][0].values())).fill_(math.nan),
    "no_members": lambda s: s.update(state_dicts=[]),
    "too_many": lambda s: s.update(state_dicts=[{k: v.clone() for k, v in s["state_dicts"][0].items()} for _ in range(17)]),
}


@pytest.mark.parametrize("edit", sorted(MODEL_EDITS))
def test_a_bundle_with_an_impossible_value_is_refused_naming_the_field(edit, tiny_model, tmp_path, phantom_root):
    bundle = _bundle(tmp_path / "bundle", tiny_model, MODEL_EDITS[edit])
    with pytest.raises(CheckpointError, match="refused|not a model"):
        network.load_checkpoint(bundle)
    result = echoef_in_process("predict", phantom_root / "database_nifti" / "patient0001", "--out", tmp_path / "out",
                               "--model", bundle, "--calibrator", tiny_model / "calibrator.json")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("damage", ["header_length", "header_json", "truncated", "empty", "model_json_list", "model_json_bytes"])
def test_a_corrupt_bundle_file_is_refused_in_one_line(damage, tiny_model, tmp_path):
    bundle = _bundle(tmp_path / "bundle", tiny_model)
    weights = bundle / network.BUNDLE_WEIGHTS
    data = weights.read_bytes()
    if damage == "header_length":
        weights.write_bytes((2**62).to_bytes(8, "little") + data[8:])
    elif damage == "header_json":
        weights.write_bytes(data[:8] + b"{" * 8 + data[16:])
    elif damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "model_json_list":
        (bundle / network.BUNDLE_MODEL).write_text("[]")
    else:
        (bundle / network.BUNDLE_MODEL).write_bytes(b"\xff\xfe{")
    with pytest.raises(CheckpointError):
        network.load_checkpoint(bundle)


@pytest.mark.parametrize("change", ["extra", "shape", "missing"])
def test_bundle_weights_not_of_its_network_are_refused_from_the_header_before_any_is_read(change, tiny_model, tmp_path,
                                                                                            monkeypatch):
    """weights.safetensors beside a small network: one more tensor declared as 2 GB (a sparse file), a
    tensor of another shape, or one missing. The extra one was read whole before loading refused it
    (12.5 GB of memory for a 4 GB tensor, so a larger one ends the process); each is now refused
    from the file's header, and no tensor is read (``load_file`` is never called)."""
    import struct

    import safetensors.torch

    bundle = _bundle(tmp_path / "bundle", tiny_model)
    weights = bundle / network.BUNDLE_WEIGHTS
    data = weights.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header, body = json.loads(data[8:8 + length]), data[8 + length:]
    name = next(key for key in header if key.startswith("member0.") and header[key]["shape"])
    if change == "extra":
        count = 2 << 28  # float32: 2 GB
        header["member0.extra"] = {"dtype": "F32", "shape": [count], "data_offsets": [len(body), len(body) + 4 * count]}
    elif change == "shape":
        header[name]["shape"] = [*header[name]["shape"][:-1], 1, header[name]["shape"][-1]]  # the same bytes, another shape
    else:  # the tensor stored last, so that the others' offsets still hold
        last = max((key for key in header if key != "__metadata__"), key=lambda key: header[key]["data_offsets"][1])
        body = body[: header.pop(last)["data_offsets"][0]]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(weights, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + body)
        if change == "extra":
            handle.truncate(8 + len(text) + len(body) + 4 * count)
    loaded = []
    load_file = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *args, **kwargs: loaded.append(1) or load_file(*args, **kwargs))
    found = {"extra": "unexpected", "shape": "other shape", "missing": "missing"}[change]
    with pytest.raises(CheckpointError, match=f"member 0: weights not those of its network \\({found}"):
        network.load_checkpoint(bundle)
    assert loaded == []


# ---- 6. a resumed row is reused only if the same model and settings made it ------------------------

def test_resume_redoes_rows_made_by_another_calibrator_or_setting(phantom_root, tiny_model, tmp_path):
    out = tmp_path / "out"
    study = phantom_root / "database_nifti" / "patient0001"
    row = out / "patient0001" / "patient0001_row.json"
    echoef_in_process("predict", study, "--out", out, *_model_args(tiny_model))
    first = json.loads(row.read_text())
    echoef_in_process("predict", study, "--out", out, *_model_args(tiny_model))
    assert json.loads(row.read_text()) == first  # same everything: resumed as it was
    (tmp_path / "none.json").write_text('{"method": "none", "ef_range": [0, 100]}')
    echoef_in_process("predict", study, "--out", out, "--model", tiny_model / "segmenter.pt", "--calibrator", tmp_path / "none.json")
    second = json.loads(row.read_text())
    assert second["made_by"] != first["made_by"]
    echoef_in_process("predict", study, "--out", out, *_model_args(tiny_model), "--tta")
    third = json.loads(row.read_text())
    assert len({first["made_by"], second["made_by"], third["made_by"]}) == 3
    assert pd.read_csv(out / "summary.csv")["made_by"][0] == third["made_by"]


def test_resume_with_another_calibrator_changes_the_calibrated_ef(trained, phantom_root, tmp_path):
    out = tmp_path / "out"
    studies = [phantom_root / "database_nifti" / f"patient{n:04d}" for n in (11, 12)]
    echoef_in_process("predict", *studies, "--out", out, "--model", trained / "segmenter.pt", "--calibrator",
                      trained / "calibrator.json")
    before = pd.read_csv(out / "summary.csv")
    shifted = {**json.loads((trained / "calibrator.json").read_text()), "intercept": 10.0}
    (tmp_path / "shifted.json").write_text(json.dumps(shifted))
    echoef_in_process("predict", *studies, "--out", out, "--model", trained / "segmenter.pt", "--calibrator", tmp_path / "shifted.json")
    after = pd.read_csv(out / "summary.csv")
    measured = before["status"].str.startswith("ok") & (before["method"] == "simpson_biplane")
    assert measured.any()
    expected = np.clip(after["ef"] * shifted["slope"] + 10.0, *shifted["ef_range"])
    assert np.allclose(after.loc[measured, "ef_calibrated"], expected[measured])
    assert not np.allclose(after.loc[measured, "ef_calibrated"], before.loc[measured, "ef_calibrated"])


# ---- 7. messages, merge, flags ---------------------------------------------------------------------

def test_merge_counts_each_study_once_and_names_a_broken_row(phantom_root, tiny_model, tmp_path):
    out = tmp_path / "out"
    echoef_in_process("predict", *[phantom_root / "database_nifti" / f"patient000{n}" for n in (1, 2)], "--out", out,
                      *_model_args(tiny_model))
    row = out / "patient0001" / "patient0001_row.json"
    row.write_text(row.read_text()[:40])  # truncated
    shutil.copytree(out / "patient0002", out / "patient0002_copy")  # a folder copied by hand
    (out / "patient0002_copy" / "patient0002_row.json").rename(out / "patient0002_copy" / "patient0002_copy_row.json")
    result = echoef_in_process("merge", out)
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr
    summary = pd.read_csv(out / "summary.csv").set_index("patient")
    assert sorted(summary.index) == ["patient0001", "patient0002", "patient0002_copy"]
    assert summary.loc["patient0001", "status"] == "unreadable_row"
    assert summary.loc["patient0002_copy", "status"] == "unreadable_row"
    assert "patient0002" in summary.loc["patient0002_copy", "detail"]
    assert summary.loc["patient0002", "status"] != "unreadable_row"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.sampled_from(["made_by", "ef", "edv_ml", "status", "review", "n_beats", "detail", "ef_4ch"]),
       value=st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                       st.booleans(), st.text(max_size=5), st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_merge_keeps_a_row_whose_values_are_not_what_predict_writes_as_unreadable(phantom_root, tiny_model, tmp_path_factory,
                                                                                   column, value):
    """A hand-edited row file whose value is a list, an object, true/false, text where a number belongs
    or a number where text does (a list as made_by ended merge in a traceback: unhashable) is that
    study's ``unreadable_row``; a value of the right kind is kept as written."""
    out = _predicted_once(phantom_root, tiny_model, tmp_path_factory)
    row_file = out / "patient0001" / "patient0001_row.json"
    row = json.loads(row_file.read_text())
    row_file.write_text(json.dumps({**row, column: value}))
    result = echoef_in_process("merge", out)
    assert "Traceback" not in result.stderr and result.returncode in (0, 1), result.stderr
    merged = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("patient").loc["patient0001"]
    text_column = column in ("made_by", "status", "review", "detail")
    fits = isinstance(value, str) if text_column else (isinstance(value, int | float) and not isinstance(value, bool))
    assert (merged["status"] == "unreadable_row") == (not fits), (column, value, merged["status"])


def _predicted_once(phantom_root, tiny_model, tmp_path_factory) -> Path:
    """A fresh copy of one predict run's --out (one study), made once per module."""
    source = tmp_path_factory.getbasetemp() / "predicted_source"
    if not source.exists():
        echoef_in_process("predict", phantom_root / "database_nifti" / "patient0001", "--out", source, *_model_args(tiny_model))
    copy = tmp_path_factory.mktemp("predicted_copy")
    shutil.copytree(source, copy / "out")
    return copy / "out"


@pytest.mark.parametrize("flag", [["--shard", "²/3"], ["--shard", "1/٣"], ["--shard", "0/99999999999999999999"],
                                  ["--phase-frames", "2CH:¹:2"], ["--phase-frames", "4CH:0:٣"], ["--batch-size", "0"],
                                  ["--batch-size", "-3"], ["--spacing-mm", "1e-300", "0.3"], ["--spacing-mm", "0.3", "1e300"],
                                  ["--spacing-mm", "nan", "0.3"], ["--spacing-mm", "0", "0"]])
def test_odd_digits_in_flags_are_usage_errors(flag, phantom_root, tiny_model, tmp_path):
    files = _files(phantom_root)
    result = echoef_in_process("predict", "--2ch", files["2CH_ED"], "--out", tmp_path / "out", *_model_args(tiny_model), *flag)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and flag[0] in result.stderr, result.stderr


def test_ctrl_c_ends_with_one_line_and_status_130(phantom_root, tiny_model, tmp_path, monkeypatch):
    from echoef.app import predict

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_study", interrupted)
    result = echoef_in_process("predict", phantom_root / "database_nifti" / "patient0001", "--out", tmp_path / "out",
                               *_model_args(tiny_model))
    assert result.returncode == 130 and result.stderr.count("\n") == 1 and "interrupted" in result.stderr


def test_the_model_card_names_the_dataset_not_a_local_folder():
    from echoef.app.bundle import dataset_name

    assert dataset_name("camus-cpu").startswith("CAMUS (Leclerc et al., IEEE TMI 2019)")
    assert "synthetic" in dataset_name("synthetic")
    params = {"profile": "camus-cpu", "data": {"root": "/home/someone/private/camus"},
              "train": {"network": {"members": 1, "encoder": "resnet18", "encoder_depth": 4, "input_size": 256,
                                    "phases_per_input": 1}}}
    ef = dict.fromkeys(["mae", "mae_low", "mae_high", "mae_uncalibrated", "bias", "loa_low", "loa_high", "r", "r_low",
                        "r_high"], 1.0) | {"n": 50, "n_failed": 0}
    from echoef.app.bundle import model_card

    card = model_card(params, {}, ef, {"method": "linear", "ef_range": [5, 95]}, None)
    assert "/home/someone" not in card and "CAMUS (Leclerc et al., IEEE TMI 2019)" in card


def test_cli_messages_name_no_issue_numbers():
    text = "".join(path.read_text() for path in (ROOT / "echoef").rglob("*.py"))
    assert "since issue" not in text and "issue #" not in text.lower()


def _jpeg(rows, cols, claimed=None) -> bytes:
    """A baseline JPEG of zeros; ``claimed`` (rows, cols) rewrites the size its frame header states."""
    import io as bytes_io
    import struct

    from PIL import Image

    stream = bytes_io.BytesIO()
    Image.fromarray(np.zeros((rows, cols), np.uint8)).save(stream, "JPEG")
    data = stream.getvalue()
    if claimed:
        at = data.index(b"\xff\xc0") + 5  # SOF0: marker, length, precision, then rows and columns
        data = data[:at] + struct.pack(">HH", *claimed) + data[at + 4:]
    return data


def gdcm_compressed(path: Path, frames: np.ndarray, syntax) -> Path:
    """``write_dicom``'s loop of ``frames`` re-encoded by GDCM in the transfer syntax ``syntax`` (a
    ``gdcm.TransferSyntax`` code): how an archive stores a lossless loop."""
    import gdcm

    plain = write_dicom(path.with_suffix(".plain.dcm"), frames, region_spacing_mm=(0.3, 0.4), frame_ms=33.3)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(plain))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return path


LOSSLESS_SYNTAXES = {"JPEGLosslessProcess14_1": "1.2.840.10008.1.2.4.70", "JPEGLosslessProcess14": "1.2.840.10008.1.2.4.57",
                     "JPEGLSLossless": "1.2.840.10008.1.2.4.80"}


@pytest.mark.parametrize("syntax", sorted(LOSSLESS_SYNTAXES))
def test_lossless_jpeg_and_jpeg_ls_loops_are_read_bit_for_bit_by_gdcm_in_a_child_process(tmp_path, syntax):
    """A 5-frame loop stored as lossless JPEG or JPEG-LS reads as the same loop stored uncompressed:
    its pixels bit for bit, its pixel size, its frame time."""
    import gdcm
    import pydicom

    frames = np.random.default_rng(3).integers(0, 256, (5, 40, 48), dtype=np.uint8)
    path = gdcm_compressed(tmp_path / "loop.dcm", frames, getattr(gdcm.TransferSyntax, syntax))
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == LOSSLESS_SYNTAXES[syntax]
    loop, plain = dicom.read_dicom(path), dicom.read_dicom(tmp_path / "loop.plain.dcm")
    assert np.array_equal(loop.frames, frames.astype(np.float32)) and np.array_equal(loop.frames, plain.frames)
    assert loop.spacing_mm == plain.spacing_mm == (0.3, 0.4) and loop.frame_ms == pytest.approx(33.3)


def test_a_lossless_jpeg_frame_claiming_another_size_is_refused_before_gdcm_sees_it(tmp_path, monkeypatch):
    """GDCM allocates the picture a frame's own header (SOF3) states: one claiming 4000 x 4000 in a
    32 x 32 file is ``bad_geometry`` from its header, and no child is started."""
    import struct

    import gdcm
    import pydicom
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEGLosslessSV1

    source = gdcm_compressed(tmp_path / "a.dcm", np.full((1, 32, 32), 7, np.uint8), gdcm.TransferSyntax.JPEGLosslessProcess14_1)
    frame = next(generate_frames(pydicom.dcmread(source).PixelData, number_of_frames=1))
    at = frame.index(b"\xff\xc3") + 5  # SOF3: marker, length, precision, then rows and columns
    assert dicom.read_dicom(encapsulated_dicom(tmp_path / "b.dcm", frame, JPEGLosslessSV1)).frames.max() == 7
    monkeypatch.setattr(dicom, "decode_in_child", lambda *args: pytest.fail("a child was started"))
    with pytest.raises(StudyError, match="^bad_geometry.*states 4000 x 4000 pixels"):
        dicom.read_dicom(encapsulated_dicom(tmp_path / "c.dcm", frame[:at] + struct.pack(">HH", 4000, 4000) + frame[at + 4:],
                                            JPEGLosslessSV1))


def test_gdcm_never_decodes_in_this_process_and_12_bit_jpeg_is_refused_as_the_readme_says(tmp_path, monkeypatch):
    """GDCM would be pydicom's first choice for every JPEG syntax once installed: none of this
    process's decoders holds it. 8-bit JPEG extended decodes (Pillow); 12-bit, which Pillow and
    pydicom's GDCM plugin both decline, is refused with a status that says so; without GDCM, lossless
    JPEG and JPEG-LS are refused as syntaxes no decoder here reads."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless

    for syntax in AllTransferSyntaxes:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            continue
        assert "gdcm" not in decoder.available_plugins, syntax.name
    assert dicom.read_dicom(encapsulated_dicom(tmp_path / "a.dcm", _jpeg(32, 32), JPEGExtended12Bit)).frames.shape == (1, 32, 32)
    with pytest.raises(StudyError, match="unsupported_transfer_syntax.*12-bit"):
        dicom.read_dicom(encapsulated_dicom(tmp_path / "b.dcm", _jpeg(32, 32), JPEGExtended12Bit, bits_stored=12))
    monkeypatch.setattr(dicom, "gdcm_decodes", lambda syntax: False)
    with pytest.raises(StudyError, match="unsupported_transfer_syntax.*pylibjpeg"):
        dicom.read_dicom(encapsulated_dicom(tmp_path / "c.dcm", _jpeg_ls(32, 32), JPEGLSLossless))
    with pytest.raises(StudyError, match="unsupported_transfer_syntax.*pylibjpeg"):
        dicom.read_dicom(encapsulated_dicom(tmp_path / "d.dcm", _jpeg(32, 32), JPEGLosslessSV1))


@pytest.mark.parametrize("decode, reason, detail", [
    ("import time\ntime.sleep(60)", "unreadable_file", "GDCM took over 2 s"),
    ("while True: pass", "unreadable_file", "GDCM took over 2 s"),  # the CPU limit, or the wall clock
    ("import os\nos.abort()", "unreadable_file", "ended with signal 6"),  # as GDCM's asserts end it
    ("raise RuntimeError('no frame')", "unreadable_file", "RuntimeError: no frame"),
    ("data = bytearray(2 << 30)", "unreadable_file", "MemoryError"),  # 2 GB beside a 1 kB picture: over its limit
    ("import numpy, sys\nnumpy.save(sys.argv[2], numpy.zeros((5, 40, 47), numpy.uint8))", "bad_geometry", "(5, 40, 47)"),
    ("import numpy, sys\nnumpy.save(sys.argv[2], numpy.array([{}]), allow_pickle=True)", "unreadable_file", "no pictures"),
    ("pass", "unreadable_file", "no pictures"),
], ids=["sleeps", "spins", "aborts", "raises", "allocates", "other-shape", "pickled", "writes-nothing"])
def test_whatever_the_gdcm_child_does_the_study_gets_a_reason(tmp_path, monkeypatch, decode, reason, detail):
    """The child process's decoding replaced by each way a decoder fails on crafted data: stalls,
    spins, ends its process, raises, allocates without bound, gives pictures of another size or an
    object to unpickle, gives nothing. Each is the study's status, within the time limit."""
    import gdcm

    path = gdcm_compressed(tmp_path / "loop.dcm", np.zeros((5, 40, 48), np.uint8), gdcm.TransferSyntax.JPEGLSLossless)
    # 2 s where the child is meant to overrun it; otherwise the usual 20 s, so a slow start on a busy
    # machine is never mistaken for a stall.
    monkeypatch.setattr(dicom, "CHILD_BASE_S", 2.0 if "took over" in detail else dicom.CHILD_BASE_S)
    monkeypatch.setattr(dicom, "CHILD_DECODE", decode)
    with pytest.raises(StudyError, match=rf"^{reason}") as refused:
        dicom.read_dicom(path)
    assert detail in refused.value.detail


@pytest.mark.parametrize("damage", ["flip", "cut", "zero", "insert"])
@pytest.mark.parametrize("syntax", ["JPEGLosslessProcess14_1", "JPEGLSLossless"])
def test_a_damaged_lossless_loop_is_read_or_refused_never_an_error(tmp_path, syntax, damage):
    """Damage in a lossless JPEG or JPEG-LS loop's frames (a few of many cases tried: the experiment
    log): read, or refused as a study; never another exception."""
    import gdcm

    frames = np.random.default_rng(4).integers(0, 256, (5, 40, 48), dtype=np.uint8)
    path = gdcm_compressed(tmp_path / "loop.dcm", frames, getattr(gdcm.TransferSyntax, syntax))
    data = bytearray(path.read_bytes())
    at = len(data) - 1500  # inside the second-to-last frames
    if damage == "flip":
        data[at:at + 40] = bytes(b ^ 0x5A for b in data[at:at + 40])
    elif damage == "cut":
        data = data[:at]
    elif damage == "zero":
        data[at:at + 64] = bytes(64)
    else:
        data[at:at] = b"\xff\x00\x07"
    path.write_bytes(bytes(data))
    try:
        loop = dicom.read_dicom(path)
    except StudyError as refused:
        assert refused.reason in {"unreadable_file", "bad_geometry"}, refused
    else:
        assert loop.frames.shape == (5, 40, 48)


def _segment(code: int, body: bytes) -> bytes:
    """A JPEG marker segment: 0xFF, its code, its length (2 bytes, itself included), its body."""
    return bytes([0xFF, code]) + (len(body) + 2).to_bytes(2, "big") + body


def _jpeg_ls(rows: int, cols: int, before_scan: bytes = b"") -> bytes:
    """A one-component 8-bit JPEG-LS frame as T.87 lays it out (start of image; SOF55: precision, rows,
    columns, one component sampled 1 x 1; ``before_scan``; SOS: that component, NEAR 0, no interleave),
    then coded bytes (never 0xFF) and the end of image: a frame header as CharLS reads it."""
    frame_header = _segment(0xF7, bytes([8]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0]))
    scan_header = _segment(0xDA, bytes([1, 1, 0, 0, 0, 0]))
    return b"\xff\xd8" + frame_header + before_scan + scan_header + bytes(range(1, 101)) + b"\xff\xd9"


_LSE_OVERSIZE = _segment(0xF8, bytes([4, 4]) + (5000).to_bytes(4, "big") + (5000).to_bytes(4, "big"))


@pytest.mark.parametrize("frame, reason, detail", [
    (_jpeg_ls(46000, 46000), "bad_geometry", "states 46000 x 46000 pixels"),  # CharLS 2.4.2: 4 GB, 10 s
    (_jpeg_ls(16, 32), "bad_geometry", "states 16 x 32 pixels"),
    (_jpeg_ls(32, 33), "bad_geometry", "states 32 x 33 pixels"),
    (_jpeg_ls(0, 32), "unreadable_file", "no JPEG-LS frame header"),  # 0: the size is to come later
    (_jpeg_ls(32, 32, before_scan=_LSE_OVERSIZE), "unreadable_file", "oversize-dimension"),
    (_jpeg_ls(32, 32)[:-2] + _LSE_OVERSIZE + b"\xff\xd9", "unreadable_file", "oversize-dimension"),  # after the scan
    (_jpeg_ls(32, 32)[:9], "unreadable_file", "marker segment"),  # cut inside its frame header
    (_jpeg_ls(32, 32)[2:], "unreadable_file", "no JPEG start of image"),
    (_jpeg(32, 32), "unreadable_file", "another JPEG process"),  # a baseline JPEG under a JPEG-LS syntax
    (b"\xff\xd8" + _segment(0xDA, bytes(6)) + bytes(40), "unreadable_file", "no JPEG-LS frame header"),
    (_jpeg_ls(32, 32), "unreadable_file", "could not be decoded by GDCM"),  # a sound header: on to the decoder
], ids=["huge", "smaller", "one-column-more", "size-to-come", "oversize-lse", "oversize-lse-after-scan", "cut-header",
        "no-soi", "baseline-jpeg", "no-sof", "sound"])
def test_a_jpeg_ls_frame_is_sized_by_its_header_before_a_decoder_sees_it(tmp_path, frame, reason, detail):
    """A JPEG-LS decoder allocates the picture its frame's own header states, with no limit of its own
    (CharLS, through pyjpegls, took 4 GB and 10 s to refuse a 32 x 32 file whose frame claims 46000 x
    46000). Every frame whose header states another size, or none that can be read, is refused from
    its header; a sound one goes on to GDCM (in its child process), which finds no scan it can decode."""
    from pydicom.uid import JPEGLSLossless

    from echoef.io import dicom

    with pytest.raises(StudyError, match=rf"^{reason}.*{detail}"):
        dicom.read_dicom(encapsulated_dicom(tmp_path / "a.dcm", frame, JPEGLSLossless))


@given(st.binary(max_size=64))
def test_a_jpeg_ls_frame_header_gives_a_size_or_a_reason(tail):
    """Any bytes, alone or after a sound start: a size of 1-65535 a side, or ValueError with the
    reason; never another exception."""
    from echoef.io import dicom

    for frame in (tail, _jpeg_ls(32, 32)[:15] + tail, b"\xff\xd8" + tail, _jpeg_ls(32, 32)[:-2] + tail):
        try:
            size = dicom.jpeg_ls_frame_size(frame)
        except ValueError:
            continue
        assert len(size) == 2 and all(1 <= side <= 65535 for side in size)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"], ids=["uncompressed", "jpeg"])
def test_a_damaged_pixel_description_is_an_unreadable_file_not_a_missing_plugin(tmp_path, syntax):
    """PixelRepresentation's VR zeroed to 'U\\x00' (found by damaging files byte by byte): pydicom's
    decoder meets it as a NotImplementedError, which read as ``unsupported_transfer_syntax``, as if a
    plugin would help, and the regions' values, whose VR depends on it, as unreadable: ``no_spacing``
    without --spacing-mm. It is the file's damage, found before anything else: ``unreadable_file``."""
    from pydicom.uid import JPEGBaseline8Bit

    from echoef.io import dicom

    if syntax == JPEGBaseline8Bit:
        path = encapsulated_dicom(tmp_path / "a.dcm", _jpeg(32, 32), JPEGBaseline8Bit)
    else:
        path = write_dicom(tmp_path / "a.dcm", np.zeros((2, 32, 32)), region_spacing_mm=(0.3, 0.3))
    assert dicom.read_dicom(path).frames.shape[1:] == (32, 32)
    tag = b"\x28\x00\x03\x01US"  # (0028,0103) PixelRepresentation, explicit VR little endian
    assert path.read_bytes().count(tag) == 1
    path.write_bytes(path.read_bytes().replace(tag, tag[:5] + b"\x00"))
    for spacing_mm in (None, (0.3, 0.3)):
        with pytest.raises(StudyError, match=r"^unreadable_file: a\.dcm: a damaged DICOM value .*Unknown Value Representation"):
            dicom.read_dicom(path, spacing_mm)


def test_the_frames_checked_are_the_ones_the_decoder_is_given(tmp_path, monkeypatch):
    """A two-frame file whose basic offset table frames two 32 x 32 pictures and whose Extended Offset
    Table, which pydicom's decoder follows, points at a third fragment claiming 4000 x 4000: the check
    finds its frames as the decoder does, so the bomb is refused before Pillow decodes a pixel (read by
    the offsets alone, it was decoded: 16 M pixels)."""
    import struct

    import pydicom
    from PIL import ImageFile
    from pydicom.uid import JPEGBaseline8Bit

    from echoef.io import dicom

    good, bomb = _jpeg(32, 32), _jpeg(32, 32, claimed=(4000, 4000))

    def item(data: bytes) -> bytes:
        data += b"\x00" * (len(data) % 2)
        return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(data)) + data

    second = len(item(good))
    path = encapsulated_dicom(tmp_path / "a.dcm", b"", JPEGBaseline8Bit, frames=[good, good], rows=32, cols=32)
    dataset = pydicom.dcmread(path)
    dataset.PixelData = item(struct.pack("<2I", 0, second)) + item(good) + item(good) + item(bomb)
    dataset.ExtendedOffsetTable = struct.pack("<2Q", 0, 2 * second)
    dataset.ExtendedOffsetTableLengths = struct.pack("<2Q", len(good), len(bomb))
    dataset.save_as(path, enforce_file_format=True)
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or load(image))
    with pytest.raises(StudyError, match="bad_geometry.*frame 1 states 4000 x 4000 pixels"):
        dicom.read_dicom(path)
    assert decoded == []


@pytest.mark.parametrize("frame, reason", [
    (_jpeg(32, 32, claimed=(30000, 30000)), "decompression bomb"),  # its own header: 900 M pixels
    (b"\xff\xd8" + bytes(100), "cannot identify"),  # a JPEG start, then nothing of one
    (_jpeg(32, 32)[:-300], "Truncated File Read"),  # cut short
], ids=["bomb-header", "not-jpeg", "truncated"])
def test_a_broken_frame_under_a_decodable_syntax_is_an_unreadable_file_not_a_missing_plugin(tmp_path, frame, reason):
    """A decoder for the syntax is installed and the data itself fails: no plugin would help, so the
    study is ``unreadable_file`` with the decoder's reason, not ``unsupported_transfer_syntax``."""
    from pydicom.uid import JPEGBaseline8Bit

    from echoef.io import dicom

    with pytest.raises(StudyError, match="unreadable_file") as caught:
        dicom.read_dicom(encapsulated_dicom(tmp_path / "a.dcm", frame, JPEGBaseline8Bit))
    assert re.search(reason, str(caught.value)), caught.value


@pytest.mark.parametrize("claimed", [(4000, 4000), (16, 16), (32, 33)], ids=["larger", "smaller", "one-column-more"])
def test_a_compressed_frame_whose_own_header_states_another_size_is_refused_before_decoding(tmp_path, monkeypatch, claimed):
    """A 32 x 32 file whose JPEG frame says it is another size (4000 x 4000: 16 M pixels, within
    Pillow's own limit, so the decoder would inflate it) is refused by its size before any pixel is
    decoded; a frame that states the file's size still decodes."""
    from PIL import ImageFile
    from pydicom.uid import JPEGBaseline8Bit

    from echoef.io import dicom

    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or load(image))
    with pytest.raises(StudyError, match=rf"bad_geometry.*{claimed[0]} x {claimed[1]} pixels in its own header") as caught:
        dicom.read_dicom(encapsulated_dicom(tmp_path / "a.dcm", _jpeg(32, 32, claimed=claimed), JPEGBaseline8Bit))
    assert decoded == [], caught.value
    assert dicom.read_dicom(encapsulated_dicom(tmp_path / "b.dcm", _jpeg(32, 32), JPEGBaseline8Bit)).frames.shape == (1, 32, 32)
    assert decoded == [(32, 32)]


def test_a_dicom_far_larger_than_its_pictures_is_refused_before_it_is_read(tmp_path):
    """A 40 x 30 two-frame DICOM whose pixel element claims 2 GB (a sparse file: a few kB on disk). pydicom
    read it whole and decoded it as 1.8 million frames: 12.8 GB of memory and 14 s before the frame
    count refused it, so a 4 GB one would end the batch. Read in a child process held to 1.5 GB of
    address space, it is refused (``unreadable_file``) from its size; a file of its own size still reads.
    So is one whose Extended Offset Table claims 2 GB: it is among the values that describe the pixels,
    read whole when they are converted, so they are converted only once the file's size has passed."""
    import resource  # noqa: F401 - the child uses it; fail here, not there, where it is missing
    import struct

    small = write_dicom(tmp_path / "a4c_small.dcm", np.zeros((2, 40, 30)), region_spacing_mm=(0.3, 0.3))
    data = small.read_bytes()
    at = data.index(struct.pack("<HH", 0x7FE0, 0x0010))  # Pixel Data, explicit VR: tag, VR, 2 reserved, length
    claimed = 2 << 30
    with open(tmp_path / "a4c_big.dcm", "wb") as handle:
        handle.write(data[:at + 8] + struct.pack("<I", claimed))
        handle.truncate(at + 12 + claimed)
    with open(tmp_path / "a4c_table.dcm", "wb") as handle:  # (7FE0,0001) OV of 2 GB, then the pixels
        handle.write(data[:at] + struct.pack("<HH2sHI", 0x7FE0, 0x0001, b"OV", 0, claimed))
        handle.seek(at + 12 + claimed)
        handle.write(data[at:])
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))\n"
              "from echoef.io import imagefile; from echoef.errors import StudyError\n"
              "for name in sys.argv[1:]:\n"
              "    try: print(name, imagefile.read_loop(name).frames.shape)\n"
              "    except StudyError as error: print(name, error)\n")
    result = subprocess.run([sys.executable, "-c", script, str(small), str(tmp_path / "a4c_big.dcm"), str(tmp_path / "a4c_table.dcm")],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-800:]
    lines = result.stdout.splitlines()
    assert lines[0].endswith("(2, 40, 30)")
    for line, name in zip(lines[1:], ("a4c_big.dcm", "a4c_table.dcm"), strict=True):
        assert f"unreadable_file: {name}:" in line and "a file far larger than what it declares" in line, lines


def test_a_deflated_dicom_is_inflated_to_disk_within_a_limit_never_into_memory(tmp_path):
    """The deflated transfer syntax: pydicom inflates the whole dataset into memory (a 400 kB file took
    1 GB) and fails with zlib's error on a cut stream. A deflated file reads as its original does; one
    cut short is ``unreadable_file``; and, in a child process whose limit is lowered to 128 MiB, a
    100 MB and a 200 MB bomb (a few hundred kB each) are refused, from the size they inflate to
    (far more than their 5 x 48 x 40 pixels) or at the limit, its peak memory growing by less than
    64 MB. Before, a cut one ended in zlib.error and each bomb was inflated in memory."""

    frames = np.random.default_rng(0).integers(0, 255, (5, 48, 40))
    original = write_dicom(tmp_path / "a.dcm", frames, region_spacing_mm=(0.3, 0.3), frame_ms=20)
    deflated = deflated_copy(original, tmp_path / "d.dcm")
    loop = imagefile.read_loop(deflated)
    assert np.array_equal(loop.frames, imagefile.read_loop(original).frames) and loop.spacing_mm == (0.3, 0.3)
    assert loop.frame_ms == 20 and dicom.header_facts(deflated) == ("P001", "1.2.826.0.1.1", 5)
    data = deflated.read_bytes()
    for cut in (len(data) - 1, len(data) - 3000, 400):
        (tmp_path / "cut.dcm").write_bytes(data[:cut])
        for read in (imagefile.read_loop, dicom.header_facts):
            with pytest.raises(StudyError) as refused:
                read(tmp_path / "cut.dcm")
            assert refused.value.reason == "unreadable_file" and "deflated dataset" in refused.value.detail
    under, over = (deflated_copy(original, tmp_path / name, size) for name, size in (("b100.dcm", 100 << 20), ("b200.dcm", 200 << 20)))
    assert under.stat().st_size < 1 << 20 and over.stat().st_size < 1 << 20
    script = (PEAK_KB + "import sys\n"
              "from echoef.io import dicom, imagefile; from echoef.errors import StudyError\n"
              "dicom.MAX_INFLATED_BYTES = 128 << 20\n"
              "print(imagefile.read_loop(sys.argv[1]).frames.shape)\n"
              "before = peak_kb()\n"
              "for name in sys.argv[2:]:\n"
              "    try: print(name, imagefile.read_loop(name).frames.shape)\n"
              "    except StudyError as error: print(name, error)\n"
              "print('grew_kb', peak_kb() - before)\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run([sys.executable, "-c", script, str(original), str(under), str(over)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr[-800:]
    lines = result.stdout.splitlines()
    assert lines[0] == "(5, 48, 40)" and "a file far larger than what it declares" in lines[1], lines
    assert "inflates to more than 134217728 bytes" in lines[2], lines
    assert int(lines[3].split()[1]) < 64 << 10, lines
    assert not list(scratch.iterdir())  # each inflated copy is removed after its read


def test_a_gzip_bomb_is_refused_inflated_little_past_what_its_header_declares(tmp_path, monkeypatch):
    """A 40 x 30 NIfTI followed by 256 MB of zeros, compressed to a few hundred kB: refused once its stream
    runs 1 MiB past the declared pixels, the rest never inflated. A few bytes of padding are read."""
    import gzip

    path = tmp_path / "frame.nii"
    nibabel.save(nibabel.Nifti1Image(np.full((30, 40), 7, np.uint8), np.diag([0.3, 0.3, 1, 1])), path)
    with gzip.open(tmp_path / "frame.nii.gz", "wb", compresslevel=1) as stream:
        stream.write(path.read_bytes())
        zeros = bytes(1 << 24)
        for _ in range(16):
            stream.write(zeros)
    inflated = []
    read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, size=-1: inflated.append(len(chunk := read(self, size))) or chunk)
    with pytest.raises(StudyError, match=r"^unreadable_file: frame.nii.gz: its gzip stream holds more than 1048576 bytes "
                                         rf"past the {352 + 1200} its header declares$"):
        imagefile.read_loop(tmp_path / "frame.nii.gz")
    assert sum(inflated) < 2 << 20  # its header read by nibabel, the declared bytes and 1 MiB + 1 past them
    monkeypatch.undo()
    (tmp_path / "padded.nii.gz").write_bytes(gzip.compress(path.read_bytes() + bytes(4000)))
    loop = imagefile.read_loop(tmp_path / "padded.nii.gz")
    assert loop.frames.shape == (1, 40, 30) and (loop.frames == 7).all()
    # A header whose pixels would start gigabytes in: refused from the header, nothing inflated.
    raw = bytearray(path.read_bytes())
    raw[108:112] = np.asarray([3e9], "<f4").tobytes()  # vox_offset
    far = tmp_path / "far.nii.gz"
    far.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(StudyError, match="unreadable_file: far.nii.gz: its pixels would start 3000000000 bytes in"):
        imagefile.read_loop(far)
    damaged = tmp_path / "short.nii.gz"
    damaged.write_bytes(gzip.compress(path.read_bytes())[:-200])
    with pytest.raises(StudyError, match="unreadable_file"):
        imagefile.read_loop(damaged)


def test_a_nii_gz_damaged_near_its_end_is_refused_not_read_as_other_pixels(tmp_path):
    """Found by tests/test_fuzz.py: 64 bytes zeroed near the end of a .nii.gz that SimpleITK wrote still
    inflate, without an error, to every byte its header declares (other pixels), and ITK read the loop
    with 285 pixels zero-filled. Only the stream's end tells (its end marker and checksum), so the
    stream is inflated to its end."""
    import gzip
    import io

    loop = np.random.default_rng(0).integers(0, 255, (5, 48, 40)).astype(np.uint8)
    image = sitk.GetImageFromArray(loop)
    image.SetSpacing((0.3, 0.3, 1.0))
    sitk.WriteImage(image, str(tmp_path / "loop.nii.gz"))
    damaged = bytearray((tmp_path / "loop.nii.gz").read_bytes())
    damaged[9446:9446 + 64] = bytes(64)
    (tmp_path / "loop.nii.gz").write_bytes(bytes(damaged))
    with gzip.open(io.BytesIO(bytes(damaged))) as stream:  # the declared bytes inflate, changed
        declared = stream.read(352 + loop.size)
    assert len(declared) == 352 + loop.size and declared[352:] != loop.tobytes()
    with pytest.raises(StudyError, match=r"^unreadable_file: loop.nii.gz: truncated or corrupt gzip \(Compressed file "
                                         r"ended before the end-of-stream marker was reached\)$"):
        imagefile.read_loop(tmp_path / "loop.nii.gz", (0.3, 0.3))


@settings(max_examples=200, deadline=None)
@given(reviews=st.lists(st.text(max_size=60), min_size=3, max_size=6))
def test_a_row_files_review_text_cannot_bend_the_agreement_report(reviews):
    """Whatever text a row file holds as its review (merge reads row files anyone may edit), the
    agreement report's review table keeps its shape: one line per kind, seven cells each, and every
    kind named is a reason's name or `unrecognised`."""
    from echoef.reporting.cohort import review_lines
    from echoef.stats import agreement

    table = pd.DataFrame({"patient": [f"p{i}" for i in range(len(reviews))], "status": "ok",
                          "ef": np.linspace(30, 60, len(reviews)), "ef_ref": 45.0, "review": reviews})
    flags = agreement.review_agreement(table, n_resamples=20)
    assert all(name == "any" or name == "unrecognised" or agreement.REASON_NAME.fullmatch(name) for name in flags["kinds"])
    lines = review_lines(flags)
    rows = lines[lines.index("|---|---|---|---|---|---|---|") + 1:]
    assert len(rows) == len(flags["kinds"]) and all(row.count("|") == 8 for row in rows)


# ---- 8. a file read whole is a regular file of its kind's size -----------------------------------------

def _within(seconds, function, *args):
    """``function(*args)``'s result or exception, or AssertionError if it has not returned in
    ``seconds`` (it is left blocked in a daemon thread): a hang fails the test instead of the suite."""
    import threading

    outcome = {}

    def call():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__}{args} blocked"
    return outcome


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "too_large", "largest", "missing"])
def test_a_file_read_whole_is_only_a_regular_one_within_its_size(tmp_path, kind):
    from echoef.io import untrusted

    path = tmp_path / "calibrator.json"
    if kind == "fifo":
        os.mkfifo(path)  # no writer will come: opening it for reading as usual would wait for ever
    elif kind == "device":
        path.symlink_to("/dev/zero")  # reads for ever
    elif kind == "folder":
        path.mkdir()
    elif kind in ("too_large", "largest"):
        path.write_bytes(b"7" * (1001 if kind == "too_large" else 1000))
    read = _within(10, untrusted.read_bounded, path, 1000)
    checked = _within(10, untrusted.regular_file, path)
    if kind == "largest":
        assert read["value"] == b"7" * 1000 and checked["value"] == path
    elif kind == "missing":
        assert isinstance(read["error"], FileNotFoundError) and isinstance(checked["error"], FileNotFoundError)
    elif kind == "too_large":
        assert "1001 bytes, more than such a file holds (1000)" in str(read["error"]) and checked["value"] == path
    else:
        for outcome in (read, checked):
            assert isinstance(outcome["error"], ValueError) and "is not a regular file" in str(outcome["error"])


def test_no_command_waits_on_a_fifo_or_reads_a_device_handed_in(tmp_path, tiny_model, phantom_root):
    """Each file a command reads whole, handed in as a FIFO or a link to /dev/zero, in one process
    with a deadline: options are refused in one line (status 2), a study's own file fails that
    study or its reference, a broken row is named in merge's summary; nothing blocks."""
    fifo, zero = tmp_path / "fifo.json", tmp_path / "zero.json"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    patient = phantom_root / "database_nifti" / "patient0001"
    cfg_fifo = tmp_path / "cfg" / "patient0001"
    shutil.copytree(patient, cfg_fifo)
    (cfg_fifo / "Info_2CH.cfg").unlink()
    os.mkfifo(cfg_fifo / "Info_2CH.cfg")
    model = ["--model", tiny_model / "segmenter.pt", "--device", "cpu"]
    calibrated = [*model, "--calibrator", tiny_model / "calibrator.json"]
    echoef_in_process("predict", patient, *calibrated, "--out", tmp_path / "rows")
    row = tmp_path / "rows" / "patient0001" / "patient0001_row.json"
    assert row.is_file()
    row.unlink()
    os.mkfifo(row)
    image_fifo = tmp_path / "a4c.nii.gz"
    os.mkfifo(image_fifo)
    out_marked = tmp_path / "marked"
    out_marked.mkdir()
    os.mkfifo(out_marked / atomic.OWNER_MARK)
    cases = {
        "calibrator": ["predict", patient, *model, "--calibrator", fifo, "--out", tmp_path / "o1"],
        "calibrator_zero": ["predict", patient, *model, "--calibrator", zero, "--out", tmp_path / "o2"],
        "novelty": ["predict", patient, *calibrated, "--novelty", zero, "--out", tmp_path / "o3"],
        "model": ["predict", patient, "--model", fifo, "--calibrator", tiny_model / "calibrator.json", "--out", tmp_path / "o4"],
        "views": ["predict", "--dicom", patient, *calibrated, "--views", fifo, "--out", tmp_path / "o5"],
        "site_table": ["site-calibrate", zero, "--out", tmp_path / "o6"],
        "owner_mark": ["predict", patient, *calibrated, "--out", out_marked],
        "merge_row": ["merge", tmp_path / "rows"],
        "cfg": ["ef", tmp_path / "cfg", "--out", tmp_path / "ef.csv"],
        "image": ["predict", *calibrated, "--4ch-ed", image_fifo, "--4ch-es", image_fifo, "--out", tmp_path / "o7"],
    }
    script = ("import contextlib, io, json, sys\nfrom echoef.app import cli\n"
              "for name, args in json.loads(sys.argv[1]).items():\n"
              "    err = io.StringIO()\n"
              "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
              "        status = cli.main(args)\n"
              "    print(json.dumps([name, status, err.getvalue()]), flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps({k: list(map(str, v)) for k, v in cases.items()})],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    results = {name: (status, err) for name, status, err in map(json.loads, done.stdout.splitlines())}
    assert list(results) == list(cases), done.stderr[-2000:]
    for name in ("calibrator", "calibrator_zero", "novelty", "views", "site_table", "model"):
        status, err = results[name]
        assert status == 2 and "is not a regular file" in err and len(err.strip().splitlines()) == 1, (name, err)
    assert results["owner_mark"][0] == 2 and "holds files EchoEF did not write there" in results["owner_mark"][1]
    merged = pd.read_csv(tmp_path / "rows" / "summary.csv")
    assert results["merge_row"][0] == 1 and merged["status"].tolist() == ["unreadable_row"]
    assert "is not a regular file" in merged["detail"].iloc[0]
    table = pd.read_csv(tmp_path / "ef.csv")
    assert results["cfg"][0] == 0 and table["ef"].notna().all() and table["ef_ref"].isna().all()
    image = pd.read_csv(tmp_path / "o7" / "summary.csv").iloc[0]  # a frame handed in as a FIFO fails its study
    assert results["image"][0] == 1 and image["status"] == "unreadable_file" and "not a regular file" in image["detail"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".dcm", ".avi"])
def test_a_loop_of_more_frames_than_any_echo_is_refused_from_its_header(tmp_path, monkeypatch, suffix):
    """The frame count is bounded by itself, in every loop format: tiny pictures must not let a file
    hold millions of frames within the pixel limit (each would be segmented). The bound is lowered
    here to 5 so that the files stay small."""
    from echoef.io import video

    monkeypatch.setattr(imagefile, "MAX_LOOP_FRAMES", 5)
    paths = {}
    for count in (5, 6):
        frames = np.random.default_rng(count).integers(0, 255, (count, 32, 40)).astype(np.uint8)
        path = tmp_path / f"a4c_{count}{suffix}"
        if suffix == ".dcm":
            write_dicom(path, frames, region_spacing_mm=(0.3, 0.3))
        elif suffix == ".avi":
            video.write_video(path, frames, codec="mjpeg")
        else:
            image = sitk.GetImageFromArray(frames)
            image.SetSpacing((0.3, 0.3, 1.0))
            sitk.WriteImage(image, str(path))
        paths[count] = path
    assert len(imagefile.read_loop(paths[5]).frames) == 5
    with pytest.raises(StudyError, match=r"bad_geometry: a4c_6.*6 frames of 32 x 40 pixels \(at most 5\)"):
        imagefile.read_loop(paths[6])


def test_a_batch_never_starts_more_processes_than_cores(monkeypatch):
    """`echoef ef --jobs 100000` on a cohort: as many processes as cores at most (each imports the
    whole stack; more only fill memory), one row per study in order whatever the count."""
    from echoef.app import batch

    started = []

    class Pool:
        def __init__(self, workers):
            started.append(workers)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, function, items, chunksize=1):
            return map(function, items)

    monkeypatch.setattr(batch, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 3)
    rows = batch.each_study(range(10), str, lambda item: {"status": "ok", "value": item}, "test", workers=100_000)
    assert started == [3] and [row["value"] for row in rows] == list(range(10))
    batch.each_study(range(2), str, lambda item: {"status": "ok"}, "test", workers=100_000)
    assert started == [3, 2]
    batch.each_study(range(5), str, lambda item: {"status": "ok"}, "test", workers=1)
    assert started == [3, 2]
