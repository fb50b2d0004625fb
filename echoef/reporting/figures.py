"""Matplotlib figures: EF scatter, Bland-Altman, calibration curve, confusion matrix, overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from ..io import camus, framefile  # noqa: E402
from ..io.atomic import atomic_path, write_csv  # noqa: E402
from ..io.camus import Label  # noqa: E402
from ..measure.ef import EF_CLASS_NAMES, ef_class  # noqa: E402
from ..stats import calibration


def _save(fig, path, tight: bool = True, compress_level: int | None = None) -> None:
    """``tight``: cropped to what is drawn, which costs a second layout of the whole figure;
    ``compress_level``: zlib's (Pillow's default where None)."""
    extra = {} if compress_level is None else {"pil_kwargs": {"compress_level": compress_level}}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight" if tight else None, **extra)
    plt.close(fig)


def scatter(ref, pre, post, path) -> None:
    """Predicted vs reference EF, before and after calibration, with the identity line."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 100], [0, 100], color="grey", lw=1, label="identity")
    ax.scatter(ref, pre, s=14, alpha=0.7, label="before calibration")
    ax.scatter(ref, post, s=14, alpha=0.7, label="after calibration")
    ax.set(xlabel="reference EF (%)", ylabel="predicted EF (%)", xlim=(0, 100), ylim=(0, 100))
    ax.legend(fontsize=8)
    _save(fig, path)


def bland_altman(panels: list[tuple[str, object, object, dict]], path) -> None:
    """Bland-Altman plots side by side, one per (title, reference, predicted, agreement summary),
    bias and 95% limits of agreement annotated."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), sharey=True, squeeze=False)
    for ax, (title, ref, pred, st) in zip(axes[0], panels):
        mean, diff = (np.asarray(pred) + np.asarray(ref)) / 2, np.asarray(pred) - np.asarray(ref)
        ax.scatter(mean, diff, s=14, alpha=0.7)
        for value, style, name in ((st["bias"], "-", "bias"), (st["loa_low"], "--", "-1.96 SD"), (st["loa_high"], "--", "+1.96 SD")):
            if np.isfinite(value):
                ax.axhline(value, color="C3", ls=style, lw=1)
                ax.annotate(f"{name} {value:+.1f}", (ax.get_xlim()[1], value), fontsize=8, ha="right", va="bottom")
        ax.set(title=title, xlabel="mean of predicted and reference EF (%)")
    axes[0][0].set_ylabel("predicted - reference EF (%)")
    _save(fig, path)


def calibration_curve(calibrator: dict, rows, path) -> None:
    """The fitted mapping from raw to calibrated EF: a curve where EF alone sets it, and the points
    (``ef``, ``ef_calibrated``) of ``rows`` (a ridge calibrator also reads each patient's other measures)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 100], [0, 100], color="grey", lw=1, label="identity")
    if calibrator["method"] != "ridge":
        x = np.linspace(0, 100, 201)
        ax.plot(x, calibration.apply(calibrator, x), color="C1", label="calibrator")
    ax.scatter(rows["ef"], rows["ef_calibrated"], s=10, color="C0", label="test patients")
    ax.set(xlabel="raw predicted EF (%)", ylabel="calibrated EF (%)", xlim=(0, 100), ylim=(0, 100))
    ax.legend(fontsize=8)
    _save(fig, path)


def confusion(matrix, path) -> None:
    """EF-class confusion matrix (rows reference, columns predicted)."""
    names = EF_CLASS_NAMES
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(np.asarray(matrix)):
        ax.text(j, i, str(value), ha="center", va="center")
    ax.set(xticks=range(3), yticks=range(3), xticklabels=names, yticklabels=names,
           xlabel="predicted EF class (%)", ylabel="reference EF class (%)")
    _save(fig, path)


def overlays(cases: list[dict], path) -> None:
    """Rows of patients (dict: title, frames {(view, phase): (image, expert, predicted, spacing)}):
    each frame with expert (green, if not None) and predicted (red) LV contours, at its true aspect
    ratio; a frame absent from a case stays blank."""
    if not cases:
        fig, ax = plt.subplots(figsize=(6, 1))
        ax.text(0.5, 0.5, "no patient to show: none has a measured EF", ha="center", va="center")
        ax.axis("off")
        _save(fig, path)
        return
    fig, axes = plt.subplots(len(cases), 4, figsize=(12, 3.2 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        for ax, key in zip(row, camus.FRAME_KEYS):
            ax.axis("off")
            if key not in case["frames"]:
                continue
            image, expert, predicted, spacing = case["frames"][key]
            extent = (0, image.shape[1] * spacing[1], image.shape[0] * spacing[0], 0)
            ax.imshow(image, cmap="gray", extent=extent)
            for mask, color in ((expert, "lime"), (predicted, "red")):
                if mask is None or not (mask == Label.LV).any():
                    continue
                ax.contour(mask == Label.LV, levels=[0.5], colors=color, linewidths=1, extent=extent,
                           origin="upper")
            ax.set_title(f"{case['title']} {key[0]} {key[1]}", fontsize=8)
    _save(fig, path)


def area_curves(curves: dict[str, dict], path) -> None:
    """LV area (cm²) over the frames of each view's loop, the chosen ED and ES frames marked."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for view, curve in curves.items():
        areas = np.asarray(curve["areas"]) / 100
        line, = ax.plot(areas, marker=".", label=view)
        for phase, marker in (("ed", "^"), ("es", "v")):
            ax.plot(curve[phase], areas[curve[phase]], marker, color=line.get_color(), markersize=10)
            ax.annotate(phase.upper(), (curve[phase], areas[curve[phase]]), textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="frame", ylabel="LV area (cm²)", title="LV area over the loop; ED largest, ES smallest in one cycle")
    ax.legend(fontsize=8)
    _save(fig, path)


def simpson_construction(frames: dict, title: str, path) -> None:
    """Each frame ({(view, phase): (image, spacing, geometry or None)}) with the construction Simpson's
    method measured: the LV contour (red), the mitral plane (yellow), apex and long axis (white), the
    20 discs (cyan) - the picture an echocardiographer checks a volume by.

    Written for every study ``predict`` measures, so laid out by hand (not cropped after a first
    layout), its discs one artist, and compressed fast: about 40% less time than otherwise."""
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.05)
    for ax, key in zip(axes[0], camus.FRAME_KEYS):
        ax.axis("off")
        if key not in frames:
            continue
        image, spacing, geometry = frames[key]
        ax.imshow(image, cmap="gray", extent=(0, image.shape[1] * spacing[1], image.shape[0] * spacing[0], 0))
        ax.set_title(f"{key[0]} {key[1]}", fontsize=9)
        if geometry is None:
            ax.set_title(f"{key[0]} {key[1]}: not measured", fontsize=9)
            continue
        contour = geometry.contour_mm
        ax.plot(contour[:, 1], contour[:, 0], color="red", lw=1)
        ax.add_collection(LineCollection(geometry.disc_ends_mm[:, :, ::-1], colors="cyan", linewidths=0.6))  # (x, y) ends
        ax.plot(geometry.mitral_mm[:, 1], geometry.mitral_mm[:, 0], color="yellow", lw=1.5)
        ax.plot(geometry.axis_mm[:, 1], geometry.axis_mm[:, 0], color="white", lw=0.8, ls="--")
        ax.plot(geometry.axis_mm[1, 1], geometry.axis_mm[1, 0], marker="o", color="white", markersize=3)
    fig.suptitle(title, fontsize=10)
    _save(fig, path, tight=False, compress_level=1)


def worst_cases(test: pd.DataFrame, count: int, ingested: Path, predictions: Path) -> tuple[list[dict], list[dict]]:
    """The ``count`` measured test patients with the largest calibrated EF error: their rows, and
    their frames for the overlay figure."""
    worst = test.assign(error=(test["ef_calibrated"] - test["ef_ref"]).abs()).nlargest(count, "error")
    cases = []
    for row in worst.itertuples():
        expert = framefile.load(framefile.patient_path(row.patient, ingested))
        predicted = framefile.load(framefile.patient_path(row.patient, predictions))
        cases.append({"title": f"{row.patient} EF {row.ef_calibrated:.0f} vs {row.ef_ref:.0f}",
                      "frames": {k: (f.image, f.label, predicted[k].label, f.spacing_mm) for k, f in expert.items()}})
    return worst.to_dict(orient="records"), cases


def write_plots(test: pd.DataFrame, stats: dict, calibrator: dict, cases: list[dict], plots: Path) -> None:
    """The plot tables DVC draws (scatter, Bland-Altman, EF-class confusion) and the PNG figures."""
    write_csv(plots / "ef_scatter.csv", test[["patient", "ef_ref", "ef", "ef_calibrated"]].rename(columns={"ef": "ef_pred"}))
    write_csv(plots / "bland_altman.csv", pd.concat([
        pd.DataFrame({"patient": test["patient"], "stage": stage, "mean": (v + test["ef_ref"]) / 2, "diff": v - test["ef_ref"]})
        for stage, v in (("pre", test["ef"]), ("post", test["ef_calibrated"]))]))
    write_csv(plots / "ef_classes.csv", pd.DataFrame({
        "patient": test["patient"], "reference": [EF_CLASS_NAMES[c] for c in ef_class(test["ef_ref"].to_numpy())],
        "predicted": [EF_CLASS_NAMES[c] for c in ef_class(test["ef_calibrated"].to_numpy())]}))
    scatter(test["ef_ref"], test["ef"], test["ef_calibrated"], plots / "ef_scatter.png")
    bland_altman([("before calibration", test["ef_ref"], test["ef"], stats["pre"]),
                  ("after calibration", test["ef_ref"], test["ef_calibrated"], stats["post"])], plots / "bland_altman.png")
    calibration_curve(calibrator, test, plots / "calibration.png")
    confusion(stats["post"]["confusion"], plots / "ef_classes.png")
    overlays(cases, plots / "overlays.png")
