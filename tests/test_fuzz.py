"""Readers fed truncated, corrupted and oversized files: a clean StudyError or a valid frame, never
another exception, a crash or a hang."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings, strategies as st

from echoef import camus

FUZZ = settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _image(path: Path, compress: bool) -> None:
    image = sitk.GetImageFromArray(np.arange(40 * 30, dtype=np.uint8).reshape(40, 30))
    image.SetSpacing((0.3, 0.15))
    sitk.WriteImage(image, str(path), useCompression=compress)


def _read_or_study_error(path: Path) -> None:
    try:
        array, spacing = camus.read_image(path)
    except camus.StudyError as error:
        assert error.reason in {"unreadable_file", "bad_geometry", "bad_spacing", "missing_frame"}
        return
    assert array.ndim == 2 and min(spacing) > 0


@FUZZ
@given(cut=st.floats(0.0, 0.999), flips=st.lists(st.tuples(st.floats(0, 0.999), st.integers(0, 255)), max_size=6),
       where=st.sampled_from(["gzip", "payload"]))
def test_nifti_truncated_or_corrupted(tmp_path, cut, flips, where):
    path = tmp_path / "frame.nii.gz"
    _image(path, compress=True)
    data = bytearray(path.read_bytes() if where == "gzip" else gzip.decompress(path.read_bytes()))
    for position, value in flips:
        data[int(position * len(data))] = value
    data = bytes(data[: max(1, int(len(data) * (1 - cut)))]) if cut > 0.5 else bytes(data)
    path.write_bytes(data if where == "gzip" else gzip.compress(data))
    _read_or_study_error(path)


MHD_FIELDS = {
    "DimSize": st.sampled_from(["30 40", "30 40 1", "30 40 2", "100000 100000", "0 40", "-3 4", "30", "a b"]),
    "ElementSpacing": st.sampled_from(["0.3 0.15", "0 0.15", "-1 1", "nan 1", "1e300 1", "x"]),
    "ElementType": st.sampled_from(["MET_UCHAR", "MET_SHORT", "MET_DOUBLE", "MET_NONSENSE"]),
    "ElementDataFile": st.sampled_from(["frame.raw", "missing.raw", ""]),
}


@FUZZ
@given(fields=st.fixed_dictionaries({}, optional=MHD_FIELDS), raw_fraction=st.floats(0, 1.5))
def test_metaimage_header_and_raw(tmp_path, fields, raw_fraction):
    path = tmp_path / "frame.mhd"
    _image(path, compress=False)
    lines = []
    for line in path.read_text().splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {fields[key]}" if key in fields else line)
    path.write_text("\n".join(lines) + "\n")
    raw = tmp_path / "frame.raw"
    payload = raw.read_bytes()
    raw.write_bytes((payload * 2)[: int(len(payload) * raw_fraction)])
    _read_or_study_error(path)


@FUZZ
@given(text=st.text(max_size=300))
def test_random_cfg_text(tmp_path, text):
    cfg = tmp_path / "Info_2CH.cfg"
    cfg.write_bytes(text.encode("utf-8", "replace"))
    fields = camus.read_cfg(cfg)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    study = camus.Study("patient0001", "2023", {}, {"2CH": fields})
    try:
        row = study.cohort_row()
    except camus.StudyError as error:
        assert error.reason == "bad_cfg"
    else:
        assert set(row) >= {"patient", "ef_ref", "quality_2ch"}


def test_oversized_header_is_refused_before_reading(tmp_path):
    path = tmp_path / "frame.mhd"
    _image(path, compress=False)
    path.write_text(path.read_text().replace("DimSize = 30 40", "DimSize = 100000 100000"))
    with pytest.raises(camus.StudyError, match="bad_geometry"):
        camus.read_image(path)
