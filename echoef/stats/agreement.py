"""Agreement between predicted and reference EF: error, Bland-Altman, correlation, classes."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.model_selection import KFold

from ..io.atomic import text_column
from ..measure.ef import EF_CLASS_NAMES, ef_class, is_measured
from . import calibration


def summary(pred: np.ndarray, ref: np.ndarray) -> dict:
    """n, MAE, RMSE, bias (pred - ref), SD, 95% limits of agreement, Pearson r, R2, within 5/10."""
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    diff = pred - ref
    n = len(diff)
    bias = float(diff.mean()) if n else float("nan")
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    r = float(stats.pearsonr(pred, ref)[0]) if n > 2 and pred.std() > 0 and ref.std() > 0 else float("nan")
    ss_res = float(((ref - pred) ** 2).sum())
    ss_tot = float(((ref - ref.mean()) ** 2).sum()) if n else float("nan")
    return {
        "n": int(n),
        "mae": float(np.abs(diff).mean()) if n else float("nan"),
        "rmse": float(np.sqrt((diff ** 2).mean())) if n else float("nan"),
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "r": r,
        "r2": 1 - ss_res / ss_tot if n and ss_tot > 0 else float("nan"),
        "within_5": float((np.abs(diff) <= 5).mean()) if n else float("nan"),
        "within_10": float((np.abs(diff) <= 10).mean()) if n else float("nan"),
    }


CI_KEYS = ("mae", "bias", "r", "loa_low", "loa_high")


def _patient_resamples(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Indices (n_resamples, n) of patient-level resamples with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _interval(values: np.ndarray) -> list[float]:
    """The 95% percentile interval of resampled values (NaN resamples ignored)."""
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def bootstrap_ci(pred: np.ndarray, ref: np.ndarray, n_resamples: int, seed: int) -> dict:
    """95% percentile intervals over patient-level resamples for MAE, bias, r and the LoA."""
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    if n_resamples == 0 or len(pred) < 3:
        return {f"{k}_ci": [float("nan"), float("nan")] for k in CI_KEYS}  # same keys, no interval
    idx = _patient_resamples(len(pred), n_resamples, seed)
    diff = pred[idx] - ref[idx]
    bias = diff.mean(1)
    sd = diff.std(1, ddof=1)
    pc, rc = pred[idx] - pred[idx].mean(1, keepdims=True), ref[idx] - ref[idx].mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * rc).sum(1) / np.sqrt((pc ** 2).sum(1) * (rc ** 2).sum(1))
    values = {"mae": np.abs(diff).mean(1), "bias": bias, "r": r, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}
    return {f"{k}_ci": _interval(v) for k, v in values.items()}


def paired_difference(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> dict:
    """Mean of ``b - a`` over paired patients with a 95% percentile interval from patient-level
    resamples: two runs' per-patient errors (or Dice) compared on the same patients."""
    diff = np.asarray(b, float) - np.asarray(a, float)
    out = {"n": int(len(diff)), "mean": float(diff.mean()) if len(diff) else float("nan")}
    if n_resamples == 0 or len(diff) < 2:
        return {**out, "ci": [float("nan"), float("nan")]}  # same keys, no interval
    return {**out, "ci": _interval(diff[_patient_resamples(len(diff), n_resamples, seed)].mean(1))}


def wholly_below_zero(difference: dict) -> bool:
    """The project's adoption rule for a paired comparison (``paired_difference`` of a candidate's
    per-patient error minus the current one's): the candidate wins only if the 95% interval lies wholly
    below zero. No interval (None, or NaN, which JSON stores as null) adopts nothing."""
    high = (difference.get("ci") or [None, None])[1]
    return high is not None and bool(np.isfinite(high)) and high < 0


def all_wholly_below_zero(differences) -> bool:
    """The rule applied to a candidate judged by several paired differences (before and after
    calibration, on every set): adopted only if every one lies wholly below zero, and at least one exists."""
    differences = list(differences)
    return bool(differences) and all(wholly_below_zero(difference) for difference in differences)


def rule_choice(current: str, candidates: dict) -> str:
    """Among ``candidates`` (name -> {"mae": ..., "minus_current": a paired difference against the
    current choice}), the lowest-MAE one whose difference lies wholly below zero; else ``current``."""
    adopted = [name for name, row in candidates.items() if name != current and wholly_below_zero(row["minus_current"])]
    return min(adopted, key=lambda name: candidates[name]["mae"]) if adopted else current


def proportional_bias(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Slope of the difference on the mean (Bland-Altman) with its 95% CI."""
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    if len(pred) < 3:
        return {}
    fit = stats.linregress((pred + ref) / 2, pred - ref)
    half = stats.t.ppf(0.975, len(pred) - 2) * fit.stderr
    return {"prop_bias_slope": float(fit.slope), "prop_bias_slope_ci": [float(fit.slope - half), float(fit.slope + half)]}


def classification(pred: np.ndarray, ref: np.ndarray) -> dict:
    """EF classes (reduced <40, mildly reduced 40-49, preserved >=50): confusion counts
    (rows reference, columns predicted) and sensitivity/specificity for EF < 40%."""
    cp, cr = ef_class(np.asarray(pred, float)), ef_class(np.asarray(ref, float))
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (cr, cp), 1)
    reduced_p, reduced_r = cp == 0, cr == 0
    sens = float((reduced_p & reduced_r).sum() / reduced_r.sum()) if reduced_r.any() else float("nan")
    spec = float((~reduced_p & ~reduced_r).sum() / (~reduced_r).sum()) if (~reduced_r).any() else float("nan")
    return {"confusion": confusion.tolist(), "sensitivity_ef_lt_40": sens, "specificity_ef_lt_40": spec}


def full_report(pred, ref, n_resamples: int, seed: int) -> dict:
    """summary + bootstrap CIs + proportional bias + the EF-class view."""
    return {**summary(pred, ref), **bootstrap_ci(pred, ref, n_resamples, seed),
            **proportional_bias(pred, ref), **classification(pred, ref)}


SEED_CV_FOLDS = 5


def notebook_area_length_report(rows: pd.DataFrame, seed: int) -> dict:
    """The reference notebook's scoring of the same masks, a comparison only: its EF (``ef_seed_scoring``)
    before, and after a linear calibration cross-validated inside this very set (5-fold, seeded)."""
    measured = rows[rows["ef_seed_scoring"].notna()]
    out = {"n_failed": int(len(rows) - len(measured)), "pre": summary(measured["ef_seed_scoring"], measured["ef_ref"])}
    if len(measured) >= 2:
        splits = KFold(min(SEED_CV_FOLDS, len(measured)), shuffle=True, random_state=seed).split(measured)
        folds = np.zeros(len(measured), dtype=int)
        for fold, (_, held_out) in enumerate(splits):
            folds[held_out] = fold
        calibrated, _ = calibration.cross_fit(measured["ef_seed_scoring"], measured["ef_ref"], folds, "linear", (0, 100))
        out["post"] = summary(calibrated, measured["ef_ref"])
    return out


def by_reference_class(rows: pd.DataFrame, calibrated: np.ndarray) -> dict:
    """The measured rows (``ef``, ``ef_ref``, ``status``) by their reference EF's class: n, the EF's
    bias before and after calibration (``calibrated``, one per row), and where the rows carry the expert
    masks' volumes (``edv_expert_ml``, ``esv_expert_ml``, measured: ``status_expert``), the predicted
    volumes' mean relative error against them, with Spearman's rho of each volume's error with the
    reference EF over all those rows. A network that reads every cavity towards a typical one errs
    one way in dilated hearts and the other in small ones: EF too high where it is low, too low where
    it is high, while the overall bias stays near 0."""
    ok = rows["status"].map(is_measured).to_numpy() & np.isfinite(rows["ef_ref"].to_numpy(float))
    table = rows.assign(ef_calibrated=np.asarray(calibrated, float))[ok]
    table = table.assign(error_pre=table["ef"] - table["ef_ref"], error_post=table["ef_calibrated"] - table["ef_ref"],
                         ef_class=ef_class(table["ef_ref"].to_numpy(float)))
    volumes = {"edv_expert_ml", "esv_expert_ml", "status_expert"} <= set(table)
    if volumes:
        expert = table["status_expert"].map(is_measured)
        for name in ("edv", "esv"):
            table[f"{name}_error"] = (table[f"{name}_ml"] / table[f"{name}_expert_ml"] - 1).where(expert)
    out = {"classes": {}}
    for index, name in enumerate(EF_CLASS_NAMES):
        group = table[table["ef_class"] == index]
        row = {"n": int(len(group)), "bias_pre": float(group["error_pre"].mean()) if len(group) else float("nan"),
               "bias_post": float(group["error_post"].mean()) if len(group) else float("nan")}
        if volumes:
            row |= {f"{v}_relative_error": float(group[f"{v}_error"].mean()) if group[f"{v}_error"].notna().any()
                    else float("nan") for v in ("edv", "esv")}
        out["classes"][name] = row
    if volumes:
        for name in ("edv", "esv"):
            pairs = table[[f"{name}_error", "ef_ref"]].dropna()
            out[f"{name}_error_rho"] = (float(stats.spearmanr(pairs[f"{name}_error"], pairs["ef_ref"])[0])
                                        if len(pairs) >= 3 and pairs[f"{name}_error"].nunique() > 1 else float("nan"))
    return out


def set_report(rows: pd.DataFrame, calibrated: np.ndarray, n_resamples: int, seed: int) -> dict:
    """Pre/post calibration statistics of one set of EF rows (``ef``, ``ef_ref``, ``status``,
    optionally ``ef_expert``/``status_expert``, ``ef_seed_scoring`` and ``quality``), failures
    counted, never dropped."""
    ok = rows["status"].map(is_measured).to_numpy()
    pre, post, ref = rows["ef"].to_numpy()[ok], np.asarray(calibrated, float)[ok], rows["ef_ref"].to_numpy()[ok]
    out = {"n_patients": len(rows), "n_failed": int((~ok).sum()),
           "pre": full_report(pre, ref, n_resamples, seed), "post": full_report(post, ref, n_resamples, seed)}
    if "status_expert" in rows:
        expert = rows[rows["status_expert"].map(is_measured)]
        out["expert_masks"] = summary(expert["ef_expert"], expert["ef_ref"])
    if "ef_seed_scoring" in rows:
        out["seed_scoring"] = notebook_area_length_report(rows, seed)
    out["by_reference_class"] = by_reference_class(rows, calibrated)
    if "quality" in rows:
        quality = rows["quality"].to_numpy()[ok]
        out["by_quality"] = {str(q): {"pre": summary(pre[quality == q], ref[quality == q]),
                                      "post": summary(post[quality == q], ref[quality == q])}
                             for q in pd.unique(quality)}
    return out


def cross_validation_report(oof: pd.DataFrame, ensemble: pd.DataFrame, calibrator: dict, n_resamples: int, seed: int) -> dict:
    """Out-of-fold statistics with cross-fitted calibration (each fold calibrated by the other
    folds, with the pipeline calibrator's method), the fold spread, and the fold-model ensemble on
    the test list calibrated on all out-of-fold predictions; {"folds": 0} without cross-validation."""
    if oof.empty:
        return {"folds": 0}
    calibrated, _ = calibration.cross_fit(oof["ef"], oof["ef_ref"], oof["fold"], calibrator["method"], calibrator["ef_range"], oof)
    measured = oof.assign(ef_calibrated=calibrated)[oof["status"].map(is_measured)]
    per_fold = [{"fold": int(f), "n": int(len(g)), "mae_pre": float((g["ef"] - g["ef_ref"]).abs().mean()),
                 "mae_post": float((g["ef_calibrated"] - g["ef_ref"]).abs().mean())} for f, g in measured.groupby("fold")]
    spread = {f"{key}_{stat}": float(getattr(np, stat)([row[key] for row in per_fold]))
              for key in ("mae_pre", "mae_post") for stat in ("mean", "std")}
    # The fold models' ensemble is calibrated on all their out-of-fold predictions, not on another model's.
    pooled = calibration.fit(measured["ef"], measured["ef_ref"], calibrator["method"], calibrator["ef_range"], "out-of-fold, all folds",
                             measured)
    return {"folds": int(oof["fold"].nunique()),
            "oof": set_report(oof, calibrated, n_resamples, seed),
            "calibrators": calibrator_comparison(measured, calibrator["ef_range"], n_resamples, seed),
            "fold_spread": {**spread, "per_fold": per_fold},
            "test_ensemble": set_report(ensemble, calibration.apply(pooled, ensemble["ef"], ensemble), n_resamples, seed),
            "test_ensemble_calibrator": pooled}


def calibrator_comparison(measured: pd.DataFrame, ef_range, n_resamples: int, seed: int) -> dict:
    """Each calibration method cross-fitted on the same folds of the measured out-of-fold rows: its
    EF MAE, and ridge minus linear absolute error per patient with a paired bootstrap interval (the
    evidence the adoption rule of docs/experiment-log.md reads). Ridge is left out where a row lacks
    one of its measures (older tables, a single-plane EF method); ``ridge_folds`` counts the folds
    where it was fitted, not fallen back to linear."""
    ref = measured["ef_ref"].to_numpy()
    names = list(calibration.RIDGE_FEATURES)
    has_measures = set(names) <= set(measured) and np.isfinite(measured[names].to_numpy(float)).all()
    methods = [m for m in calibration.METHODS if m != "ridge" or has_measures]
    errors, out = {}, {"n": len(measured)}
    for method in methods:
        calibrated, fitted = calibration.cross_fit(measured["ef"], ref, measured["fold"], method, ef_range, measured)
        errors[method] = np.abs(calibrated - ref)
        if method == "ridge":
            out["ridge_folds"] = sum(c["method"] == "ridge" for c in fitted)
    out["mae"] = {method: float(e.mean()) for method, e in errors.items()}
    if "ridge" in errors:
        out["ridge_minus_linear"] = paired_difference(errors["linear"], errors["ridge"], n_resamples, seed)
    return out


def pipeline_calibrator(table: pd.DataFrame, oof_path, config, interval_level: float) -> tuple[dict, int]:
    """The pipeline's calibrator from its EF table (val and test rows): fitted on the measured
    validation patients or, with ``config.fit_set`` 'oof' (a ``params.Calibration``), on every
    train+val patient's out-of-fold EF; never on a test patient. It records its EF method, the
    validation MAE before and after, and the split-conformal interval at ``interval_level`` on the
    validation residuals. Returns (calibrator, number of patients fitted on)."""
    val = table[(table["set"] == "val") & table["status"].map(is_measured)]
    fit_rows = val if config.fit_set == "val" else pd.read_csv(oof_path).pipe(lambda t: t[t["status"].map(is_measured)])
    calibrator = calibration.fit(fit_rows["ef"], fit_rows["ef_ref"], config.method, tuple(config.ef_range), config.fit_set,
                                 features=fit_rows)
    val_calibrated = calibration.apply(calibrator, val["ef"], val)
    before, after = summary(val["ef"], val["ef_ref"])["mae"], summary(val_calibrated, val["ef_ref"])["mae"]
    calibrator.update(ef_method=str(table["method"].iloc[0]), val_mae_before=before, val_mae_after=after, worsens_val=bool(after > before),
                      interval=calibration.conformal_half_width(val_calibrated, val["ef_ref"], interval_level))
    return calibrator, len(fit_rows)


MIN_SITE_STUDIES = 20  # fewer: the cross-fitted effect and the interval mean little
SITE_FOLDS = 5


def site_calibrator(table: pd.DataFrame, method: str, level: float, n_resamples: int = 2000, seed: int = 0) -> tuple[dict, dict]:
    """A calibrator for one site from its studies' predicted (``ef``) and reference (``ef_ref``) EF,
    all by one EF method (``method`` column, if there is one): fitted on all of them, its effect
    judged cross-fitted (each study calibrated by a calibrator fitted on the other folds' studies, 5
    folds seeded by ``seed``), and its prediction interval split-conformal at ``level`` on the
    site's own cross-fitted residuals. Returns (calibrator, report: n, MAE before and after, after
    minus before per study with a paired bootstrap 95% interval). ValueError when too few studies."""
    ef, ref = table["ef"].to_numpy(float), table["ef_ref"].to_numpy(float)
    if len(table) < MIN_SITE_STUDIES:
        raise ValueError(f"{len(table)} measured studies with a reference EF; a site calibrator needs {MIN_SITE_STUDIES} or more")
    folds = np.random.default_rng(seed).permutation(len(table)) % SITE_FOLDS
    crossed, _ = calibration.cross_fit(ef, ref, folds, method, (0, 100), table)
    calibrator = calibration.fit(ef, ref, method, (0, 100), "site", features=table)
    before, after = np.abs(ef - ref), np.abs(crossed - ref)
    report = {"n": len(table), "folds": SITE_FOLDS, "mae_before": float(before.mean()), "mae_after": float(after.mean()),
              "after_minus_before": paired_difference(before, after, n_resamples, seed)}
    methods = set(table["method"]) if "method" in table else {"simpson_biplane"}
    calibrator.update(ef_method=methods.pop(), site=report, interval=calibration.conformal_half_width(crossed, ref, level))
    return calibrator, report



FRAME_TOLERANCES = (1, 3)  # frames: within one is a match, within three the issue's own yardstick


def frame_agreement(errors) -> dict:
    """How far picked frames are from traced ones (``errors`` picked minus traced, NaN where none):
    n, median and mean absolute error, the share within each of FRAME_TOLERANCES."""
    errors = np.asarray(pd.to_numeric(pd.Series(errors), errors="coerce"), float)
    errors = np.abs(errors[np.isfinite(errors)])
    if not len(errors):
        return {"n": 0}
    return {"n": int(len(errors)), "median_abs": float(np.median(errors)), "mean_abs": float(errors.mean()),
            **{f"within_{t}": float((errors <= t).mean()) for t in FRAME_TOLERANCES}}


def reference_pairs(table: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series]:
    """(predicted, reference) of the measured studies of predict's summary ``table`` that have both
    ``column`` and ``ef_ref`` within 0-100."""
    ref = pd.to_numeric(table["ef_ref"], errors="coerce")
    values = pd.to_numeric(table[column], errors="coerce")
    keep = table["status"].astype(str).map(is_measured) & values.between(0, 100) & ref.between(0, 100)
    return values[keep], ref[keep]


def cohort_agreement(table: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> dict:
    """A predicted cohort against the references it came with (predict's summary with ``ef_ref``):
    agreement of the raw EF, of the calibrated EF and of the beat-averaged EF where each exists (n,
    MAE, bias, limits of agreement, r, each with a patient-level 95% interval), the ED and ES frame
    errors against the traced frames and of the ED-to-ES interval, and how often studies are flagged
    for review and as unlike the training data."""
    ref = pd.to_numeric(table.get("ef_ref"), errors="coerce") if "ef_ref" in table else pd.Series(np.nan, index=table.index)
    measured = table["status"].astype(str).map(is_measured) & ref.between(0, 100)
    report = {"n_studies": int(len(table)), "n_with_reference": int(ref.between(0, 100).sum()), "n_measured": int(measured.sum())}
    for column in ("ef", "ef_calibrated", "ef_beat_mean"):
        if column not in table:
            continue
        pred, truth = (series.to_numpy(float) for series in reference_pairs(table, column))
        if len(pred):
            report[column] = {**summary(pred, truth), **bootstrap_ci(pred, truth, n_resamples, seed)}
    frames = {}
    for column in ("ed_error_frames", "es_error_frames", "beat_error_frames"):
        if column in table:
            frames[column.removesuffix("_frames")] = frame_agreement(table[column])
    if {"ed_error_frames", "es_error_frames"} <= set(table):
        interval = pd.to_numeric(table["es_error_frames"], errors="coerce") - pd.to_numeric(table["ed_error_frames"], errors="coerce")
        frames["ed_to_es_interval_error"] = frame_agreement(interval)
    report["frames"] = frames
    reviews = text_column(table, "review")
    rated = table["status"].astype(str).map(is_measured)
    report["flagged_for_review"] = float((reviews[rated] != "").mean()) if rated.any() else float("nan")
    report["unlike_training"] = float(reviews[rated].str.contains("unlike_training").mean()) if rated.any() else float("nan")
    report["review_flags"] = review_agreement(table, n_resamples, seed)
    return report


REASON_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
LARGE_ERROR_POINTS = 10.0  # an EF this far from the reference can move a patient across a treatment threshold


def flag_kinds(review: str) -> list[str]:
    """The kinds of a study's review reasons: ``"touches_border; lv_holes:2CH_ES"`` gives
    ``["touches_border", "lv_holes"]`` (each reason's name before its details). A row file is text
    anyone may have edited: a name that is not a reason's (lower-case words joined by ``_``) counts
    as ``unrecognised`` (as does ``any``, the report's row of every reason), so it cannot bend a report's table."""
    names = (reason.split(":")[0].strip() for reason in review.split(";") if reason.strip())
    return list(dict.fromkeys(name if REASON_NAME.fullmatch(name) and name != "any" else "unrecognised" for name in names))


def reported_ef(table: pd.DataFrame) -> pd.Series:
    """Each study's EF as it reports it: calibrated where it was calibrated, else raw (single-plane)."""
    calibrated = pd.to_numeric(table["ef_calibrated"], errors="coerce") if "ef_calibrated" in table else None
    raw = pd.to_numeric(table["ef"], errors="coerce")
    return raw if calibrated is None else calibrated.where(calibrated.notna(), raw)


def review_agreement(table: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Whether review picks out the studies whose EF is far from the reference: over the measured
    studies with a reference (their ``reported_ef``), for any reason and for each kind of reason, how
    many studies it flags, their MAE and the others' with the difference's 95% interval (studies
    resampled within each group), the share of flagged studies off by more than LARGE_ERROR_POINTS
    (precision) and the share of such studies flagged (recall). A kind raised on every study, or on
    none, tells the reviewer nothing about which to look at."""
    if "ef_ref" not in table:
        table = table.assign(ef_ref=np.nan)
    ef, ref = reference_pairs(table.assign(reported_ef=reported_ef(table)), "reported_ef")
    errors = (ef - ref).abs().to_numpy(float)
    kinds = [flag_kinds(review) for review in text_column(table, "review")[ef.index]]
    large = errors > LARGE_ERROR_POINTS
    out = {"n": int(len(errors)), "n_large_errors": int(large.sum()), "large_error_points": LARGE_ERROR_POINTS, "kinds": {}}
    names = ["any"] + sorted({kind for found in kinds for kind in found})
    for name in names:
        flagged = np.array([bool(found) if name == "any" else name in found for found in kinds], dtype=bool)
        out["kinds"][name] = _flag_split(errors, flagged, large, n_resamples, seed)
    return out


def _flag_split(errors: np.ndarray, flagged: np.ndarray, large: np.ndarray, n_resamples: int, seed: int) -> dict:
    """One kind of review reason against the EF errors: counts, MAE of the flagged and of the others,
    flagged minus others with a 95% interval, precision and recall for errors beyond the large limit."""
    nan = float("nan")
    hit, miss = errors[flagged], errors[~flagged]
    row = {"n_flagged": int(flagged.sum()), "share_flagged": float(flagged.mean()) if len(errors) else nan,
           "mae_flagged": float(hit.mean()) if len(hit) else nan, "mae_others": float(miss.mean()) if len(miss) else nan,
           "precision": float(large[flagged].mean()) if len(hit) else nan,
           "recall": float(flagged[large].mean()) if large.any() else nan}
    row["difference"] = row["mae_flagged"] - row["mae_others"]
    row["difference_ci"] = [nan, nan]
    if n_resamples and len(hit) >= 2 and len(miss) >= 2:
        rng = np.random.default_rng(seed)
        resampled = (hit[rng.integers(0, len(hit), (n_resamples, len(hit)))].mean(1)
                     - miss[rng.integers(0, len(miss), (n_resamples, len(miss)))].mean(1))
        row["difference_ci"] = _interval(resampled)
    return row
