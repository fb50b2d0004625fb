"""Calibrators of predicted EF against the reference: fit, apply, save, load."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

import numpy as np

from ..domain import CALIBRATION_METHODS, EF_METHODS, VIEW_COLUMNS
from ..io.atomic import as_json

METHODS = CALIBRATION_METHODS
MIN_FIT_PATIENTS = 3
# What the ridge calibrator reads beside the biplane EF: each view's single-plane EF (their
# disagreement), the volumes and the four long axes, all measured on the predicted masks. CAMUS's
# image quality is left out: a user's own study has none.
RIDGE_FEATURES = ("edv_ml", "esv_ml", *VIEW_COLUMNS)
RIDGE_ALPHAS = np.logspace(-2, 4, 25)  # penalties on the standardised features, chosen by leave-one-out
MIN_RIDGE_PATIENTS = 20  # fewer: the linear calibrator, said so in the file


def fit(ef_pred: np.ndarray, ef_ref: np.ndarray, method: str, ef_range: tuple[float, float], fit_set: str,
        features: Mapping | None = None) -> dict:
    """Fit a calibrator of reference EF on predicted EF (and, for 'ridge', the ``RIDGE_FEATURES``
    columns of ``features``, rows aligned with ``ef_pred``); returned as a JSON-ready dict."""
    ef_pred, ef_ref = np.asarray(ef_pred, float), np.asarray(ef_ref, float)
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; allowed: {', '.join(METHODS)}")
    calibrator = {"method": method, "fit_set": fit_set, "n": int(len(ef_pred)), "ef_range": list(ef_range)}
    if method != "none" and len(ef_pred) < MIN_FIT_PATIENTS:
        # Nothing to learn from: say so, and leave EF as it is (clipped) rather than fail the run.
        return {**calibrator, "method": "none", "requested_method": method,
                "note": f"only {len(ef_pred)} measured patients in the fit set; not calibrated"}
    if method == "ridge" and len(ef_pred) < MIN_RIDGE_PATIENTS:
        return {**fit(ef_pred, ef_ref, "linear", ef_range, fit_set), "requested_method": method,
                "note": f"only {len(ef_pred)} measured patients in the fit set, too few for ridge; linear"}
    # scikit-learn is imported here, where it is used: commands that only apply a calibrator stay light.
    if method == "linear":
        from sklearn.linear_model import LinearRegression

        model = LinearRegression().fit(ef_pred[:, None], ef_ref)
        calibrator.update(slope=float(model.coef_[0]), intercept=float(model.intercept_))
    elif method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(out_of_bounds="clip").fit(ef_pred, ef_ref)
        calibrator.update(x=model.X_thresholds_.tolist(), y=model.y_thresholds_.tolist())
    elif method == "ridge":
        x = _features(features, RIDGE_FEATURES, method)
        if not np.isfinite(x).all() or not np.isfinite(ef_pred).all():
            raise ValueError("calibration method 'ridge' needs every measure of each patient it is fitted on: "
                             "ef.method simpson_biplane and measured rows only")
        calibrator.update(_fit_ridge(ef_pred, ef_ref, x))
    return calibrator


def _features(features: Mapping | None, names, method: str) -> np.ndarray:
    """(rows, len(names)) float matrix of the named columns of ``features``."""
    missing = [name for name in names if features is None or name not in features]
    if missing:
        raise ValueError(f"calibration method {method!r} needs the EF table's columns {', '.join(missing)} "
                         "(the ef stage writes them; re-run it)")
    return np.column_stack([np.asarray(features[name], float) for name in names])


def _fit_ridge(ef_pred: np.ndarray, ef_ref: np.ndarray, x: np.ndarray) -> dict:
    """Reference EF on predicted EF and the features ``x``: the linear calibrator's intercept and slope
    unpenalised, the standardised features' weights shrunk by a ridge penalty chosen by leave-one-out
    (so the strongest penalty gives back the linear calibrator). Weights returned in the features' units."""
    from sklearn.linear_model import RidgeCV

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    base = np.column_stack([np.ones_like(ef_pred), ef_pred])

    def residual(values):  # what the unpenalised terms leave (Frisch-Waugh: the joint fit's features part)
        return values - base @ np.linalg.lstsq(base, values, rcond=None)[0]

    ridge = RidgeCV(alphas=RIDGE_ALPHAS, fit_intercept=False).fit(residual(z), residual(ef_ref))
    intercept, slope = np.linalg.lstsq(base, ef_ref - z @ ridge.coef_, rcond=None)[0]
    weights = ridge.coef_ / scale
    return {"alpha": float(ridge.alpha_), "intercept": float(intercept - weights @ mean), "slope": float(slope),
            "features": dict(zip(RIDGE_FEATURES, weights.tolist()))}


def apply(calibrator: dict, ef_pred: np.ndarray, features: Mapping | None = None) -> np.ndarray:
    """Calibrated EF, clipped to the calibrator's physiological range (NaN stays NaN, as does a row
    with a NaN feature). A 'ridge' calibrator reads its features' columns from ``features``."""
    ef_pred = np.asarray(ef_pred, float)
    method = calibrator["method"]
    if method == "linear":
        out = calibrator["intercept"] + calibrator["slope"] * ef_pred
    elif method == "ridge":
        weights = calibrator["features"]
        out = calibrator["intercept"] + calibrator["slope"] * ef_pred + _features(features, weights, method) @ np.array(
            list(weights.values()), float)
    elif method == "isotonic":
        out = np.where(np.isnan(ef_pred), np.nan, np.interp(ef_pred, calibrator["x"], calibrator["y"]))
    elif method == "none":
        out = ef_pred.copy()
    else:
        raise ValueError(f"unknown calibration method {method!r}; allowed: {', '.join(METHODS)}")
    low, high = calibrator["ef_range"]
    return np.clip(out, low, high)


def cross_fit(ef_pred: np.ndarray, ef_ref: np.ndarray, folds: np.ndarray, method: str,
              ef_range: tuple[float, float], features: Mapping | None = None) -> tuple[np.ndarray, list[dict]]:
    """Calibrate each fold's predictions with a calibrator fitted on the other folds only.

    NaN predictions stay NaN and are left out of the fits. Returns (calibrated EF, one calibrator per fold).
    """
    ef_pred, ef_ref, folds = np.asarray(ef_pred, float), np.asarray(ef_ref, float), np.asarray(folds)
    columns = None if features is None else {name: np.asarray(features[name], float) for name in RIDGE_FEATURES if name in features}
    calibrated = np.full(len(ef_pred), np.nan)
    calibrators = []
    for fold in np.unique(folds):
        train = (folds != fold) & ~np.isnan(ef_pred)
        held = folds == fold
        calibrator = fit(ef_pred[train], ef_ref[train], method, ef_range, f"out-of-fold, folds other than {fold}",
                         None if columns is None else {name: values[train] for name, values in columns.items()})
        calibrated[held] = apply(calibrator, ef_pred[held], None if columns is None else {n: v[held] for n, v in columns.items()})
        calibrators.append(calibrator)
    return calibrated, calibrators


def fingerprint(calibrator: dict) -> str:
    """A short digest of a calibrator's content (its own ``fingerprint`` key aside): what the evaluate
    stage depends on, as a parameter, so that `dvc exp show` shows 8 characters where a file
    dependency would show a 32-character hash."""
    # As the file stores it, so that a calibrator with NaN (a fit on no patient) matches once read back.
    content = json.dumps(as_json({key: value for key, value in calibrator.items() if key != "fingerprint"}), sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:8]


SLOPE_RANGE = (0.1, 10.0)  # linear: calibrated EF per predicted EF point; outside, the fit or the file is broken
RIDGE_SLOPE_RANGE = (-10.0, 10.0)
MAX_INTERCEPT = 100.0  # EF points
MAX_FEATURE_WEIGHT = 10.0  # EF points per ml or per mm of a ridge feature
MAX_POINTS = 10_000  # isotonic steps


def _number(calibrator: dict, key: str, low: float, high: float, where: str = "") -> float:
    value = calibrator.get(key) if isinstance(calibrator, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{where}{key} = {str(value)[:40]}: give a finite number from {low:g} to {high:g}")
    return float(value)


def _numbers(values, key: str, low: float, high: float) -> list[float]:
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_POINTS:
        raise ValueError(f"{key}: give a list of 1 to {MAX_POINTS} numbers")
    return [_number({key: v}, key, low, high) for v in values]


def validate(calibrator) -> dict:
    """``calibrator`` if it is a calibrator file's content with every value it is used by typed, finite
    and within sane bounds; ValueError naming the field otherwise (a list, a NaN or 1e308 coefficient,
    a reversed EF range, a negative interval: files that would give impossible EFs reported ok)."""
    if not isinstance(calibrator, dict):
        raise ValueError(f"holds a {type(calibrator).__name__}, not the fields of a calibrator")
    method = calibrator.get("method")
    if method not in METHODS:
        raise ValueError(f"method = {str(method)[:40]}: one of {', '.join(METHODS)}")
    ef_range = calibrator.get("ef_range")
    if not isinstance(ef_range, list) or len(ef_range) != 2:
        raise ValueError("ef_range: give [lowest, highest] calibrated EF")
    low, high = (_number({"ef_range": v}, "ef_range", 0, 100) for v in ef_range)
    if not low < high:
        raise ValueError(f"ef_range = {ef_range}: the lowest EF must be below the highest")
    if method == "linear":
        _number(calibrator, "slope", *SLOPE_RANGE)
        _number(calibrator, "intercept", -MAX_INTERCEPT, MAX_INTERCEPT)
    elif method == "ridge":
        _number(calibrator, "slope", *RIDGE_SLOPE_RANGE)
        _number(calibrator, "intercept", -10 * MAX_INTERCEPT, 10 * MAX_INTERCEPT)
        features = calibrator.get("features")
        if not isinstance(features, dict) or not features or not set(features) <= set(RIDGE_FEATURES):
            raise ValueError(f"features: give weights of some of {', '.join(RIDGE_FEATURES)}")
        for name in features:
            _number(features, name, -MAX_FEATURE_WEIGHT, MAX_FEATURE_WEIGHT, "features.")
    elif method == "isotonic":
        x, y = _numbers(calibrator.get("x"), "x", 0, 100), _numbers(calibrator.get("y"), "y", 0, 100)
        if len(x) != len(y) or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ValueError("x, y: two lists of equal length, each in increasing order")
    if "ef_method" in calibrator and calibrator["ef_method"] not in EF_METHODS:
        raise ValueError(f"ef_method = {str(calibrator['ef_method'])[:40]}: one of {', '.join(EF_METHODS)}")
    interval = calibrator.get("interval", {})
    if not isinstance(interval, dict):
        raise ValueError("interval: give {level, half_width, n}")
    if interval.get("half_width") is not None:
        _number(interval, "half_width", 0, 100, "interval.")
        _number(interval, "level", 0.5, 0.999, "interval.")
    return calibrator


def conformal_half_width(calibrated: np.ndarray, reference: np.ndarray, level: float) -> dict:
    """Split-conformal prediction interval for calibrated EF: the half-width q such that a new
    patient's reference EF lies within calibrated EF ± q with probability at least ``level`` (the
    ceil((n + 1) level)-th smallest absolute residual of n; None, with a note, when n is too small
    for that level)."""
    residuals = np.sort(np.abs(np.asarray(calibrated, float) - np.asarray(reference, float)))
    residuals = residuals[np.isfinite(residuals)]
    rank = int(np.ceil((len(residuals) + 1) * level))
    if not 1 <= rank <= len(residuals):
        return {"level": level, "half_width": None, "n": int(len(residuals)),
                "note": f"{len(residuals)} patients are too few for a {100 * level:.0f}% interval"}
    return {"level": level, "half_width": float(residuals[rank - 1]), "n": int(len(residuals))}


def interval(calibrator: dict, ef_calibrated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of each calibrated EF's prediction interval, within 0-100 (NaN without one)."""
    ef_calibrated = np.asarray(ef_calibrated, float)
    half = calibrator.get("interval", {}).get("half_width")
    half = np.nan if half is None else half
    return np.clip(ef_calibrated - half, 0, 100), np.clip(ef_calibrated + half, 0, 100)


def interval_report(calibrator: dict, ef_calibrated, ef_ref) -> dict:
    """How the prediction interval did on patients it was not made from: the share whose reference
    EF lies inside (``coverage``) and the mean width (``interval_width``); None for both without an
    interval or a patient; ``n_test`` patients)."""
    low, high = interval(calibrator, ef_calibrated)
    ef_ref = np.asarray(ef_ref, float)
    if calibrator.get("interval", {}).get("half_width") is None or not len(ef_ref):
        return {"coverage": None, "interval_width": None, "n_test": len(ef_ref)}
    return {"coverage": float(((ef_ref >= low) & (ef_ref <= high)).mean()), "interval_width": float((high - low).mean()),
            "n_test": len(ef_ref)}
