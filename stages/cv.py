"""Cross-validation tables: out-of-fold EF of every train+val patient, and the K fold models as an
ensemble (mean softmax) on the test list; out-of-fold and ensemble Dice. The evaluate stage turns the
tables into metrics/ef_cv.json with cross-fitted calibration.

Without cross-validation (split.folds <= 1) it writes {"folds": 0} and empty tables.
"""

import shutil
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import model as M, params as P, segmentation as S  # noqa: E402
from echoef.ef import COLUMNS, ef_table  # noqa: E402
from echoef.io import read_json, write_csv, write_json  # noqa: E402
from echoef.stage import run  # noqa: E402

ENSEMBLE = Path("data/cv_ensemble")


def main():
    params = P.load()
    folds = read_json("data/cv/folds.json")
    shutil.rmtree(ENSEMBLE, ignore_errors=True)
    ENSEMBLE.mkdir(parents=True)
    if folds["k"] == 0:
        empty = pd.DataFrame(columns=[*COLUMNS, "ef_ref", "fold"])
        write_csv("data/ef_cv.csv", empty)
        write_csv("data/ef_ensemble.csv", empty)
        write_json("metrics/segmentation_cv.json", {"folds": 0})
        print("cv: no cross-validation (split.folds <= 1)")
        return
    k = folds["k"]
    oof = pd.concat([pd.read_csv(f"data/cv/fold_{f}/ef.csv") for f in range(k)], ignore_index=True)
    if sorted(oof["patient"]) != sorted(folds["fold_of"]):
        raise RuntimeError("out-of-fold predictions do not cover every train+val patient exactly once")
    write_csv("data/ef_cv.csv", oof)

    device = M.resolve_device(params["train"]["device"])
    # Every member of every fold model: the ensemble is the mean of all their softmax outputs.
    loaded = [M.load_checkpoint(f"data/cv/fold_{f}/model/segmenter.pt", device) for f in range(k)]
    models = [m for members, _ in loaded for m in members]
    size = loaded[0][1]["model_config"]["input_size"]
    test = read_json("data/split.json")["test"]
    dice_rows = []
    for patient in tqdm(test, desc="cv ensemble", mininterval=5):
        dice_rows += S.predict_patient(models, patient, size, params["infer"], ENSEMBLE / f"{patient}.npz")
    cohort = pd.read_csv("data/ingested/cohort.csv")
    write_csv("data/ef_ensemble.csv", ef_table(test, ENSEMBLE, cohort, params["ef"]["method"]).assign(set="test"))
    oof_dice = pd.concat([pd.read_csv(f"data/cv/fold_{f}/predictions/dice.csv").assign(fold=f) for f in range(k)],
                         ignore_index=True)
    lv = oof_dice.groupby("fold")["dice_lv"].mean()
    write_json("metrics/segmentation_cv.json", {
        "folds": k, "oof": S.dice_summary(oof_dice),
        "fold_spread": {"dice_lv_mean": float(lv.mean()), "dice_lv_std": float(lv.std(ddof=0))},
        "test_ensemble": S.dice_summary(pd.DataFrame(dice_rows)),
    })
    print(f"cv: {k} folds, {len(oof)} out-of-fold patients, {len(test)} test patients by the {k}-model ensemble")


if __name__ == "__main__":
    run(main)
