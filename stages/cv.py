"""Cross-validation tables: out-of-fold EF of every train+val patient, and the K fold models as an
ensemble (mean softmax) on the test list; out-of-fold and ensemble Dice. The evaluate stage turns the
tables into metrics/ef_cv.json with cross-fitted calibration.

cv.py --folds FILE --cv-dir DIR --split FILE --ingested DIR --ensemble DIR --oof CSV --ensemble-ef CSV
--metrics JSON --full JSON; fold K's outputs are read from DIR/fold_K/. Without cross-validation (split.folds <= 1)
it writes {"folds": 0} and empty tables.
"""

import argparse
import shutil
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from echoef import params as P, report, runtime, segmentation as S
from echoef.ef import COLUMNS
from echoef.eftable import ef_table
from echoef.io import read_json, write_csv, write_json
from echoef.network import load_checkpoint
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser()
    for name in ("--folds", "--cv-dir", "--split", "--ingested", "--ensemble", "--oof", "--ensemble-ef", "--metrics", "--full"):
        parser.add_argument(name, type=Path, required=True)
    args = parser.parse_args()
    params = P.load()
    k = read_json(args.folds)["k"]
    shutil.rmtree(args.ensemble, ignore_errors=True)
    args.ensemble.mkdir(parents=True)
    if k == 0:
        empty = pd.DataFrame(columns=[*COLUMNS, "ef_ref", "fold"])
        write_csv(args.oof, empty)
        write_csv(args.ensemble_ef, empty)
        write_json(args.metrics, {"folds": 0})
        write_json(args.full, {"folds": 0})
        print("cv: no cross-validation (split.folds <= 1)")
        return
    fold_dirs = [args.cv_dir / name for name in P.fold_ids(k)]
    oof = pd.concat([pd.read_csv(d / "ef.csv").assign(fold=f) for f, d in enumerate(fold_dirs)], ignore_index=True)
    if sorted(oof["patient"]) != sorted(read_json(args.folds)["fold_of"]):
        raise RuntimeError("out-of-fold predictions do not cover every train+val patient exactly once")
    write_csv(args.oof, oof)

    device = runtime.resolve_device(params.train.runtime.device)
    # Every member of every fold model: the ensemble is the mean of all their softmax outputs.
    loaded = [load_checkpoint(d / "model" / "segmenter.pt", device) for d in fold_dirs]
    models = [m for members, _ in loaded for m in members]
    size = loaded[0][1]["model_config"]["input_size"]
    test = read_json(args.split)["test"]
    dice_rows = []
    for patient in tqdm(test, desc="cv ensemble", mininterval=5):
        dice_rows += S.predict_patient(models, patient, size, params.infer, args.ensemble / f"{patient}.npz", args.ingested)
    cohort = pd.read_csv(args.ingested / "cohort.csv")
    write_csv(args.ensemble_ef, ef_table(test, args.ensemble, cohort, params.ef.method, args.ingested).assign(set="test"))
    oof_dice = pd.concat([pd.read_csv(d / "predictions" / "dice.csv").assign(fold=f) for f, d in enumerate(fold_dirs)],
                         ignore_index=True)
    lv = oof_dice.groupby("fold")["dice_lv"].mean()
    full = {"folds": k, "oof": S.dice_summary(oof_dice),
            "fold_spread": {"dice_lv_mean": float(lv.mean()), "dice_lv_std": float(lv.std(ddof=0))},
            "test_ensemble": S.dice_summary(pd.DataFrame(dice_rows))}
    write_json(args.full, full)
    write_json(args.metrics, {"folds": k, **report.dice_headline(full)})
    print(f"cv: {k} folds, {len(oof)} out-of-fold patients, {len(test)} test patients by the {k}-model ensemble")


if __name__ == "__main__":
    run(main)
