"""Run records: what a result needs to be regenerated, compared and defended, kept in git under
``results/<name>/`` (numbers only, never image data): the pipeline's metric files and full
statistics, the per-patient EF table, the exact parameters and dvc.lock, the commit, the machine and
precision, and each stage's wall time. README's results table is generated from them."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pandas as pd

from .. import machine, runfiles
from ..errors import UsageError
from ..io.atomic import OWNER_MARK, atomic_folder, check_ownable, claim_folder, read_json, write_csv, write_json
from ..model import novelty
from ..names import safe_name
from ..stats import agreement, calibration
from .report import fmt

# Files of a run copied into its record as they are (those that exist: folds add the cv ones).
COPIED = tuple(str(path) for path in runfiles.RECORDED)
PATIENT_COLUMNS = ["patient", "set", "quality", "method", "edv_ml", "esv_ml", "ef", "ef_calibrated", "ef_ref", "status"]
# What review reads of each study (``review.reasons``, ``novelty.score``), kept where the run left it, so
# that a reason's limit can be decided on the record's rows (out-of-fold ones among them).
SIGNAL_COLUMNS = ["ef_2ch", "ef_4ch", "member_ef_spread", *novelty.FEATURES]


def patient_table(workspace: Path) -> pd.DataFrame:
    """Per patient of the run's EF table: set, image quality, EF before and after calibration, the
    reference, the status (out-of-fold rows too, with cross-validation), and the review signals the
    run left (``SIGNAL_COLUMNS``: the validation and test patients' from inference, the out-of-fold
    ones' from the folds')."""
    table = pd.read_csv(workspace / runfiles.EF_TABLE)
    signals = workspace / runfiles.NOVELTY_FEATURES
    if signals.is_file() and signals.stat().st_size:
        found = pd.read_csv(signals)
        table = table.merge(found[[c for c in found if c in ("patient", "set", *SIGNAL_COLUMNS)]], on=["patient", "set"],
                            how="left", validate="one_to_one")
    oof = workspace / runfiles.EF_CV_TABLE
    if oof.is_file() and oof.stat().st_size and not (cv := pd.read_csv(oof)).empty:
        table = pd.concat([table, cv], ignore_index=True)
    table["ef_calibrated"] = calibration.apply(read_json(workspace / runfiles.CALIBRATOR), table["ef"], table)
    return table[PATIENT_COLUMNS + [c for c in SIGNAL_COLUMNS if c in table]]


def stage_seconds(workspace: Path) -> dict[str, float]:
    """Wall seconds of each stage as it last ran in this workspace (left by ``stage.run``)."""
    folder = workspace / ".dvc/tmp/stage_seconds"
    return {f["stage"]: f["seconds"] for f in map(read_json, sorted(folder.glob("*.json")))} if folder.is_dir() else {}


def make(name: str, workspace: Path, results: Path, command: str, replace: bool = False) -> Path:
    """Write ``results/<name>/`` from the run in ``workspace``; returns its folder. A record is
    evidence that README's decisions cite: one of the same name is replaced only with ``replace``."""
    if safe_name(name) != name:
        raise UsageError(f"record name {name!r}: give a plain name (letters, digits, '.', '_', '-'), e.g. {safe_name(name)}")
    workspace = Path(workspace)
    needed = (runfiles.PARAMS, runfiles.EF_METRICS, runfiles.EF_TABLE, runfiles.CALIBRATOR, runfiles.TRAIN_LOG)
    missing = [f for f in needed if not (workspace / f).is_file()]
    if missing:
        raise UsageError(f"{workspace} holds no finished run ({', '.join(map(str, missing))} missing); run dvc repro first")
    final = Path(results) / name
    if (final / "record.json").is_file() and not replace:
        try:
            made = read_json(final / "record.json")
        except ValueError:  # a damaged record is still one: it is kept all the same
            made = {}
        raise UsageError(f"{final} exists (made {made.get('created', '?')} at commit {str(made.get('commit', '?'))[:7]}); "
                         "give another name, or --replace to make it again")
    # A record is written whole or not at all, and replaces only an earlier record of EchoEF's.
    with atomic_folder(final, "the record") as out:
        _write_record(out, name, workspace, command)
    return final


def claim_evidence_folder(path: Path, replace: bool) -> Path:
    """The folder a benchmark writes its evidence into (a comparison, a decision, a measurement under
    ``results/``), claimed as EchoEF's (``atomic.claim_folder``, which refuses a user's folder). One
    that already holds such evidence is written again only with ``replace``: README's decisions cite
    them, and a rerun with another run's paths must not silently replace one."""
    path = Path(path)
    check_ownable(path, "--out")  # a user's folder is refused first, --replace or not
    if path.is_dir() and any(entry.name != OWNER_MARK for entry in path.iterdir()) and not replace:
        raise UsageError(f"--out {path} already holds a record; give another folder, or --replace to write it again")
    return claim_folder(path)


def _write_record(out: Path, name: str, workspace: Path, command: str) -> None:
    for relative in COPIED:
        if (workspace / relative).is_file():
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(workspace / relative, out / relative)
    write_csv(out / "patients.csv", patient_table(workspace))
    train_log = read_json(workspace / runfiles.TRAIN_LOG)
    params = (workspace / runfiles.PARAMS).read_text()
    full = workspace / runfiles.EF_FULL
    interval = read_json(full).get("test", {}).get("interval") if full.is_file() else None
    write_json(out / "record.json", {
        "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
        "commit": machine.commit(workspace), "profile": next((line.split(":", 1)[1].strip() for line in params.splitlines()
                                                               if line.startswith("profile:")), ""),
        "train_precision": train_log.get("precision"), "train_device": train_log.get("device"),
        "environment": train_log.get("environment"), "train_seconds": train_log.get("train_seconds"),
        "stage_seconds": stage_seconds(workspace), "test_prediction_interval": interval})


def results_table(results: Path) -> str:
    """The Markdown table of every record under ``results``: one row each, numbers from its files."""
    rows = ["| record | profile | test patients (failed) | LV Dice ED / ES | EF MAE after calibration [95% CI] | r [95% CI] "
            "| bias | MAE before | EF interval: coverage (width) | training | commit |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for folder in sorted(p for p in Path(results).iterdir() if (p / "record.json").is_file()):
        record, ef = read_json(folder / "record.json"), read_json(folder / runfiles.EF_METRICS)
        dice = read_json(folder / runfiles.SEGMENTATION_METRICS).get("test", {})
        environment = record.get("environment") or {}
        where = environment.get("gpu") or (environment.get("cpu") or {}).get("model", "?")
        training = f"{fmt((record.get('train_seconds') or math.nan) / 60, 0)} min, {record.get('train_precision')}, {where}"
        interval = record.get("test_prediction_interval") or {}
        coverage = (f"{fmt(interval['coverage'])} of {interval['n_test']} at {interval['level']:.0%} "
                    f"(± {fmt(interval['half_width'], 1)})" if interval.get("coverage") is not None else "-")
        rows.append(f"| {record['name']} | {record['profile']} | {ef['n'] + ef['n_failed']} ({ef['n_failed']}) "
                    f"| {fmt(dice.get('dice_lv_ed'), 3)} / {fmt(dice.get('dice_lv_es'), 3)} "
                    f"| {fmt(ef['mae'])} [{fmt(ef['mae_low'])}, {fmt(ef['mae_high'])}] "
                    f"| {fmt(ef['r'], 3)} [{fmt(ef['r_low'], 3)}, {fmt(ef['r_high'], 3)}] | {fmt(ef['bias'], 2, '+')} "
                    f"| {fmt(ef['mae_uncalibrated'])} | {coverage} | {training} | {record['commit'][:7]} |")
    return "\n".join(rows) if len(rows) > 2 else "No run of the pipeline has been recorded yet."


def expert_masks_lines(results: Path) -> list[str]:
    """One sentence per EF-method record (the EF method on expert masks against the reference EF)."""
    lines = []
    for folder in sorted(p for p in Path(results).iterdir() if (p / "method_record.json").is_file()):
        record = read_json(folder / "method_record.json")
        s = record["methods"]["simpson_biplane"]
        lines.append(f"Simpson's biplane method (this project's port of the CAMUS reference algorithm, masks measured on "
                     f"0.308 mm pixels) on the expert masks of {s['n']} patients of `{record['data']}`: EF MAE "
                     f"{fmt(s['mae'])} points against the stored reference EF, {fmt(100 * s['exact'], 1)}% exact, "
                     f"{fmt(100 * s['within_1'], 1)}% within 1 point (record `{folder.name}`, commit {record['commit'][:7]}).")
    return lines


def ridge_adopted(comparison: dict) -> bool:
    """The adoption rule of docs/experiment-log.md (written before the out-of-fold run): the feature
    ridge replaces the linear calibrator only if the paired 95% interval of ridge minus linear
    out-of-fold EF MAE lies wholly below zero."""
    return agreement.wholly_below_zero(comparison.get("ridge_minus_linear") or {})


def _difference(row: dict) -> str:
    return f"{fmt(row['mean'], 2, '+')} [{fmt(row['ci'][0], 2, '+')}, {fmt(row['ci'][1], 2, '+')}]"


def parameter_changes(changed: dict) -> str:
    """'`key` A -> B' for each changed parameter (dotted key -> [A's value, B's value], None where a
    run's parameters lack the key), 'none' where there is none."""
    def shown(value):
        return "absent" if value is None else value
    return "; ".join(f"`{key}` {shown(a)} -> {shown(b)}" for key, (a, b) in changed.items()) or "none"


def recipe_adopted(results: dict) -> bool:
    """The rule for a candidate recipe (``results`` of a compare_runs comparison, set -> its
    ``ef_abs_error`` differences): adopted only if its EF absolute error minus the current recipe's
    lies wholly below zero before and after calibration, on every set compared."""
    return agreement.all_wholly_below_zero(row for result in results.values() for row in result["ef_abs_error"].values())


def recipe_lines(results: Path) -> list[str]:
    """One sentence per out-of-fold comparison of a candidate recipe with the current one (a
    ``comparison.json`` of ``benchmarks/compare_runs.py --cv --decide``): what the candidate changed,
    both MAEs and the paired difference before and after calibration, and the verdict, recomputed
    here from those intervals by the same rule. Comparisons of one ``rule_group`` (one candidate judged
    on several sets of models) make one sentence, and the candidate is adopted only if every one of
    them passes."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for folder in sorted(p for p in Path(results).iterdir() if (p / "comparison.json").is_file()):
        comparison = read_json(folder / "comparison.json")
        if (comparison.get("results") or {}).get("oof") and "b_replaces_a" in comparison:
            groups.setdefault(comparison.get("rule_group") or f"record {folder.name}", []).append((folder.name, comparison))
    lines = []
    for members in groups.values():
        adopted = all(recipe_adopted(comparison["results"]) for _, comparison in members)
        names = " and ".join(f"`{name}`" for name, _ in members)
        changes = sorted({parameter_changes(comparison["changed_parameters"]) if "changed_parameters" in comparison
                          else "not recorded" for _, comparison in members})
        rule = ("the candidate only if both intervals lie wholly below zero" if len(members) == 1 else
                "the candidate only if every interval of every comparison lies wholly below zero")
        lines.append(f"Out of fold, record{'s' if len(members) > 1 else ''} {names}: a candidate recipe (parameters changed: "
                     f"{'; '.join(changes)}) against " + "; against ".join(_recipe_numbers(comparison) for _, comparison in members)
                     + f"; so by the rule written before the run ({rule}) "
                     f"{'the candidate is adopted' if adopted else 'the current recipe stays'}.")
    return lines


def _recipe_numbers(comparison: dict) -> str:
    """One comparison's part of README's sentence: the run it is measured against, both MAEs and the
    paired differences before and after the cross-fitted calibrator."""
    oof = comparison["results"]["oof"]
    pre, post = oof["ef_abs_error"]["pre"], oof["ef_abs_error"]["post"]
    return (f"`{Path(comparison['a']).name}` on the same folds, {oof['n']} patients: EF MAE before calibration "
            f"current {fmt(pre['a'])}, candidate {fmt(pre['b'])}, candidate minus current {_difference(pre)} points per "
            f"patient; after a linear calibrator cross-fitted alike current {fmt(post['a'])}, candidate {fmt(post['b'])}, "
            f"{_difference(post)}")


def calibrator_default_lines(results: Path) -> list[str]:
    """One sentence per calibrator-default decision (``calibrator_decision.json`` of
    ``benchmarks/calibrator_default.py``): each candidate's out-of-fold MAE and paired difference with
    the current default, and the choice, recomputed here by ``agreement.rule_choice``."""
    lines = []
    for folder in sorted(p for p in Path(results).iterdir() if (p / "calibrator_decision.json").is_file()):
        decision = read_json(folder / "calibrator_decision.json")
        current, rows = decision["current"], decision["out_of_fold"]
        others = ", ".join(f"{name} {fmt(row['mae'])} ({_difference(row['minus_current'])})"
                           for name, row in rows.items() if name != current)
        lines.append(f"Calibrator default, record `{folder.name}`: on the out-of-fold predictions of the "
                     f"{decision['n_out_of_fold']} training patients of `{Path(decision['record']).name}`, EF MAE "
                     f"{current} {fmt(rows[current]['mae'])}; {others} (candidate minus current per patient); so by "
                     f"the rule (a candidate only if its interval lies wholly below zero) the choice is "
                     f"{agreement.rule_choice(current, rows)}.")
    return lines


def calibrator_lines(results: Path) -> list[str]:
    """One sentence per record whose out-of-fold calibrators were compared (``cv.calibrators`` of its
    reports/ef_full.json): each method's cross-fitted MAE, ridge minus linear with its paired
    interval, and what ``ridge_adopted`` decides."""
    lines = []
    for folder in sorted(p for p in Path(results).iterdir() if (p / runfiles.EF_FULL).is_file()):
        comparison = (read_json(folder / runfiles.EF_FULL).get("cv") or {}).get("calibrators") or {}
        if "ridge_minus_linear" not in comparison:
            continue
        diff = comparison["ridge_minus_linear"]
        maes = ", ".join(f"{method} {fmt(mae)}" for method, mae in comparison["mae"].items())
        lines.append(f"Calibrators cross-fitted on the out-of-fold predictions of record `{folder.name}` "
                     f"({comparison['n']} patients, ridge fitted in {comparison.get('ridge_folds', '?')} folds): EF MAE "
                     f"{maes}; ridge minus linear {fmt(diff['mean'], 2, '+')} [{fmt(diff['ci'][0], 2, '+')}, "
                     f"{fmt(diff['ci'][1], 2, '+')}] points per patient, so by the rule written before the run (ridge "
                     f"only if that interval lies wholly below zero) "
                     f"{'ridge is adopted' if ridge_adopted(comparison) else 'the linear calibrator stays'}.")
    return lines


BEGIN, END = "<!-- results: generated by `echoef results --readme README.md`; do not edit -->", "<!-- results: end -->"


def decisions(results: Path) -> list[str]:
    """Every decision the records make: out-of-fold calibrators, the calibrator default, recipes."""
    return [*calibrator_lines(results), *calibrator_default_lines(results), *recipe_lines(results)]


def readme_block(results: Path) -> str:
    """README's results section body: the EF-method sentences, the pipeline runs' table and every
    decision the records make (``decisions``), a paragraph each."""
    lines = decisions(results)
    return "\n".join([BEGIN, "", *expert_masks_lines(results), "", results_table(results), "",
                      *[x for line in lines for x in (line, "")], END])


def with_readme_block(readme: str, results: Path) -> str:
    """``readme`` with its generated results block replaced by the one the records give now."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + readme_block(results) + readme[end:]


PAGE_START = "# Current results\n\nGenerated from the run records under `results/` by `echoef results --page "


def is_results_page(text: str) -> bool:
    """Whether ``text`` is a page ``results_page`` wrote (so that rewriting it loses nothing of anyone's)."""
    return text.startswith(PAGE_START)


def results_page(results: Path) -> str:
    """docs/benchmarks.md: every record with its table row, how it was made and on what."""
    page = [PAGE_START + "docs/benchmarks.md`; do not edit. The history of experiments (what was tried, on what, and why it "
            "was kept or not) is in `docs/experiment-log.md`.", "", "Development figures: the 50-patient test list "
            "has been looked at across many variants. Failed patients are counted and excluded from the agreement "
            "statistics; intervals are 95% patient-level bootstrap intervals.", "", *expert_masks_lines(results), "",
            results_table(results), "", *[line + "\n" for line in decisions(results)]]
    for folder in sorted(p for p in Path(results).iterdir() if (p / "record.json").is_file()):
        record = read_json(folder / "record.json")
        environment = record.get("environment") or {}
        cpu = environment.get("cpu") or {}
        stages = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in record.get("stage_seconds", {}).items())
        page += [f"## {record['name']}", "", f"- command: `{record['command']}`",
                 f"- commit: {record['commit']}; profile: {record['profile']}",
                 f"- machine: {environment.get('gpu') or cpu.get('model', '?')} ({cpu.get('cores', '?')} cores, "
                 f"flags {' '.join(cpu.get('flags', []))}); Python {environment.get('python')}, torch {environment.get('torch')}",
                 f"- training precision: {record.get('train_precision')}, on {record.get('train_device')}",
                 f"- stage wall times: {stages or 'not recorded'}", ""]
    return "\n".join(page)
