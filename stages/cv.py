"""Cross-validation tables: out-of-fold EF of every train+val patient, and the K fold models as an
ensemble (mean softmax) on the test list; out-of-fold and ensemble Dice. The evaluate stage turns the
tables into metrics/ef_cv.json with cross-fitted calibration.

Fold K's outputs are read from CV_DIR/fold_K/. Without cross-validation (split.folds <= 1) it writes
{"folds": 0} and empty tables.
"""

import argparse
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from echoef import params
from echoef.io.atomic import read_json, remove_stage_output, write_csv, write_json
from echoef.io.framefile import FRAME_FILES, patient_path
from echoef.measure.ef import COLUMNS
from echoef.measure.eftable import ef_table, out_of_fold_table
from echoef.model import runtime, segmentation
from echoef.model.network import load_ensemble
from echoef.reporting import report
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, what in (("--folds", "each train+val patient's fold (JSON)"), ("--cv-dir", "the folds' folders"),
                       ("--split", "the train/val/test lists"), ("--ingested", "ingest's frame files"),
                       ("--ensemble", "the fold ensemble's label maps (replaced)"), ("--oof", "the out-of-fold EF table"),
                       ("--ensemble-ef", "the fold ensemble's EF table of the test list"),
                       ("--metrics", "headline Dice of cross-validation"), ("--full", "every Dice statistic of it")):
        parser.add_argument(name, type=Path, required=True, help=what)
    args = parser.parse_args()
    settings = params.load()
    folds = read_json(args.folds)
    k = folds["k"]
    remove_stage_output(args.ensemble, (FRAME_FILES,), "--ensemble")
    args.ensemble.mkdir(parents=True)
    if k == 0:
        empty = pd.DataFrame(columns=[*COLUMNS, "ef_ref", "fold"])
        write_csv(args.oof, empty)
        write_csv(args.ensemble_ef, empty)
        write_json(args.metrics, {"folds": 0})
        write_json(args.full, {"folds": 0})
        print("cv: no cross-validation (split.folds <= 1)")
        return
    fold_dirs = [args.cv_dir / name for name in params.fold_ids(k)]
    oof = out_of_fold_table(fold_dirs, folds["fold_of"])
    write_csv(args.oof, oof)

    models, size = load_ensemble([d / "model" / "segmenter.pt" for d in fold_dirs], runtime.resolve_device(settings.train.runtime.device))
    test = read_json(args.split)["test"]
    dice_rows = []
    for patient in tqdm(test, desc="cv ensemble", mininterval=5):
        dice_rows += segmentation.predict_patient(models, patient, size, settings.infer, patient_path(patient, args.ensemble),
                                                    args.ingested, settings.ef.method)[0]
    cohort = pd.read_csv(args.ingested / "cohort.csv")
    write_csv(args.ensemble_ef, ef_table(test, args.ensemble, cohort, settings.ef.method, args.ingested).assign(set="test"))
    full = segmentation.cv_dice_report(fold_dirs, dice_rows)
    write_json(args.full, full)
    write_json(args.metrics, {"folds": k, **report.dice_headline(full)})
    print(f"cv: {k} folds, {len(oof)} out-of-fold patients, {len(test)} test patients by the {k}-model ensemble")


if __name__ == "__main__":
    run(main)
