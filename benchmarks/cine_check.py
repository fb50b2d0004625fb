"""ED and ES found in synthetic cine loops, and EF from them, against the truth: the phantom's beating
loops of the pipeline's test patients, through `echoef predict --2ch LOOP --4ch LOOP`.

Usage: python benchmarks/cine_check.py [--model models/segmenter.pt] [--calibrator models/calibrator.json]
       [--split data/split.json] [--patients 10]
Needs a trained default run (`make run`): its model, and its split to leave the training patients out.
"""

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from echoef import machine, params, runfiles
from echoef.app import cli
from echoef.io import phantom
from echoef.io.atomic import read_json


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=runfiles.MODEL)
    parser.add_argument("--calibrator", type=Path, default=runfiles.CALIBRATOR)
    parser.add_argument("--split", type=Path, default=runfiles.SPLIT)
    parser.add_argument("--patients", type=int, default=10)
    args = parser.parse_args()
    config = params.load().data.phantom
    print(f"machine: {machine.describe()}\ncommit: {machine.commit()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        phantom.write_cohort(root, config.n_patients, config.seed)  # the default cohort, its patients beating
        truth = phantom.write_loops(root, config.n_patients, config.seed)
        rows = []
        for patient in read_json(args.split)["test"][: args.patients]:
            folder = root / "database_nifti" / patient
            cli.main(["predict", "--2ch", str(folder / f"{patient}_2CH_sequence.nii.gz"), "--4ch",
                      str(folder / f"{patient}_4CH_sequence.nii.gz"), "--patient", patient, "--out", str(root / "out"),
                      "--model", str(args.model), "--calibrator", str(args.calibrator)])
            row = read_json(root / "out" / patient / f"{patient}_row.json")
            errors = []
            for view, ed, es in re.findall(r"(\w+) ED (\d+) ES (\d+) of 20", row["cine"]):
                for phase, found in (("ed", int(ed)), ("es", int(es))):
                    off = abs(found - truth[patient][view][phase])
                    errors.append(min(off, 20 - off))
            rows.append({"patient": patient, "worst_frame_error": max(errors), "ef": row["ef"], "ef_calibrated": row["ef_calibrated"],
                         "ef_true": truth[patient]["ef"], "status": row["status"]})
    table = pd.DataFrame(rows)
    for column in ("ef", "ef_calibrated"):
        table[f"{column}_error"] = (table[column].astype(float) - table["ef_true"]).abs()
    print(table.round(1).to_string(index=False))
    print(f"{len(table)} patients: frames within 1 of the truth in {int((table['worst_frame_error'] <= 1).sum())}; EF within 3 "
          f"points of the true EF in {int((table['ef_error'] <= 3).sum())} (calibrated: {int((table['ef_calibrated_error'] <= 3).sum())}); "
          f"EF MAE {np.nanmean(table['ef_error']):.2f} (calibrated {np.nanmean(table['ef_calibrated_error']):.2f})")


if __name__ == "__main__":
    main()
