import shutil
import subprocess
import sys

import pandas as pd

from conftest import CAMUS_2019, ROOT, needs_shared


@needs_shared
def test_ef_command_on_the_2019_sample(tmp_path):
    out = tmp_path / "ef.csv"
    result = subprocess.run([sys.executable, "-m", "echoef", "ef", str(CAMUS_2019), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == ["patient", "method", "edv_ml", "esv_ml", "ef", "ef_ref", "status"]
    assert len(table) == 5 and (table["status"] == "ok").all()
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
    assert table["status"].iloc[2:].str.startswith("unreadable:missing_frame").all()
