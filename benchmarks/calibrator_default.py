"""Which calibrator the real-data profiles should default to, decided out of fold by the paired rule:
none, linear fitted on the validation list (the current default), or linear fitted on the out-of-fold
rows, from a cross-validated run record's per-patient table (no training, no GPU).

The rule, written before looking: a candidate replaces the current default only if its per-patient
absolute EF error minus the default's has a 95% patient-level bootstrap interval wholly below zero,
on the out-of-fold predictions of the training patients (the validation patients are left out: the
current default was fitted on them). The linear-on-out-of-fold candidate is cross-fitted there (5
folds, each patient calibrated by a calibrator fitted without it). The test list is reported, never
used to decide.

With ``--edv``, one more candidate (docs/experiment-log.md, 2026-12-07): reference EF on predicted EF
and ln(EDV in ml), least squares, cross-fitted on the same folds; judged by the same rule.

Usage: python benchmarks/calibrator_default.py --record results/camus-cpu-oof --out results/calibrator-default
"""

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from echoef import machine
from echoef.errors import UsageError
from echoef.io.atomic import read_json, write_json, write_text
from echoef.measure.ef import is_measured
from echoef.reporting import records
from echoef.stats import calibration
from echoef.stats.agreement import paired_difference, rule_choice

FOLDS = 5
CURRENT = "linear on the validation list (current)"
EDV_CANDIDATE = "EF and ln EDV on the out-of-fold rows (cross-fitted)"


def _ef_log_edv_design(ef_pred, edv_ml) -> np.ndarray:
    return np.column_stack([np.ones(len(ef_pred)), np.asarray(ef_pred, float), np.log(np.asarray(edv_ml, float))])


def fit_ef_log_edv(ef_pred, edv_ml, ef_ref) -> np.ndarray:
    """Least-squares weights of reference EF ~ 1 + EF + ln(EDV)."""
    return np.linalg.lstsq(_ef_log_edv_design(ef_pred, edv_ml), np.asarray(ef_ref, float), rcond=None)[0]


def apply_ef_log_edv(weights, ef_pred, edv_ml, ef_range) -> np.ndarray:
    """Calibrated EF, clipped to the calibrators' range as ``calibration.apply`` clips."""
    return np.clip(_ef_log_edv_design(ef_pred, edv_ml) @ weights, *ef_range)


def cross_fit_ef_log_edv(ef_pred, edv_ml, ef_ref, folds, ef_range) -> np.ndarray:
    """Each fold's EF calibrated by a fit on the other folds."""
    ef_pred, edv_ml, ef_ref = (np.asarray(a, float) for a in (ef_pred, edv_ml, ef_ref))
    calibrated = np.full(len(ef_pred), np.nan)
    for fold in np.unique(folds):
        held = folds == fold
        weights = fit_ef_log_edv(ef_pred[~held], edv_ml[~held], ef_ref[~held])
        calibrated[held] = apply_ef_log_edv(weights, ef_pred[held], edv_ml[held], ef_range)
    return calibrated


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, required=True, help="a run record with out-of-fold rows (split.folds > 1)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--edv", action="store_true", help="also judge the EF-and-ln(EDV) candidate")
    parser.add_argument("--replace", action="store_true", help="write into --out although it holds a record already")
    args = parser.parse_args()
    table = pd.read_csv(args.record / "patients.csv")
    table = table[table["status"].map(is_measured) & table["ef_ref"].notna()]
    default = read_json(args.record / "models" / "calibrator.json")
    if default.get("fit_set") != "val" or default.get("method") != "linear":
        sys.exit(f"{args.record}: its calibrator is {default.get('method')} on {default.get('fit_set')}, not the linear-on-val default")
    ef_range = tuple(default["ef_range"])
    val_patients = set(table.loc[table["set"] == "val", "patient"])
    oof = table[(table["set"] == "oof") & ~table["patient"].isin(val_patients)].reset_index(drop=True)
    folds = np.arange(len(oof)) % FOLDS
    np.random.default_rng(0).shuffle(folds)
    candidates = {
        CURRENT: calibration.apply(default, oof["ef"].to_numpy(float)),
        "none": calibration.apply(calibration.fit(oof["ef"], oof["ef_ref"], "none", ef_range, "none"), oof["ef"].to_numpy(float)),
        "linear on the out-of-fold rows (cross-fitted)": calibration.cross_fit(oof["ef"], oof["ef_ref"], folds, "linear", ef_range)[0],
    }
    if args.edv:
        candidates[EDV_CANDIDATE] = cross_fit_ef_log_edv(oof["ef"], oof["edv_ml"], oof["ef_ref"], folds, ef_range)
    errors = {name: np.abs(values - oof["ef_ref"].to_numpy(float)) for name, values in candidates.items()}
    current = errors[CURRENT]
    rows = {name: {"mae": float(error.mean()), "minus_current": paired_difference(current, error, 2000, 0)}
            for name, error in errors.items()}
    best = rule_choice(CURRENT, rows)
    test = table[table["set"] == "test"]
    oof_fit = calibration.fit(oof["ef"], oof["ef_ref"], "linear", ef_range, "oof")
    test_mae = {CURRENT: float(np.abs(calibration.apply(default, test["ef"]) - test["ef_ref"]).mean()),
                "none": float(np.abs(test["ef"].clip(*ef_range) - test["ef_ref"]).mean()),
                "linear on the out-of-fold rows (cross-fitted)": float(np.abs(calibration.apply(oof_fit, test["ef"]) - test["ef_ref"]).mean())}
    if args.edv:
        weights = fit_ef_log_edv(oof["ef"], oof["edv_ml"], oof["ef_ref"])
        test_mae[EDV_CANDIDATE] = float(np.abs(apply_ef_log_edv(weights, test["ef"], test["edv_ml"], ef_range) - test["ef_ref"]).mean())
    record = {"command": "python benchmarks/calibrator_default.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "machine": machine.describe(), "commit": machine.commit(), "record": str(args.record),
              "current": CURRENT, "n_out_of_fold": int(len(oof)), "out_of_fold": rows, "decision": best, "test_mae_reported_only": test_mae,
              "n_test": int(len(test))}
    try:
        out = records.claim_evidence_folder(args.out, args.replace)
    except UsageError as error:
        sys.exit(f"error: {error}")
    write_json(out / "calibrator_decision.json", record)
    lines = ["# Calibrator default, decided out of fold", "", f"`{record['command']}`", "",
             f"Machine: {record['machine']}; commit {record['commit']}; from record `{args.record}`.", "",
             f"Out-of-fold predictions of {len(oof)} training patients (validation patients left out):", "",
             "| calibrator | MAE | minus the current, per patient [95% CI] |", "|---|---|---|"]
    for name, row in rows.items():
        d = row["minus_current"]
        lines.append(f"| {name} | {row['mae']:.2f} | {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] |")
    lines += ["", f"Decision by the rule: **{best}**" + ("" if best != CURRENT else " (no candidate's interval lies wholly below zero)") + ".",
              "", f"Test list, reported only (n {len(test)}): " + ", ".join(f"{k} {v:.2f}" for k, v in test_mae.items()) + "."]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
