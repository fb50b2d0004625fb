import numpy as np
import pytest

from echoef.errors import IngestError
from echoef.io import camus, ingest

from conftest import CAMUS, CAMUS_2019, needs_shared


@needs_shared
def test_reads_2023_release_with_header_spacing():
    study = camus.read_study(CAMUS / "database_nifti" / "patient0001")
    assert study.layout == "2023" and study.ef_ref == 54.0
    f2, f4 = study.frames[("2CH", "ED")], study.frames[("4CH", "ED")]
    assert f2.image.shape == (224, 224) and f2.spacing_mm == pytest.approx((0.534875, 0.754875), abs=1e-5)
    assert f4.spacing_mm == pytest.approx((0.308, 0.308))
    assert set(np.unique(f4.label)) == {0, 1, 2, 3}
    row = study.cohort_row()
    assert row["quality_2ch"] == "Good" and row["sex"] == "F" and row["age"] == 56 and np.isnan(row["edv_ref_ml"])


@needs_shared
def test_reads_2019_release_anisotropic_with_its_own_reference():
    study = camus.read_study(CAMUS_2019 / "patient0001")
    frame = study.frames[("4CH", "ED")]
    assert study.layout == "2019"
    assert frame.image.shape == (778, 549) and frame.spacing_mm == pytest.approx((0.154, 0.308))
    row = study.cohort_row()
    assert row["ef_ref"] == 63.2 and row["ef_ref_key"] == "LVef"
    assert row["edv_ref_ml"] == 94.0 and row["esv_ref_ml"] == 34.6


@needs_shared
def test_split_lists_of_the_release():
    lists = camus.read_split_lists(CAMUS)
    assert [len(lists[k]) for k in ("train", "val", "test")] == [349, 50, 50]
    assert camus.read_split_lists(CAMUS_2019) is None


def test_reads_synthetic_files_and_cfg(phantom_root):
    folders = camus.find_patients(phantom_root)
    assert len(folders) == 12
    study = camus.read_study(folders[0])
    assert study.frames[("2CH", "ES")].spacing_mm == pytest.approx((0.85, 0.95))
    assert study.frames[("4CH", "ES")].image.shape == (256, 288)


def test_cfg_tolerates_junk(tmp_path):
    cfg = tmp_path / "Info_2CH.cfg"
    cfg.write_bytes(b"EF: 55\n\nnot a field\n\xff\xfe: x\nImageQuality:Poor\n")
    assert camus.read_cfg(cfg)["EF"] == "55" and camus.read_cfg(cfg)["ImageQuality"] == "Poor"


def _copy_patient(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fault,reason", [
    ("missing", "missing_frame"),
    ("truncated", "unreadable_file"),
    ("labels", "bad_labels"),
    ("grid", "grid_mismatch"),
    ("no_ef", "bad_reference_ef"),
    ("ef_out_of_range", "bad_reference_ef"),
    ("empty_lv", "empty_expert_lv"),
    ("bad_cfg_number", "bad_cfg"),
    ("duplicate", "duplicate_patient"),
])
def test_ingest_excludes_broken_patients_with_a_reason(phantom_root, tmp_path, fault, reason):
    import shutil

    import SimpleITK as sitk

    root = tmp_path / "root" / "database_nifti"
    _copy_patient(camus.find_patients(phantom_root)[0], root / "patient0001")
    bad = _copy_patient(camus.find_patients(phantom_root)[1], root / "patient0002")
    gt = bad / "patient0002_4CH_ES_gt.nii.gz"
    if fault == "duplicate":  # the same patient exported again under another zero padding
        shutil.rmtree(bad)
        bad = _copy_patient(root / "patient0001", root / "patient01")
    elif fault == "missing":
        (bad / "patient0002_2CH_ED.nii.gz").unlink()
    elif fault == "truncated":
        data = gt.read_bytes()
        gt.write_bytes(data[: len(data) // 3])
    elif fault in ("labels", "grid", "empty_lv"):
        image = sitk.ReadImage(str(gt))
        array = sitk.GetArrayFromImage(image)
        if fault == "labels":
            array[0, 0] = 7
        elif fault == "empty_lv":
            array[array == 1] = 0
        else:
            array = array[:-4]
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(image.GetSpacing())
        sitk.WriteImage(out, str(gt))
    else:
        for view in ("2CH", "4CH"):
            cfg = bad / f"Info_{view}.cfg"
            text = cfg.read_text()
            replacement = {"no_ef": "", "ef_out_of_range": "EF: 140\n", "bad_cfg_number": "EF: fifty\n"}[fault]
            cfg.write_text("\n".join(line for line in text.splitlines() if not line.startswith("EF")) + "\n" + replacement)
    cohort, exclusions = ingest.ingest(tmp_path / "root", tmp_path / "out", strict=False)
    assert list(cohort["patient"]) == ["patient0001"]
    assert exclusions.to_dict("records")[0]["patient"] == bad.name
    assert exclusions.to_dict("records")[0]["reason"] == reason
    with pytest.raises(IngestError, match=bad.name):
        ingest.ingest(tmp_path / "root", tmp_path / "out2", strict=True)


def test_ingest_with_no_patient_fails_clearly(tmp_path):
    with pytest.raises(IngestError, match="not a folder"):
        ingest.ingest(tmp_path / "nowhere", tmp_path / "out", strict=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no patientXXXX folder"):
        ingest.ingest(tmp_path / "empty", tmp_path / "out", strict=False)


@needs_shared
@pytest.mark.parametrize("fault,reason", [
    ("missing_raw", "unreadable_file"),
    ("truncated_raw", "unreadable_file"),
    ("zero_spacing", "bad_spacing"),
    ("labels", "bad_labels"),
    ("missing_cfg_ef", "bad_reference_ef"),
])
def test_ingest_excludes_broken_2019_patients(tmp_path, fault, reason):
    import shutil

    import SimpleITK as sitk

    for name in ("patient0001", "patient0002"):
        shutil.copytree(CAMUS_2019 / name, tmp_path / "root" / name)
    bad = tmp_path / "root" / "patient0002"
    raw = bad / "patient0002_4CH_ED_gt.raw"
    header = bad / "patient0002_4CH_ED_gt.mhd"
    if fault == "missing_raw":
        raw.unlink()
    elif fault == "truncated_raw":
        raw.write_bytes(raw.read_bytes()[:1000])
    elif fault == "zero_spacing":
        header.write_text(header.read_text().replace("ElementSpacing = 0.308", "ElementSpacing = 0"))
    elif fault == "labels":
        image = sitk.ReadImage(str(header))
        array = sitk.GetArrayFromImage(image)
        array[0, 0, 0] = 9
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(header))
    else:
        for view in ("2CH", "4CH"):
            cfg = bad / f"Info_{view}.cfg"
            cfg.write_text("\n".join(line for line in cfg.read_text().splitlines() if not line.startswith("LVef")) + "\n")
    cohort, exclusions = ingest.ingest(tmp_path / "root", tmp_path / "out", strict=False)
    assert cohort["patient"].tolist() == ["patient0001"] and cohort["layout"].tolist() == ["2019"]
    assert exclusions[["patient", "reason"]].values.tolist() == [["patient0002", reason]]


def test_ingest_stage_exit_status_and_messages(phantom_root, tmp_path):
    """The stage itself: a broken patient is excluded (exit 0) or, with ingest.strict, stops it (exit 2)."""
    import shutil
    import subprocess
    import sys

    import yaml

    from conftest import ROOT

    root = tmp_path / "root" / "database_nifti"
    for folder in camus.find_patients(phantom_root)[:2]:
        shutil.copytree(folder, root / folder.name)
    (root / "patient0002" / "patient0002_4CH_ES.nii.gz").unlink()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["root"] = str(tmp_path / "root")

    def run_stage(strict):
        params["ingest"]["strict"] = strict
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        return subprocess.run([sys.executable, str(ROOT / "stages/ingest.py"), "--root", str(tmp_path / "root"), "--out",
                               "data/ingested", "--metrics", "metrics/ingest.json"], cwd=tmp_path, capture_output=True, text=True)

    lenient = run_stage(False)
    assert lenient.returncode == 0 and "1 patients included, 1 excluded" in lenient.stdout
    table = (tmp_path / "data/ingested/exclusions.csv").read_text()
    assert "patient0002,missing_frame,patient0002_4CH_ES.nii.gz not found" in table
    assert '"excluded_missing_frame": 1' in (tmp_path / "metrics/ingest.json").read_text()
    strict = run_stage(True)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert "error: patient0002 excluded (missing_frame: patient0002_4CH_ES.nii.gz not found); ingest.strict is true" in strict.stderr
