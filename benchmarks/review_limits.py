"""Where `members_disagree` should start, decided on out-of-fold rows: for each candidate limit, the
review table (`echoef.stats.agreement.review_agreement`) of the studies whose members' EFs are more
than that many points apart, against the others.

A record made from a run with cross-validation keeps, for each out-of-fold patient, the EF its fold
model measured and the members' EF spread that fold's inference read (`member_ef_spread` in
patients.csv; records.SIGNAL_COLUMNS). A limit is supported when the studies it flags are surely
worse: their MAE minus the others', 95% interval wholly above 0. Judged on the EF before calibration
(the run's calibrator was fitted on validation patients that are among the out-of-fold ones).

RECORD is a record folder, or a folder of folds kept one at a time and joined (fold_pieces.py).

Usage: python benchmarks/review_limits.py RECORD [--sets oof] [--limits 3 5 8 10 15] [--out FILE.json]
"""

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from echoef import machine, runfiles
from echoef.errors import UsageError
from echoef.io.atomic import write_json
from echoef.stats.agreement import review_agreement

DEFAULT_LIMITS = (3.0, 5.0, 8.0, 10.0, 15.0)


def limit_table(rows: pd.DataFrame, limits, n_resamples: int = 2000, seed: int = 0) -> dict:
    """{limit: review_agreement's row of members_disagree at that limit}, over ``rows`` (one per
    study: ef, ef_ref, status, member_ef_spread), judged on the EF before calibration."""
    if "member_ef_spread" not in rows or rows["member_ef_spread"].isna().all():
        raise UsageError("these rows hold no members' EF spread: the run had one network, or its record predates "
                         "records.SIGNAL_COLUMNS; make the record again from a run with an ensemble")
    found = {}
    for limit in limits:
        # review's own test: a spread that is not within the limit (NaN never flags: no members to compare)
        flagged = rows["member_ef_spread"] > limit
        review = flagged.map({True: f"members_disagree:over_{limit:g}_points", False: ""})
        table = rows.drop(columns=["ef_calibrated"], errors="ignore").assign(review=review)
        kinds = review_agreement(table, n_resamples, seed)
        empty = {"n_flagged": 0, "share_flagged": 0.0, "difference_ci": [float("nan")] * 2}
        found[float(limit)] = {"n": kinds["n"], "n_large_errors": kinds["n_large_errors"],
                               **kinds["kinds"].get("members_disagree", empty)}
    return found


def supported(row: dict) -> bool:
    """The rule: the flagged studies' MAE minus the others', 95% interval wholly above 0."""
    low = row["difference_ci"][0]
    return bool(low == low and low > 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path, help="a record folder (results/NAME) with patients.csv")
    parser.add_argument("--sets", nargs="+", default=["oof"], help="which rows of patients.csv (default: out of fold)")
    parser.add_argument("--limits", nargs="+", type=float, default=list(DEFAULT_LIMITS))
    parser.add_argument("--out", type=Path, help="write the table, command, machine and commit as JSON")
    args = parser.parse_args()
    # a record's rows, or the out-of-fold table of a run of the folds alone (fold_pieces.py join)
    source = args.record / "patients.csv"
    if not source.is_file():
        source = args.record / runfiles.EF_CV_TABLE
    if not source.is_file():
        sys.exit(f"error: {args.record} holds neither patients.csv nor {runfiles.EF_CV_TABLE}: give a record or a run with folds")
    rows = pd.read_csv(source)
    rows = rows[rows["set"].isin(args.sets)]
    try:
        table = limit_table(rows, args.limits)
    except UsageError as error:
        sys.exit(f"error: {args.record}: {error}")
    print(f"{args.record} ({', '.join(args.sets)}): members_disagree by limit, EF before calibration")
    print("| limit | flagged | MAE flagged | MAE others | flagged minus others [95% CI] | errors > 10 caught | supported |")
    print("|---|---|---|---|---|---|---|")
    for limit, row in table.items():
        low, high = row["difference_ci"]
        caught = f"{row['recall'] * row['n_large_errors']:.0f} of {row['n_large_errors']}" if row["n_large_errors"] else "-"
        print(f"| {limit:g} | {row['n_flagged']} of {row['n']} | {row.get('mae_flagged', float('nan')):.2f} | "
              f"{row.get('mae_others', float('nan')):.2f} | {row.get('difference', float('nan')):+.2f} [{low:+.2f}, {high:+.2f}] | "
              f"{caught} | {'yes' if supported(row) else 'no'} |")
    if args.out:
        write_json(args.out, {"command": "python benchmarks/review_limits.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                              "machine": machine.describe(), "commit": machine.commit(), "sets": args.sets,
                              "limits": {str(limit): {**row, "supported": supported(row)} for limit, row in table.items()}})


if __name__ == "__main__":
    main()
