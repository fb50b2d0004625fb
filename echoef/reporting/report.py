"""What the evaluate stage reports: a headline of a few numbers for DVC's metric views (every interval
as two scalars, since DVC keeps only scalars), and a self-contained report a researcher can read
offline or attach to a paper's supplement (HTML with its figures inside, and Markdown)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from ..io.atomic import write_text
from ..measure.ef import EF_CLASS_NAMES

# The numbers of one set's agreement that the headline keeps, after calibration and before.
POST_KEYS = ("mae", "bias", "sd", "loa_low", "loa_high", "r")
PRE_KEYS = ("mae", "bias", "r")
INTERVALS = ("mae", "r")


def headline_number(key: str, value):
    """``value`` rounded as the reports print it (3 decimals of r, 2 of an EF point): more digits are
    noise at these sample sizes and would widen every column of `dvc exp show`. Full precision stays in
    reports/*_full.json."""
    if value is None or isinstance(value, int) or math.isnan(value):
        return value
    return round(float(value), 3 if key == "r" else 2)


def _with_intervals(stats: dict, keys: tuple[str, ...], suffix: str = "") -> dict:
    out = {}
    for key in keys:
        out[key + suffix] = headline_number(key, stats[key])
        if key in INTERVALS:
            low, high = stats.get(f"{key}_ci", [math.nan, math.nan])
            out[f"{key}{suffix}_low"], out[f"{key}{suffix}_high"] = headline_number(key, low), headline_number(key, high)
    return out


def ef_headline(test: dict, val: dict) -> dict:
    """metrics/ef.json, the test list's agreement: after calibration (MAE and r with 95% intervals,
    bias, SD, limits of agreement) and before it, the patient counts, and validation MAE (20 numbers,
    short top-level names so that `dvc exp show` fits a terminal)."""
    return {"n": test["post"]["n"], "n_failed": test["n_failed"], **_with_intervals(test["post"], POST_KEYS),
            **_with_intervals(test["pre"], PRE_KEYS, "_uncalibrated"), "val_mae": headline_number("mae", val["post"]["mae"])}


def cv_headline(cv: dict) -> dict:
    """metrics/ef_cv.json: out-of-fold agreement (cross-fitted calibration) and the fold models'
    ensemble on the test list; {"folds": 0} without cross-validation."""
    if not cv.get("folds"):
        return {"folds": 0}
    oof = cv["oof"]
    return {"folds": cv["folds"],
            "oof": {"n": oof["post"]["n"], "n_failed": oof["n_failed"], **_with_intervals(oof["post"], ("mae", "bias", "r")),
                    "mae_uncalibrated": headline_number("mae", oof["pre"]["mae"])},
            "test_ensemble": {"mae": headline_number("mae", cv["test_ensemble"]["post"]["mae"])}}


def dice_headline(summary: dict) -> dict:
    """metrics/segmentation.json and the like: LV Dice at ED and ES of each set summarised."""
    return {name: {key: stats[key] for key in ("dice_lv_ed", "dice_lv_es")} for name, stats in summary.items()
            if isinstance(stats, dict) and "dice_lv_ed" in stats}


def fmt(value, digits: int = 2, sign: str = "") -> str:
    """A number for a page or table: ``digits`` decimals, '+' in ``sign`` to show it, '-' when missing or NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{sign}.{digits}f}"


def _interval(stats: dict, key: str, digits: int = 2) -> str:
    low, high = stats.get(f"{key}_ci", [math.nan, math.nan])
    return f"{fmt(stats[key], digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def tables(test: dict) -> dict[str, list[list[str]]]:
    """The report's tables as rows of cells (first row the header): agreement, by image quality,
    EF classes, and errors by the reference EF's class."""
    agreement = [["", "after calibration", "before calibration"]]
    for key, name, digits in (("mae", "EF MAE (points) [95% CI]", 2), ("bias", "bias [95% CI]", 2), ("sd", "SD of differences", 2),
                              ("loa_low", "lower limit of agreement", 2), ("loa_high", "upper limit of agreement", 2),
                              ("r", "Pearson r [95% CI]", 3), ("within_5", "within 5 points", 2), ("within_10", "within 10 points", 2)):
        cells = [_interval(test[s], key, digits) if f"{key}_ci" in test[s] else fmt(test[s][key], digits) for s in ("post", "pre")]
        agreement.append([name, *cells])
    if "prop_bias_slope" in test["post"]:
        agreement.append(["proportional bias: slope of the difference on the mean [95% CI]",
                          *(_interval(test[s], "prop_bias_slope", 3) for s in ("post", "pre"))])
    agreement.append(["patients measured / failed", f"{test['post']['n']} / {test['n_failed']}", ""])
    if test.get("interval", {}).get("half_width") is not None:
        interval = test["interval"]
        agreement.append([f"{100 * interval['level']:.0f}% prediction interval (split-conformal, validation)",
                          f"± {fmt(interval['half_width'])}; test coverage {fmt(interval['coverage'])}", ""])
    quality = [["image quality", "n", "MAE after", "MAE before", "bias after", "r after"]]
    for name, stats in test.get("by_quality", {}).items():
        quality.append([name, str(stats["post"]["n"]), fmt(stats["post"]["mae"]), fmt(stats["pre"]["mae"]),
                        fmt(stats["post"]["bias"]), fmt(stats["post"]["r"], 3)])
    names = EF_CLASS_NAMES
    classes = [["reference \\ predicted", *names]]
    for name, row in zip(names, test["post"]["confusion"]):
        classes.append([name, *map(str, row)])
    classes.append(["sensitivity / specificity for EF < 40", fmt(test["post"]["sensitivity_ef_lt_40"]),
                    fmt(test["post"]["specificity_ef_lt_40"]), ""])
    by_class = test.get("by_reference_class", {})
    volumes = "esv_error_rho" in by_class
    reference = [["reference EF", "n", "bias after", "bias before", *(["EDV error", "ESV error"] if volumes else [])]]
    for name, row in by_class.get("classes", {}).items():
        reference.append([name, str(row["n"]), fmt(row["bias_post"], sign="+"), fmt(row["bias_pre"], sign="+"),
                          *([_percent(row["edv_relative_error"]), _percent(row["esv_relative_error"])] if volumes else [])])
    if volumes:
        reference.append(["Spearman rho with the reference EF", "", "", "", fmt(by_class["edv_error_rho"], sign="+"),
                          fmt(by_class["esv_error_rho"], sign="+")])
    return {"Agreement with the reference EF (test list)": agreement, "By image quality (2CH)": quality,
            "EF classes after calibration (test list)": classes,
            "By reference EF class (test list; volume errors against the expert masks' volumes)": reference}


def _percent(value) -> str:
    """A relative error for a table: '+8.8%', '-' when missing."""
    return "-" if value is None or value != value else f"{100 * value:+.1f}%"


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


FIGURES = {"ef_scatter.png": "Predicted against reference EF", "bland_altman.png": "Bland-Altman, before and after calibration",
           "calibration.png": "The calibrator", "overlays.png": "The worst test patients: expert (green) and predicted (red) LV"}


def render(test: dict, worst: list[dict], about: dict, plots: Path, markdown_plots: str) -> tuple[str, str]:
    """(HTML with every figure inside, Markdown linking the figures under ``markdown_plots``) of one
    evaluation. ``worst`` rows: patient, quality, ef, ef_calibrated, ef_ref; ``about``: profile,
    commit, params (YAML text)."""
    title = f"EchoEF evaluation: profile {about['profile']}, commit {about['commit']}"
    worst_rows = [["patient", "image quality", "EF", "calibrated EF", "reference EF"]] + [
        [w["patient"], str(w["quality"]), fmt(w["ef"], 0), fmt(w["ef_calibrated"], 1), fmt(w["ef_ref"], 0)] for w in worst]
    sections = {**tables(test), f"The {len(worst)} worst test patients (by calibrated error)": worst_rows}
    figures = [(name, caption, base64.b64encode((plots / name).read_bytes()).decode()) for name, caption in FIGURES.items()
               if (plots / name).is_file()]
    page = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
            "img{max-width:100%}pre{background:#f5f5f5;padding:8px}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            "<p>Development figures: the test list has been looked at across many variants. Failed patients are "
            "counted and excluded from the agreement statistics. Intervals are 95% patient-level bootstrap intervals.</p>"]
    for heading, rows in sections.items():
        page += [f"<h2>{html.escape(heading)}</h2>", _html_table(rows)]
    for _, caption, data in figures:
        page += [f"<h2>{html.escape(caption)}</h2>", f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"]
    page += ["<h2>Parameters</h2>", f"<pre>{html.escape(about['params'])}</pre>", "</body></html>"]
    markdown = [f"# {title}", "", "Development figures: the test list has been looked at across many variants. Failed "
                "patients are counted and excluded from the agreement statistics. Intervals are 95% patient-level "
                "bootstrap intervals.", ""]
    for heading, rows in sections.items():
        markdown += [f"## {heading}", "", _markdown_table(rows), ""]
    for name, caption, _ in figures:
        markdown += [f"## {caption}", "", f"![{caption}]({markdown_plots}/{name})", ""]
    markdown += ["## Parameters", "", "```yaml", about["params"].rstrip(), "```", ""]
    return "\n".join(page), "\n".join(markdown)


def study_title(row: dict) -> str:
    """One line of a predicted study: EDV, ESV, EF (calibrated, with its interval) or its status."""
    if not str(row["status"]).startswith("ok"):
        return f"{row['patient']}: {row['status']}"
    text = f"{row['patient']}: EDV {row['edv_ml']:.0f} mL, ESV {row['esv_ml']:.0f} mL, EF {row['ef']:.0f}%"
    if not math.isnan(row.get("ef_calibrated", math.nan)):
        text += f", calibrated {row['ef_calibrated']:.0f}% [{row['ef_low']:.0f}, {row['ef_high']:.0f}]"
    return text + ("" if row["status"] == "ok" else f" ({row['status']})")


STUDY_FIGURES = {"overlay.png": "The masks measured and Simpson's construction: LV contour (red), mitral plane (yellow), "
                                "long axis and apex (white), the 20 discs (cyan)",
                 "lv_area.png": "LV area over each loop, with the ED and ES frames chosen"}


def write_study_page(row: dict, folder: Path) -> None:
    """``<patient>_report.html`` in the study's folder: its EF with the interval, the flags for
    review, the figures inside the page (one file to open or send)."""
    patient = row["patient"]
    cells = [["status", str(row["status"])], ["review", str(row.get("review") or "none")],
             ["method", str(row["method"])], ["frames", str(row["frames"])], ["loops", str(row.get("cine") or "-")],
             ["detail", str(row.get("detail") or "-")]]
    page = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(patient) + "</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td{padding:2px 8px;vertical-align:top}"
            "img{max-width:100%}.review{color:#a00}</style></head><body>",
            f"<h1>{html.escape(study_title(row))}</h1>",
            f"<p class='review'>{'Check before use: ' + html.escape(row['review']) if row.get('review') else ''}</p>",
            "<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in cells) + "</table>"]
    for name, caption in STUDY_FIGURES.items():
        figure = folder / f"{patient}_{name}"
        if figure.is_file():
            data = base64.b64encode(figure.read_bytes()).decode()
            page += [f"<h2>{html.escape(caption)}</h2>", f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"]
    page.append("<p>Research use only; not a medical device.</p></body></html>")
    write_text(folder / f"{patient}_report.html", "\n".join(page))
