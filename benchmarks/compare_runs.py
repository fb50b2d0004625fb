"""Two runs compared patient by patient: EF absolute error before and after calibration and LV Dice at
ED and ES, as B minus A with a paired-bootstrap 95% interval, on the patients both runs measured; and
how alike their EF errors are (correlation before calibration).

Usage: python benchmarks/compare_runs.py RUN_A RUN_B [--sets val test] [--cv] [--bootstrap 2000]
                                         [--decide [--rule-group NAME] --out DIR] [--what TEXT]
A RUN is a pipeline workspace after `dvc repro`, or a run record (`results/NAME`, made by `echoef
record`). Per set, "after" is each run's own calibrator (models/calibrator.json). With --cv the
out-of-fold patients are compared instead; there "after" is a linear calibrator cross-fitted on the
out-of-fold rows in the same five patient folds for both runs, so that the two are calibrated alike.
Runs whose cross-validation folds differ (data/cv/folds.json's hash in their dvc.lock) are not
compared out of fold. A record keeps no per-patient Dice; its LV Dice is the record's mean.

--decide applies the rule of issue 37, written before the runs it judges: B replaces A only if B's
per-patient absolute EF error minus A's has an interval wholly below zero both before and after
calibration, on every set compared. Where the rule written before the runs spans several comparisons
(one candidate judged on several sets of models), --rule-group NAME marks each of them: the candidate
is adopted only if every comparison of the group passes (README states one verdict for the group).
--what TEXT says what B is where its parameters do not (an ensemble of other runs' models, a
re-run): the report states it beside the parameters that differ. With --out the comparison and the verdict are written there as
comparison.json and report.md, with the command, machine and commit, and the per-patient absolute
errors in patients.csv.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from echoef import machine, params, runfiles
from echoef.errors import UsageError
from echoef.io.atomic import read_json, write_csv, write_json, write_text
from echoef.measure.ef import is_measured
from echoef.reporting import records
from echoef.stats import agreement, calibration

CROSS_FIT_FOLDS = 5


def is_record(run: Path) -> bool:
    """A run record (results/NAME) rather than a workspace."""
    return (run / "record.json").is_file() and (run / "patients.csv").is_file()


def ef_rows(run: Path, subset: str) -> pd.DataFrame:
    """Per measured patient of ``subset`` ('val', 'test' or 'oof'): EF before ('ef') and, for val and
    test, after ('ef_calibrated') the run's own calibrator, and the reference, indexed by patient."""
    if is_record(run):
        rows = pd.read_csv(run / "patients.csv").query("set == @subset")
    else:
        rows = pd.read_csv(run / (runfiles.EF_CV_TABLE if subset == "oof" else runfiles.EF_TABLE))
        if subset == "oof":  # calibrated alike later; a run of the folds alone has no calibrator
            rows = rows.assign(ef_calibrated=np.nan)
        else:
            rows = rows.query("set == @subset")
            rows = rows.assign(ef_calibrated=calibration.apply(read_json(run / runfiles.CALIBRATOR), rows["ef"], rows))
    rows = rows[rows["status"].map(is_measured) & rows["ef_ref"].notna()]
    return rows.set_index("patient")[["ef", "ef_calibrated", "ef_ref"]]


def patient_folds(patients: pd.Index, k: int = CROSS_FIT_FOLDS, seed: int = 0) -> np.ndarray:
    """A fold per patient for cross-fitting, from the patients' sorted names alone: the same for two
    runs compared on the same patients, whatever order their tables keep."""
    order = np.argsort(np.argsort(np.asarray(patients, dtype=str)))
    folds = np.arange(len(patients)) % k
    np.random.default_rng(seed).shuffle(folds)
    return folds[order]


def ef_errors(a: pd.DataFrame, b: pd.DataFrame, subset: str, ef_range: tuple[float, float]) -> pd.DataFrame:
    """Absolute EF errors of both runs on the patients both measured: columns pre_a, pre_b (before
    calibration), post_a, post_b (after; cross-fitted alike out of fold); with the signed errors
    before calibration, each run's EF and the reference."""
    both = pd.merge(a, b, left_index=True, right_index=True, suffixes=("_a", "_b")).sort_index()
    if not np.allclose(both["ef_ref_a"], both["ef_ref_b"]):
        sys.exit("the two runs' reference EF differ for the same patients: not the same data")
    out = pd.DataFrame(index=both.index)
    for run in "ab":
        ef, ref = both[f"ef_{run}"].to_numpy(float), both[f"ef_ref_{run}"].to_numpy(float)
        post = (calibration.cross_fit(ef, ref, patient_folds(both.index), "linear", ef_range)[0] if subset == "oof"
                else both[f"ef_calibrated_{run}"].to_numpy(float))
        out[f"pre_{run}"], out[f"post_{run}"] = np.abs(ef - ref), np.abs(post - ref)
        out[f"signed_{run}"], out[f"ef_{run}"] = ef - ref, ef
    out["ef_ref"] = both["ef_ref_a"]
    return out


def lv_dice(run: Path, subset: str) -> pd.DataFrame | None:
    """LV Dice per patient (mean of the two views) at ED and ES; None where the run keeps no
    per-patient Dice (a record keeps means only)."""
    paths = (sorted(run.glob("data/cv/fold_*/predictions/dice.csv")) if subset == "oof"
             else [run / runfiles.SEGMENTATION_DICE])
    if is_record(run) or not paths or not all(path.is_file() for path in paths):
        return None
    table = pd.concat([pd.read_csv(path) for path in paths])
    table = table if subset == "oof" else table.query("set == @subset")
    return table.pivot_table(index="patient", columns="phase", values="dice_lv")


def mean_dice(run: Path, subset: str) -> dict:
    """A run's mean LV Dice at ED and ES on ``subset``, from its metric files."""
    if subset == "oof":
        summary = read_json(run / runfiles.SEGMENTATION_CV_METRICS).get("oof", {})
    else:
        summary = read_json(run / runfiles.SEGMENTATION_METRICS).get(subset, {})
    return {phase: summary.get(f"dice_lv_{phase}") for phase in ("ed", "es")}


def folds_hash(run: Path) -> str | None:
    """The md5 of data/cv/folds.json as the run's dvc.lock states it (None where it states none)."""
    lock = run / runfiles.LOCK
    if not lock.is_file():
        return None
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out.get("path") == "data/cv/folds.json":
                return out.get("md5")
    return None


def compare_columns(a: pd.DataFrame, b: pd.DataFrame, n_resamples: int, seed: int) -> dict:
    """Per column: both runs' means and B minus A with its interval, on the patients in both."""
    both = pd.merge(a, b, left_index=True, right_index=True, suffixes=("_a", "_b")).dropna()
    return {column: {"a": float(both[f"{column}_a"].mean()), "b": float(both[f"{column}_b"].mean()),
                     **agreement.paired_difference(both[f"{column}_a"], both[f"{column}_b"], n_resamples, seed)}
            for column in a.columns}


def calibrated_range(run: Path) -> tuple[float, float]:
    """The EF range a run's calibrated EFs are clipped to: its calibrator's, or, for a run of the folds
    alone (no calibrator; fold_pieces.py join), its parameters' ``calibration.ef_range``."""
    if (run / runfiles.CALIBRATOR).is_file():
        return tuple(read_json(run / runfiles.CALIBRATOR)["ef_range"])
    try:  # the calibration section checked as the pipeline checks it
        stated = (yaml.safe_load((run / runfiles.PARAMS).read_text()) or {}).get("calibration")
        low, high = params.build(params.Calibration, stated, "calibration.").ef_range
    except (OSError, ValueError, AttributeError) as error:
        raise UsageError(f"{run} holds no calibrator ({runfiles.CALIBRATOR}) and no calibration.ef_range in its "
                         f"{runfiles.PARAMS} ({error}): give as run A a finished run or a record") from error
    return float(low), float(high)


def compare(run_a: Path, run_b: Path, subset: str, n_resamples: int, seed: int) -> dict:
    """One set's comparison: EF absolute error before and after calibration, LV Dice, error correlation."""
    ef_range = calibrated_range(run_a)
    errors = ef_errors(ef_rows(run_a, subset), ef_rows(run_b, subset), subset, ef_range)
    ef = {phase: {"a": float(errors[f"{phase}_a"].mean()), "b": float(errors[f"{phase}_b"].mean()),
                  **agreement.paired_difference(errors[f"{phase}_a"], errors[f"{phase}_b"], n_resamples, seed)}
          for phase in ("pre", "post")}
    dice_a, dice_b = lv_dice(run_a, subset), lv_dice(run_b, subset)
    dice = (compare_columns(dice_a, dice_b, n_resamples, seed) if dice_a is not None and dice_b is not None
            else {phase: {"a": mean_dice(run_a, subset)[phase], "b": mean_dice(run_b, subset)[phase], "n": None}
                  for phase in ("ed", "es")})
    signed_a, signed_b = errors["signed_a"], errors["signed_b"]
    return {"patients": errors, "n": int(len(errors)), "ef_abs_error": ef, "lv_dice": dice,
            "bias": {"a": float(signed_a.mean()), "b": float(signed_b.mean())},
            "error_sd": {"a": float(signed_a.std()), "b": float(signed_b.std())},
            "error_correlation": float(np.corrcoef(signed_a, signed_b)[0, 1])}


def flat_parameters(tree: dict, prefix: str = "") -> dict:
    """params.yaml as dotted keys (``train.optimisation.ef_weight``) to leaf values."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat_parameters(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_parameters(run_a: Path, run_b: Path) -> dict:
    """What B's parameters change: dotted key -> [A's value, B's value], None where a run's
    params.yaml lacks the key (a parameter added after that run, or a file missing)."""
    a, b = ({} if not (run / runfiles.PARAMS).is_file() else flat_parameters(yaml.safe_load((run / runfiles.PARAMS).read_text()) or {})
            for run in (run_a, run_b))
    return {key: [a.get(key), b.get(key)] for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}


def report_lines(results: dict, run_a: Path, run_b: Path, decide: bool, command: str, changed: dict,
                 group: str | None = None, what: str | None = None) -> list[str]:
    lines = [f"# {run_b.name} against {run_a.name}", "", f"`{command}`", "",
             f"Machine: {machine.describe()}; commit {machine.commit()}.", "",
             f"A = `{run_a}`, B = `{run_b}`; B minus A per patient, 95% paired-bootstrap interval.", "",
             *([f"B: {what}.", ""] if what else []),
             f"Parameters B changes (its params.yaml against A's): {records.parameter_changes(changed)}.", ""]
    for subset, result in results.items():
        lines += [f"## {'out of fold' if subset == 'oof' else subset} (n {result['n']})", "",
                  "| measure | A | B | B - A [95% CI] |", "|---|---|---|---|"]
        for phase, row in result["ef_abs_error"].items():
            label = "EF MAE before calibration" if phase == "pre" else (
                "EF MAE after calibration (linear, cross-fitted alike)" if subset == "oof" else "EF MAE after calibration (each run's own)")
            lines.append(f"| {label} | {row['a']:.2f} | {row['b']:.2f} | {row['mean']:+.3f} [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}] |")
        for phase, row in result["lv_dice"].items():
            diff = (f"{row['mean']:+.4f} [{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]" if row.get("n") else "(means only)")
            a, b = (f"{value:.4f}" if value is not None else "?" for value in (row["a"], row["b"]))
            lines.append(f"| LV Dice {phase.upper()} | {a} | {b} | {diff} |")
        lines += [f"| EF bias before calibration | {result['bias']['a']:+.2f} | {result['bias']['b']:+.2f} | |",
                  f"| EF error SD before calibration | {result['error_sd']['a']:.2f} | {result['error_sd']['b']:.2f} | |", "",
                  f"Correlation of the two runs' EF errors: {result['error_correlation']:.2f}.", ""]
    if decide:
        lines.append(f"Verdict by the rule (B only if every EF interval above lies wholly below zero): "
                     f"**{'B replaces A' if records.recipe_adopted(results) else 'A stays'}**"
                     + (f" in this comparison; the rule of group `{group}` adopts B only if every comparison of the group "
                        "passes." if group else "."))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--sets", nargs="+", default=["val", "test"])
    parser.add_argument("--cv", action="store_true", help="compare the out-of-fold patients instead")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decide", action="store_true", help="apply the rule and state the verdict")
    parser.add_argument("--rule-group", help="with --decide: the rule spans every comparison that names this group")
    parser.add_argument("--out", type=Path, help="write comparison.json and report.md here")
    parser.add_argument("--replace", action="store_true", help="write into --out although it holds a record already")
    parser.add_argument("--what", help="what B is, where its parameters do not say it")
    args = parser.parse_args()
    if args.rule_group and not args.decide:
        parser.error("--rule-group needs --decide")
    subsets = ["oof"] if args.cv else args.sets
    if args.cv and folds_hash(args.run_a) != folds_hash(args.run_b):
        sys.exit(f"the runs' cross-validation folds differ (data/cv/folds.json {folds_hash(args.run_a)} against "
                 f"{folds_hash(args.run_b)}): run both with the same split parameters")
    try:
        results = {subset: compare(args.run_a, args.run_b, subset, args.bootstrap, args.seed) for subset in subsets}
    except UsageError as error:
        sys.exit(f"error: {error}")
    command = "python benchmarks/compare_runs.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    changed = changed_parameters(args.run_a, args.run_b)
    lines = report_lines(results, args.run_a, args.run_b, args.decide, command, changed, args.rule_group, args.what)
    if args.out:
        try:
            out = records.claim_evidence_folder(args.out, args.replace)
        except UsageError as error:
            sys.exit(f"error: {error}")
        # The per-patient errors too, so that the verdict can be recomputed from the committed files.
        write_csv(out / "patients.csv", pd.concat({subset: result["patients"] for subset, result in results.items()},
                                                  names=["set", "patient"]).reset_index())
        summary = {subset: {key: value for key, value in result.items() if key != "patients"} for subset, result in results.items()}
        write_json(out / "comparison.json", {"command": command, "machine": machine.describe(), "commit": machine.commit(),
                                             "a": str(args.run_a), "b": str(args.run_b), "changed_parameters": changed,
                                             "folds_md5": folds_hash(args.run_a),
                                             **({"rule_group": args.rule_group} if args.rule_group else {}),
                                             **({"what_b": args.what} if args.what else {}),
                                             "results": summary, **({"b_replaces_a": records.recipe_adopted(results)} if args.decide else {})})
        write_text(out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
