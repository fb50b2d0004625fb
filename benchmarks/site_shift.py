"""A simulated other site on CAMUS, and what its own 20 studies win back: EF MAE on the site's other
studies before adaptation, after `echoef site-calibrate`, after `echoef site-tune`, and after both; and
how often `predict` flags the site's studies as unlike the training data.

The site (``echoef.io.site_shift.SiteShift``, its defaults unless changed here): the test patients of
the bundle's run, their images blurred, re-compressed, re-speckled and cut to a narrower sector, their
ES outline traced 2 mm inside the expert's, and their reference EF Simpson's biplane on those outlines.
Everything runs through the commands a user runs (predict, site-calibrate, site-tune).

Usage: python benchmarks/site_shift.py --bundle DIR --camus ../shared/data/camus --split data/split.json
       --out results/site-shift [--adapt 20] [--epochs 30] [--seed 0]
Writes OUT/site_shift_record.json (numbers, command, machine, commit) and OUT/report.md; the working folders go
to a temporary folder.
"""

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from echoef import machine
from echoef.app import cli
from echoef.app.site import write_simulated_site
from echoef.errors import UsageError
from echoef.io.atomic import read_json, text_column, write_json, write_text
from echoef.io.site_shift import SiteShift
from echoef.measure.ef import is_measured
from echoef.reporting import records
from echoef.stats.agreement import paired_difference, summary


def run(*args) -> None:
    status = cli.main([str(a) for a in args])
    if status not in (0, 1):
        sys.exit(f"echoef {args[0]} failed ({status})")


def predicted(folder: Path) -> pd.DataFrame:
    table = pd.read_csv(folder / "summary.csv").set_index("patient")
    return table[table["status"].map(is_measured)]


def errors(predicted_ef: pd.Series, reference: pd.Series) -> pd.Series:
    """Predicted minus reference EF, per patient where both exist."""
    return (predicted_ef - reference.reindex(predicted_ef.index)).dropna()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle of a CAMUS run (echoef export)")
    parser.add_argument("--camus", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="that run's data/split.json: its test patients become the site")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--replace", action="store_true", help="write into --out although it holds a record already")
    parser.add_argument("--adapt", type=int, default=20, help="site studies used to calibrate or fine-tune")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        out = records.claim_evidence_folder(args.out, args.replace)
    except UsageError as error:
        sys.exit(f"error: {error}")
    shift = SiteShift()
    test = sorted(read_json(args.split)["test"])
    rng = np.random.default_rng(args.seed)
    adapt = sorted(rng.choice(test, size=args.adapt, replace=False).tolist())
    held_out = [p for p in test if p not in adapt]
    print(f"machine: {machine.describe()}\ncommit: {machine.commit()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        site_ef = pd.Series(write_simulated_site(args.camus, test, tmp / "site", shift, args.seed))
        folders = {p: tmp / "site" / "database_nifti" / p for p in test}
        camus_folders = [next(f for f in (args.camus / "database_nifti" / p, args.camus / p) if f.is_dir()) for p in held_out]
        run("predict", *camus_folders, "--model", args.bundle, "--out", tmp / "camus")
        run("predict", *(folders[p] for p in test), "--model", args.bundle, "--out", tmp / "base")
        base = predicted(tmp / "base")
        base.loc[base.index.intersection(adapt)].reset_index().to_csv(tmp / "adapt_base.csv", index=False)
        run("site-calibrate", tmp / "adapt_base.csv", "--out", tmp / "site_calibrator.json")
        run("site-tune", *(folders[p] for p in adapt), "--model", args.bundle, "--out", tmp / "tuned", "--epochs", args.epochs,
            "--seed", args.seed)
        run("predict", *(folders[p] for p in test), "--model", tmp / "tuned", "--out", tmp / "tuned_out")
        tuned = predicted(tmp / "tuned_out")
        tuned.loc[tuned.index.intersection(adapt)].reset_index().to_csv(tmp / "adapt_tuned.csv", index=False)
        run("site-calibrate", tmp / "adapt_tuned.csv", "--out", tmp / "tuned_calibrator.json")
        camus_table = predicted(tmp / "camus")
        from echoef.stats import calibration

        def recalibrated(table, path):
            return pd.Series(calibration.apply(read_json(path), table["ef"].to_numpy(float)), index=table.index)

        held = {"before (the bundle's CAMUS calibrator)": base.loc[base.index.intersection(held_out), "ef_calibrated"],
                "site-calibrate on 20": recalibrated(base.loc[base.index.intersection(held_out)], tmp / "site_calibrator.json"),
                "site-tune on 20 (the bundle's CAMUS calibrator)": tuned.loc[tuned.index.intersection(held_out), "ef_calibrated"],
                "site-tune, then site-calibrate on the same 20": recalibrated(tuned.loc[tuned.index.intersection(held_out)],
                                                                             tmp / "tuned_calibrator.json")}
        tune_report = read_json(tmp / "tuned" / "site_tuning.json")
        site_flags = text_column(base.loc[base.index.intersection(held_out)], "review").str.contains("unlike_training")
        camus_flags = text_column(camus_table, "review").str.contains("unlike_training")
        novelty = read_json(args.bundle / "novelty.json") if (args.bundle / "novelty.json").is_file() else {}
    before = errors(held[next(iter(held))], site_ef)
    rows = {}
    for name, values in held.items():
        diff = errors(values, site_ef)
        common = before.index.intersection(diff.index)
        stats = summary(values[diff.index].to_numpy(float), site_ef[diff.index].to_numpy(float))
        rows[name] = {**{k: stats[k] for k in ("n", "mae", "bias", "r")},
                      "mae_change": paired_difference(before[common].abs().to_numpy(), diff[common].abs().to_numpy(), 2000, 0)}
    camus_diff = (camus_table["ef_calibrated"] - camus_table["ef_ref"]).dropna()
    record = {
        "name": "site-shift", "command": "python benchmarks/site_shift.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": machine.describe(), "environment": machine.environment(), "commit": machine.commit(),
        "bundle": str(args.bundle), "bundle_trained_on": read_json(args.bundle / "model.json").get("trained_on"),
        "shift": asdict(shift), "n_site": len(test), "n_adapt": len(adapt), "n_held_out": len(held_out),
        "site_ef_mean": float(site_ef.mean()), "held_out": rows, "site_tune": tune_report,
        "camus_untouched": {"n": int(len(camus_diff)), "mae": float(camus_diff.abs().mean()), "bias": float(camus_diff.mean())},
        "unlike_training": {"camus_validation": novelty.get("validation_flagged"), "camus_test": float(camus_flags.mean()),
                            "site_held_out": float(site_flags.mean()), "threshold": novelty.get("threshold")},
    }
    write_json(out / "site_shift_record.json", record)  # not record.json: that names a pipeline run record
    if (args.bundle / "MODEL_CARD.md").is_file():  # what the bundle was: its own card beside the numbers
        write_text(out / "bundle_MODEL_CARD.md", (args.bundle / "MODEL_CARD.md").read_text())
    lines = ["# Simulated site on CAMUS", "", f"`{record['command']}`", "", f"Machine: {record['machine']}; commit {record['commit']}.", "",
             f"{len(test)} CAMUS test patients as the site ({json.dumps(asdict(shift))}); {len(adapt)} used to adapt, "
             f"EF judged on the other {len(held_out)} against the site's own reference.", "",
             "| EF on the held-out site studies | n | MAE | bias | r | MAE change vs before [95% CI] |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        change = row["mae_change"]
        lines.append(f"| {name} | {row['n']} | {row['mae']:.2f} | {row['bias']:+.2f} | {row['r']:.3f} | "
                     f"{change['mean']:+.2f} [{change['ci'][0]:+.2f}, {change['ci'][1]:+.2f}] |")
    c = record["camus_untouched"]
    lines += ["", f"The same held-out patients as CAMUS gives them (untouched images, CAMUS's reference EF): MAE {c['mae']:.2f}, "
              f"bias {c['bias']:+.2f} (n {c['n']})."]
    u = record["unlike_training"]
    lines += ["", f"unlike_training flagged: CAMUS validation {100 * (u['camus_validation'] or float('nan')):.0f}%, CAMUS test "
              f"{100 * u['camus_test']:.0f}%, simulated site {100 * u['site_held_out']:.0f}% (held-out studies).", ""]
    write_text(out / "report.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
