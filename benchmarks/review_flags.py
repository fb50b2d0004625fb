"""Whether `predict`'s review reasons pick out the CAMUS studies whose EF is far from the reference, and
what a study-wise interval could read.

Each list of a CAMUS run (its validation and test patients, from its data/split.json) is predicted by
the run's bundle through `echoef predict`, as a user predicts, and judged by the agreement report's
review table (`echoef.stats.agreement.review_agreement`): for each kind of reason, the studies it
flags, their MAE and the others', precision and recall for errors over 10 points. Beside it, how the
size of each study's EF error follows two signals every study has, which a prediction interval of a
study's own width could be built on: its novelty score and how far its two views' single-plane EFs
are apart (Spearman's rho with a 95% bootstrap interval).

The validation list is the one the bundle's calibrator, interval and unlike-training threshold were
fitted on: for those it is in-sample, the test list is not.

Usage: python benchmarks/review_flags.py --bundle DIR --camus ../shared/data/camus --split data/split.json
       --out results/review-flags [--sets val test] [--replace]
Writes OUT/review_flags_record.json (numbers, command, machine, commit), OUT/report.md and OUT/patients.csv
(per study: its list, EFs, reference, review and signals); the predict folders go to a temporary folder.
"""

import argparse
import shlex
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from echoef import machine
from echoef.app import cli
from echoef.errors import UsageError
from echoef.io.atomic import read_json, write_csv, write_json, write_text
from echoef.reporting import records
from echoef.reporting.cohort import review_lines
from echoef.stats.agreement import cohort_agreement, reported_ef

KEPT = ["patient", "set", "status", "ef", "ef_calibrated", "ef_low", "ef_high", "ef_ref", "ef_2ch", "ef_4ch", "novelty_score", "review"]


def rank_correlation(signal: np.ndarray, error: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Spearman's rho of a signal with the absolute EF error, with a 95% interval over resampled studies."""
    keep = np.isfinite(signal) & np.isfinite(error)
    signal, error = signal[keep], error[keep]
    if len(signal) < 5:
        return {"n": int(len(signal)), "rho": float("nan"), "rho_ci": [float("nan"), float("nan")]}
    index = np.random.default_rng(seed).integers(0, len(signal), (n_resamples, len(signal)))
    with warnings.catch_warnings():  # a resample of one repeated study has no rank correlation: NaN, left out
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        resampled = [stats.spearmanr(signal[i], error[i])[0] for i in index]
    return {"n": int(len(signal)), "rho": float(stats.spearmanr(signal, error)[0]),
            "rho_ci": [float(np.nanpercentile(resampled, 2.5)), float(np.nanpercentile(resampled, 97.5))]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle of a CAMUS run (echoef export)")
    parser.add_argument("--camus", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="that run's data/split.json")
    parser.add_argument("--sets", nargs="+", default=["val", "test"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--replace", action="store_true", help="write into --out although it holds a record already")
    args = parser.parse_args()
    try:
        out = records.claim_evidence_folder(args.out, args.replace)
    except UsageError as error:
        sys.exit(f"error: {error}")
    split = read_json(args.split)
    print(f"machine: {machine.describe()}\ncommit: {machine.commit()}")
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            folders = [next(f for f in (args.camus / "database_nifti" / p, args.camus / p) if f.is_dir()) for p in sorted(split[name])]
            status = cli.main(["predict", *map(str, folders), "--model", str(args.bundle), "--out", str(Path(tmp) / name)])
            if status not in (0, 1):
                sys.exit(f"echoef predict failed ({status})")
            tables.append(pd.read_csv(Path(tmp) / name / "summary.csv").assign(set=name))
    table = pd.concat(tables, ignore_index=True)
    error = (reported_ef(table) - pd.to_numeric(table["ef_ref"], errors="coerce")).abs().to_numpy(float)
    signals = {"novelty_score": pd.to_numeric(table["novelty_score"], errors="coerce").to_numpy(float),
               "views_apart": (pd.to_numeric(table["ef_2ch"], errors="coerce")
                               - pd.to_numeric(table["ef_4ch"], errors="coerce")).abs().to_numpy(float)}
    sets = {}
    for name in args.sets:
        rows = (table["set"] == name).to_numpy()
        report = cohort_agreement(table[rows])
        sets[name] = {"ef_calibrated": {k: report["ef_calibrated"][k] for k in ("n", "mae", "bias", "r")},
                      "flagged_for_review": report["flagged_for_review"], "review_flags": report["review_flags"],
                      "error_follows": {signal: rank_correlation(values[rows], error[rows]) for signal, values in signals.items()}}
    novelty = read_json(args.bundle / "novelty.json") if (args.bundle / "novelty.json").is_file() else {}
    record = {"name": "review-flags", "command": "python benchmarks/review_flags.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "machine": machine.describe(), "environment": machine.environment(), "commit": machine.commit(),
              "bundle": str(args.bundle), "bundle_trained_on": read_json(args.bundle / "model.json").get("trained_on"),
              "calibrator_interval": read_json(args.bundle / "calibrator.json").get("interval"),
              "novelty_threshold": novelty.get("threshold"), "sets": sets}
    write_json(out / "review_flags_record.json", record)
    write_csv(out / "patients.csv", table[[c for c in KEPT if c in table]])
    lines = ["# Review reasons on CAMUS", "", f"`{record['command']}`", "", f"Machine: {record['machine']}; commit {record['commit']}.",
             "", f"Bundle's interval: {record['calibrator_interval']}; unlike-training threshold {record['novelty_threshold']}.",
             "The validation list fitted the calibrator, its interval and the unlike-training threshold."]
    for name, s in sets.items():
        e = s["ef_calibrated"]
        lines += ["", f"## {name}", "", f"Calibrated EF: n {e['n']}, MAE {e['mae']:.2f}, bias {e['bias']:+.2f}, r {e['r']:.3f}; "
                  f"flagged for review {100 * s['flagged_for_review']:.0f}%."]
        lines += review_lines(s["review_flags"])
        lines += ["", "| the EF error's size against | n | Spearman rho [95% CI] |", "|---|---|---|"]
        for signal, rho in s["error_follows"].items():
            lines.append(f"| {signal} | {rho['n']} | {rho['rho']:+.2f} [{rho['rho_ci'][0]:+.2f}, {rho['rho_ci'][1]:+.2f}] |")
    write_text(out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
