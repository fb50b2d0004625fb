"""A predicted cohort's agreement with the references it came with (an EchoNet-Dynamic file list's EF
and traced frames, CAMUS cfg files): ``agreement.json``, ``agreement.md`` and ``bland_altman.png``
beside predict's summary, as the pipeline's evaluate stage reports a test list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io.atomic import write_json, write_text
from ..stats.agreement import cohort_agreement, reference_pairs
from . import figures
from .report import fmt

EF_NAMES = {"ef": "EF (raw)", "ef_calibrated": "EF (calibrated)", "ef_beat_mean": "EF (mean of the beats)"}
FRAME_NAMES = {"ed_error": "ED frame measured", "es_error": "ES frame measured", "ed_to_es_interval_error": "ED-to-ES interval",
               "beat_error": "nearest ED and ES found in the loop (the larger of the two errors)"}


def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    lines = ["# Agreement with the cohort's references\n",
             f"{report['n_studies']} studies, {report['n_with_reference']} with a reference EF, "
             f"{report['n_measured']} of those measured.\n",
             "| EF | n | MAE | bias | 95% limits of agreement | r |", "|---|---|---|---|---|---|"]
    for column, name in EF_NAMES.items():
        if column in report:
            s = report[column]
            lines.append(f"| {name} | {s['n']} | {fmt(s['mae'])} [{fmt(s['mae_ci'][0])}, {fmt(s['mae_ci'][1])}] | "
                         f"{fmt(s['bias'], sign='+')} [{fmt(s['bias_ci'][0], sign='+')}, {fmt(s['bias_ci'][1], sign='+')}] | "
                         f"{fmt(s['loa_low'], sign='+')} to {fmt(s['loa_high'], sign='+')} | "
                         f"{fmt(s['r'])} [{fmt(s['r_ci'][0])}, {fmt(s['r_ci'][1])}] |")
    frames = {k: v for k, v in report["frames"].items() if v.get("n")}
    if frames:
        lines += ["", "Picked frames against the traced ones (picked - traced):", "",
                  "| frames | n | median abs error | mean abs error | within 1 | within 3 |", "|---|---|---|---|---|---|"]
        for key, s in frames.items():
            lines.append(f"| {FRAME_NAMES.get(key, key)} | {s['n']} | {fmt(s['median_abs'], 1)} | {fmt(s['mean_abs'], 1)} | "
                         f"{100 * s['within_1']:.0f}% | {100 * s['within_3']:.0f}% |")
    lines += ["", f"Flagged for review: {100 * report['flagged_for_review']:.0f}% of measured studies; "
              f"unlike the training data: {100 * report['unlike_training']:.0f}%."
              if np.isfinite(report["flagged_for_review"]) else "No study was measured."]
    lines += review_lines(report.get("review_flags") or {})
    return "\n".join(lines) + "\n"


def review_lines(flags: dict) -> list[str]:
    """Whether review picked out the studies far from the reference: one row for any reason and one
    per kind of reason raised (``agreement.review_agreement``)."""
    if not flags.get("n"):
        return []
    limit = f"{flags['large_error_points']:.0f}"
    lines = ["", f"Review against the reference ({flags['n']} measured studies, {flags['n_large_errors']} off by more "
                 f"than {limit} points; the EF each reports, calibrated where it was):", "",
             f"| review reason | studies flagged | MAE flagged | MAE others | flagged - others [95% CI] | flagged off by > {limit} | "
             f"off by > {limit} flagged |", "|---|---|---|---|---|---|---|"]
    for name, row in flags["kinds"].items():
        low, high = row["difference_ci"]
        lines.append(f"| {'any' if name == 'any' else '`' + name + '`'} | {row['n_flagged']} ({_percent(row['share_flagged'])}) | "
                     f"{fmt(row['mae_flagged'])} | {fmt(row['mae_others'])} | {fmt(row['difference'], sign='+')} "
                     f"[{fmt(low, sign='+')}, {fmt(high, sign='+')}] | {_percent(row['precision'])} | {_percent(row['recall'])} |")
    return lines


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%" if np.isfinite(share) else "-"


def write_cohort_report(table: pd.DataFrame, folder: Path) -> dict | None:
    """The agreement files of a predicted cohort in ``folder``, when at least one study has a
    reference EF; returns the report (None, and nothing written, without any reference)."""
    report = cohort_agreement(table)
    if not report["n_with_reference"]:
        return None
    write_json(folder / "agreement.json", report)
    write_text(folder / "agreement.md", markdown(report))
    panels = []
    for column, name in EF_NAMES.items():
        if column in report and report[column]["n"] >= 3:
            predicted, reference = reference_pairs(table, column)
            panels.append((name, reference, predicted, report[column]))
    if panels:
        figures.bland_altman(panels, folder / "bland_altman.png")
    return report
