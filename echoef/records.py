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

from . import calibration, machine
from .errors import UsageError
from .io import read_json, write_csv, write_json

# Files of a run copied into its record as they are (those that exist: folds add the cv ones).
COPIED = ("params.yaml", "dvc.lock", "metrics/ef.json", "metrics/ef_cv.json", "metrics/segmentation.json",
          "metrics/segmentation_cv.json", "metrics/ingest.json", "reports/ef_full.json", "reports/segmentation_full.json",
          "reports/segmentation_cv_full.json", "models/calibrator.json", "models/train_log.json")
PATIENT_COLUMNS = ["patient", "set", "quality", "method", "edv_ml", "esv_ml", "ef", "ef_calibrated", "ef_ref", "status"]


def patient_table(workspace: Path) -> pd.DataFrame:
    """Per patient of the run's EF table: set, image quality, EF before and after calibration, the
    reference, the status (out-of-fold rows too, with cross-validation)."""
    table = pd.read_csv(workspace / "data/ef.csv")
    oof = workspace / "data/ef_cv.csv"
    if oof.is_file() and oof.stat().st_size and not (cv := pd.read_csv(oof)).empty:
        table = pd.concat([table, cv], ignore_index=True)
    table["ef_calibrated"] = calibration.apply(read_json(workspace / "models/calibrator.json"), table["ef"])
    return table[PATIENT_COLUMNS]


def stage_seconds(workspace: Path) -> dict[str, float]:
    """Wall seconds of each stage as it last ran in this workspace (left by ``stage.run``)."""
    folder = workspace / ".dvc/tmp/stage_seconds"
    return {f["stage"]: f["seconds"] for f in map(read_json, sorted(folder.glob("*.json")))} if folder.is_dir() else {}


def make(name: str, workspace: Path, results: Path, command: str) -> Path:
    """Write ``results/<name>/`` from the run in ``workspace``; returns its folder."""
    workspace = Path(workspace)
    missing = [f for f in ("params.yaml", "metrics/ef.json", "data/ef.csv", "models/calibrator.json") if not (workspace / f).is_file()]
    if missing:
        raise UsageError(f"{workspace} holds no finished run ({', '.join(missing)} missing); run dvc repro first")
    out = Path(results) / name
    out.mkdir(parents=True, exist_ok=True)
    for relative in COPIED:
        if (workspace / relative).is_file():
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(workspace / relative, out / relative)
    write_csv(out / "patients.csv", patient_table(workspace))
    train_log = read_json(workspace / "models/train_log.json")
    params = (workspace / "params.yaml").read_text()
    write_json(out / "record.json", {
        "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
        "commit": machine.commit(workspace), "profile": next((line.split(":", 1)[1].strip() for line in params.splitlines()
                                                               if line.startswith("profile:")), ""),
        "train_precision": train_log.get("precision"), "train_device": train_log.get("device"),
        "environment": train_log.get("environment"), "train_seconds": train_log.get("train_seconds"),
        "stage_seconds": stage_seconds(workspace)})
    return out


def _fmt(value, digits=2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def results_table(results: Path) -> str:
    """The Markdown table of every record under ``results``: one row each, numbers from its files."""
    rows = ["| record | profile | test patients (failed) | LV Dice ED / ES | EF MAE after calibration [95% CI] | r [95% CI] "
            "| bias | MAE before | training | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for folder in sorted(p for p in Path(results).iterdir() if (p / "record.json").is_file()):
        record, ef = read_json(folder / "record.json"), read_json(folder / "metrics/ef.json")
        dice = read_json(folder / "metrics/segmentation.json").get("test", {})
        environment = record.get("environment") or {}
        where = environment.get("gpu") or (environment.get("cpu") or {}).get("model", "?")
        training = f"{_fmt((record.get('train_seconds') or math.nan) / 60, 0)} min, {record.get('train_precision')}, {where}"
        rows.append(f"| {record['name']} | {record['profile']} | {ef['n'] + ef['n_failed']} ({ef['n_failed']}) "
                    f"| {_fmt(dice.get('dice_lv_ed'), 3)} / {_fmt(dice.get('dice_lv_es'), 3)} "
                    f"| {_fmt(ef['mae'])} [{_fmt(ef['mae_low'])}, {_fmt(ef['mae_high'])}] "
                    f"| {_fmt(ef['r'], 3)} [{_fmt(ef['r_low'], 3)}, {_fmt(ef['r_high'], 3)}] | {ef['bias']:+.2f} "
                    f"| {_fmt(ef['mae_uncalibrated'])} | {training} | {record['commit'][:7]} |")
    return "\n".join(rows)
