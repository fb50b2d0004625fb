"""Two runs compared patient by patient: EF MAE before and after calibration and LV Dice at ED and
ES, as B minus A with a paired-bootstrap 95% interval, on the patients both runs measured; and how
alike their EF errors are (correlation before calibration).

Usage: python benchmarks/compare_runs.py RUN_A RUN_B [--sets val test] [--cv] [--bootstrap 2000]
A RUN is a pipeline workspace after `dvc repro`. Per set, "after" applies each run's own
models/calibrator.json; with --cv the out-of-fold patients (data/ef_cv.csv) are compared instead,
"after" cross-fitted as in metrics/ef_cv.json.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from echoef import runfiles
from echoef.io.atomic import read_json
from echoef.measure.ef import is_measured
from echoef.stats import agreement, calibration


def ef_errors(run: Path, subset: str) -> pd.DataFrame:
    """Signed EF error (predicted minus reference) per measured patient, before ('pre') and after
    ('post') calibration."""
    calibrator = read_json(run / runfiles.CALIBRATOR)
    if subset == "oof":
        rows = pd.read_csv(run / runfiles.EF_CV_TABLE)
        post, _ = calibration.cross_fit(rows["ef"], rows["ef_ref"], rows["fold"], calibrator["method"], calibrator["ef_range"], rows)
    else:
        rows = pd.read_csv(run / runfiles.EF_TABLE).query("set == @subset")
        post = calibration.apply(calibrator, rows["ef"], rows)
    rows = rows.assign(pre=rows["ef"] - rows["ef_ref"], post=np.asarray(post, float) - rows["ef_ref"])
    return rows[rows["status"].map(is_measured)].set_index("patient")[["pre", "post"]]


def lv_dice(run: Path, subset: str) -> pd.DataFrame:
    """LV Dice per patient (mean of the two views) at ED and ES."""
    if subset == "oof":
        table = pd.concat([pd.read_csv(path) for path in sorted(run.glob("data/cv/fold_*/predictions/dice.csv"))])
    else:
        table = pd.read_csv(run / runfiles.SEGMENTATION_DICE).query("set == @subset")
    return table.pivot_table(index="patient", columns="phase", values="dice_lv")


def paired(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The two runs' columns side by side (suffixes _a, _b) on the patients both measured."""
    return pd.merge(a, b, left_index=True, right_index=True, suffixes=("_a", "_b")).dropna()


def compare(a: pd.DataFrame, b: pd.DataFrame, n_resamples: int, seed: int) -> dict:
    """Per column: both runs' means and B minus A with its interval, on the patients in both."""
    both = paired(a, b)
    return {column: {"a": float(both[f"{column}_a"].mean()), "b": float(both[f"{column}_b"].mean()),
                     **agreement.paired_difference(both[f"{column}_a"], both[f"{column}_b"], n_resamples, seed)}
            for column in a.columns}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--sets", nargs="+", default=["val", "test"])
    parser.add_argument("--cv", action="store_true", help="compare the out-of-fold patients instead")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"A = {args.run_a}, B = {args.run_b}; B - A with a 95% paired-bootstrap interval ({args.bootstrap} resamples)")
    for subset in ["oof"] if args.cv else args.sets:
        errors = ef_errors(args.run_a, subset), ef_errors(args.run_b, subset)
        for name, a, b in (("EF absolute error", errors[0].abs(), errors[1].abs()),
                           ("LV Dice", lv_dice(args.run_a, subset), lv_dice(args.run_b, subset))):
            for column, row in compare(a, b, args.bootstrap, args.seed).items():
                print(f"{subset:4s} {name} {column:4s} n {row['n']:3d}  A {row['a']:.4f}  B {row['b']:.4f}  "
                      f"B - A {row['mean']:+.4f} [{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]")
        both = paired(errors[0]["pre"].to_frame(), errors[1]["pre"].to_frame())
        print(f"{subset:4s} EF error correlation before calibration {np.corrcoef(both['pre_a'], both['pre_b'])[0, 1]:.2f} "
              f"(SD A {both['pre_a'].std():.2f}, B {both['pre_b'].std():.2f}; SD of their difference "
              f"{(both['pre_a'] - both['pre_b']).std():.2f}; n = {len(both)})")


if __name__ == "__main__":
    main()
