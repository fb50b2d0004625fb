import shutil
import subprocess
import sys

import numpy as np
import pandas as pd

from echoef.io import camus

from conftest import CAMUS_2019, ROOT, echoef_in_process, needs_shared


@needs_shared
def test_ef_command_on_the_2019_sample(tmp_path):
    out = tmp_path / "ef.csv"
    result = subprocess.run([sys.executable, "-m", "echoef", "ef", str(CAMUS_2019), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == ["patient", "method", "edv_ml", "esv_ml", "ef", "ef_ref", "status", "ef_2ch", "long_axis_ed_2ch_mm",
                                   "long_axis_es_2ch_mm", "ef_4ch", "long_axis_ed_4ch_mm", "long_axis_es_4ch_mm", "detail"]
    assert len(table) == 5 and (table["status"] == "ok").all()
    # Each view's measures are what that view's single-plane method measures alone.
    for view in ("2ch", "4ch"):
        single = tmp_path / f"{view}.csv"
        subprocess.run([sys.executable, "-m", "echoef", "ef", str(CAMUS_2019), "--out", str(single), "--method",
                        f"simpson_single_plane_{view}"], cwd=ROOT, check=True, capture_output=True)
        assert pd.read_csv(single)["ef"].tolist() == table[f"ef_{view}"].tolist() != table["ef"].tolist()
    assert table["ef_ref"].tolist() == [63.2, 49.4, 55.4, 62.1, 53.4]  # the 2019 LVef
    assert table["ef"].between(30, 75).all()


def test_ef_command_with_predicted_masks_elsewhere(phantom_root, tmp_path):
    labels = tmp_path / "pred"
    for folder in sorted((phantom_root / "database_nifti").iterdir())[:2]:
        (labels / folder.name).mkdir(parents=True)
        for gt in folder.glob("*_gt.nii.gz"):
            shutil.copy(gt, labels / folder.name / gt.name)
    out = tmp_path / "ef.csv"
    subprocess.run([sys.executable, "-m", "echoef", "ef", str(phantom_root), "--out", str(out), "--labels", str(labels)],
                   cwd=ROOT, check=True, capture_output=True)
    table = pd.read_csv(out)
    assert (table["status"].iloc[:2] == "ok").all()
    assert (table["status"].iloc[2:] == "missing_frame").all()
    assert table["detail"].iloc[2].endswith("_2CH_ED_gt.nii.gz not found")


def ef_cli(*args):
    return subprocess.run([sys.executable, "-m", "echoef", "ef", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def test_usage_errors_are_one_line_with_exit_status_2_before_any_work(phantom_root, tmp_path):
    (tmp_path / "a_file").write_text("x")
    cases = {
        (tmp_path / "nowhere", "--out", tmp_path / "o.csv"): "is not a folder",
        (tmp_path / "a_file", "--out", tmp_path / "o.csv"): "is not a folder",
        (phantom_root, "--out", tmp_path / "o.csv", "--labels", tmp_path / "nowhere"): "--labels",
        (phantom_root, "--out", tmp_path / "a_file" / "o.csv"): "cannot write to",
        (phantom_root, "--out", tmp_path): "is a folder; give a file name",
        (tmp_path, "--out", tmp_path / "o.csv"): "no patientXXXX folder",
    }
    for number, (args, message) in enumerate(cases.items()):
        result = ef_cli(*args) if number == 0 else echoef_in_process("ef", *args)  # one as its own process: its exit status
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().startswith("error: ") and message in result.stderr and "\n" not in result.stderr.strip()
        assert "ef:" not in result.stderr  # refused before the first patient was read
    assert not (tmp_path / "o.csv").exists()


def test_exit_status_1_when_no_patient_is_measured(phantom_root, tmp_path):
    (tmp_path / "empty_labels").mkdir()
    result = ef_cli(phantom_root, "--out", tmp_path / "o.csv", "--labels", tmp_path / "empty_labels")
    assert result.returncode == 1, result.stderr
    table = pd.read_csv(tmp_path / "o.csv")
    assert len(table) == 12 and (table["status"] == "missing_frame").all()
    assert "ef: 12 patients: 0 ok, 12 failed (missing_frame 12)" in result.stdout


def test_a_bad_reference_in_the_cfg_does_not_cost_the_ef(phantom_root, tmp_path):
    root = tmp_path / "root"
    for folder in camus.find_patients(phantom_root)[:2]:
        shutil.copytree(folder, root / folder.name)
    (root / "patient0002" / "Info_2CH.cfg").write_text("EF: forty\n")
    result = ef_cli(root, "--out", tmp_path / "o.csv")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "o.csv").set_index("patient")
    assert table.loc["patient0002", "status"] == "ok" and table.loc["patient0002", "ef"] > 0
    assert np.isnan(table.loc["patient0002", "ef_ref"]) and table.loc["patient0002", "detail"] == "bad_cfg: 2CH cfg EF is not a number: 'forty'"


def test_results_and_record_usage_errors_are_one_line(tmp_path):
    (tmp_path / "README.md").write_text("# no generated block here\n")
    (tmp_path / "results" / "taken").mkdir(parents=True)
    (tmp_path / "results" / "taken" / "notes.txt").write_text("a user's own file")
    cases = {
        ("results", "--readme", tmp_path / "README.md"): "has no generated results block",
        ("results", "--readme", tmp_path / "nowhere.md"): "--readme",
        ("results", "--results", tmp_path / "nowhere"): "is not a folder of run records",
        ("record", "taken", "--workspace", tmp_path, "--results", tmp_path / "results"): "holds no finished run",
    }
    for args, message in cases.items():
        result = echoef_in_process(*args)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert "\n" not in result.stderr.strip()
    assert (tmp_path / "README.md").read_text() == "# no generated block here\n"


@needs_shared
def test_results_page_and_ef_table_replace_only_a_file_of_their_own(tmp_path):
    """``results --page`` and ``ef --out`` write a whole file: a user's own notes named there by mistake
    are kept (exit 2, one line, before any work), as is anything that is not a regular file; a file of
    their own kind, or a new one, is (re)written."""
    import os

    (tmp_path / "results").mkdir()
    notes = tmp_path / "notes.md"
    notes.write_text("# my own notes\n")
    os.mkfifo(tmp_path / "fifo.md")
    for target in (notes, tmp_path / "fifo.md"):
        result = echoef_in_process("results", "--results", tmp_path / "results", "--page", target)
        assert result.returncode == 2 and "holds a file that is not a results page this command wrote; it is kept" \
            in result.stderr, result.stderr
        result = echoef_in_process("ef", CAMUS_2019, "--out", target)
        assert result.returncode == 2 and "holds a file that is not an EF table this command wrote" in result.stderr
        assert "\n" not in result.stderr.strip()
    assert notes.read_text() == "# my own notes\n"
    for _ in range(2):  # new, then its own table again
        assert echoef_in_process("ef", CAMUS_2019, "--out", tmp_path / "ef.csv").returncode == 0
    assert len(pd.read_csv(tmp_path / "ef.csv")) == 5
    page = tmp_path / "docs" / "benchmarks.md"
    for _ in range(2):  # new, then its own page again
        assert echoef_in_process("results", "--results", tmp_path / "results", "--page", page).returncode == 0
        assert page.read_text().startswith("# Current results\n\nGenerated from the run records")
