"""Calibrators of predicted EF against the reference: fit, apply, save, load."""

from __future__ import annotations

import numpy as np

METHODS = ("none", "linear", "isotonic")
MIN_FIT_PATIENTS = 3


def fit(ef_pred: np.ndarray, ef_ref: np.ndarray, method: str, ef_range: tuple[float, float], fit_set: str) -> dict:
    """Fit a calibrator of reference EF on predicted EF; returned as a JSON-ready dict."""
    ef_pred, ef_ref = np.asarray(ef_pred, float), np.asarray(ef_ref, float)
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; allowed: {', '.join(METHODS)}")
    calibrator = {"method": method, "fit_set": fit_set, "n": int(len(ef_pred)), "ef_range": list(ef_range)}
    if method != "none" and len(ef_pred) < MIN_FIT_PATIENTS:
        # Nothing to learn from: say so, and leave EF as it is (clipped) rather than fail the run.
        return {**calibrator, "method": "none", "requested_method": method,
                "note": f"only {len(ef_pred)} measured patients in the fit set; not calibrated"}
    # scikit-learn is imported here, where it is used: commands that only apply a calibrator stay light.
    if method == "linear":
        from sklearn.linear_model import LinearRegression

        model = LinearRegression().fit(ef_pred[:, None], ef_ref)
        calibrator.update(slope=float(model.coef_[0]), intercept=float(model.intercept_))
    elif method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(out_of_bounds="clip").fit(ef_pred, ef_ref)
        calibrator.update(x=model.X_thresholds_.tolist(), y=model.y_thresholds_.tolist())
    return calibrator


def apply(calibrator: dict, ef_pred: np.ndarray) -> np.ndarray:
    """Calibrated EF, clipped to the calibrator's physiological range (NaN stays NaN)."""
    ef_pred = np.asarray(ef_pred, float)
    method = calibrator["method"]
    if method == "linear":
        out = calibrator["intercept"] + calibrator["slope"] * ef_pred
    elif method == "isotonic":
        out = np.where(np.isnan(ef_pred), np.nan, np.interp(ef_pred, calibrator["x"], calibrator["y"]))
    elif method == "none":
        out = ef_pred.copy()
    else:
        raise ValueError(f"unknown calibration method {method!r}; allowed: {', '.join(METHODS)}")
    low, high = calibrator["ef_range"]
    return np.clip(out, low, high)


def cross_fit(ef_pred: np.ndarray, ef_ref: np.ndarray, folds: np.ndarray, method: str,
              ef_range: tuple[float, float]) -> tuple[np.ndarray, list[dict]]:
    """Calibrate each fold's predictions with a calibrator fitted on the other folds only.

    NaN predictions stay NaN and are left out of the fits. Returns (calibrated EF, one calibrator per fold).
    """
    ef_pred, ef_ref, folds = np.asarray(ef_pred, float), np.asarray(ef_ref, float), np.asarray(folds)
    calibrated = np.full(len(ef_pred), np.nan)
    calibrators = []
    for fold in np.unique(folds):
        train = (folds != fold) & ~np.isnan(ef_pred)
        calibrator = fit(ef_pred[train], ef_ref[train], method, ef_range, f"out-of-fold, folds other than {fold}")
        calibrated[folds == fold] = apply(calibrator, ef_pred[folds == fold])
        calibrators.append(calibrator)
    return calibrated, calibrators


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
