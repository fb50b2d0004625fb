"""Agreement of predicted EF with the reference on test (and validation), before and after calibration."""

import argparse
from pathlib import Path

import pandas as pd

from echoef import agreement, calibration, figures, framefile, params as P
from echoef.ef import is_measured
from echoef.ingest import patient_path
from echoef.io import read_json, write_csv, write_json
from echoef.stage import run


def overlay_cases(test: pd.DataFrame, count: int, ingested: Path, predictions: Path) -> list[dict]:
    """Best, median and worst test patients by absolute EF error."""
    ok = test[test["status"].map(is_measured)].assign(error=lambda t: (t["ef"] - t["ef_ref"]).abs()).sort_values("error")
    if ok.empty or count == 0:
        return []
    picks = [("best", 0), ("median", len(ok) // 2), ("worst", len(ok) - 1)][:count]
    cases = []
    for name, position in picks:
        row = ok.iloc[position]
        expert = framefile.load(patient_path(row["patient"], ingested))
        predicted = framefile.load(predictions / f"{row['patient']}.npz")
        frames = {k: (f.image, f.label, predicted[k].label, f.spacing_mm) for k, f in expert.items()}
        cases.append({"title": f"{name} {row['patient']} EF {row['ef']:.0f} vs {row['ef_ref']:.0f}", "frames": frames})
    return cases


def main():
    parser = argparse.ArgumentParser()
    for name in ("--ef", "--oof", "--ensemble-ef", "--calibrator", "--ingested", "--predictions", "--metrics",
                 "--cv-metrics", "--plots"):
        parser.add_argument(name, type=Path, required=True)
    args = parser.parse_args()
    config = P.load().evaluate
    table = pd.read_csv(args.ef)
    calibrator = read_json(args.calibrator)
    metrics = {subset: agreement.set_report(rows, calibration.apply(calibrator, rows["ef"]), config.bootstrap, config.seed)
               for subset, rows in ((s, table[table["set"] == s]) for s in ("test", "val"))}
    write_json(args.metrics, metrics)
    write_json(args.cv_metrics, agreement.cross_validation_report(
        pd.read_csv(args.oof), pd.read_csv(args.ensemble_ef), calibrator, config.bootstrap, config.seed))

    test = table[(table["set"] == "test") & table["status"].map(is_measured)].copy()
    test["ef_calibrated"] = calibration.apply(calibrator, test["ef"])
    plots = args.plots
    scatter = test[["patient", "ef_ref", "ef", "ef_calibrated"]].rename(columns={"ef": "ef_pred"})
    write_csv(plots / "ef_scatter.csv", scatter)
    bland = pd.concat([
        pd.DataFrame({"patient": test["patient"], "stage": stage, "mean": (v + test["ef_ref"]) / 2, "diff": v - test["ef_ref"]})
        for stage, v in (("pre", test["ef"]), ("post", test["ef_calibrated"]))])
    write_csv(plots / "bland_altman.csv", bland)
    pre, post = metrics["test"]["pre"], metrics["test"]["post"]
    figures.scatter(test["ef_ref"], test["ef"], test["ef_calibrated"], plots / "ef_scatter.png")
    figures.bland_altman(test["ef_ref"], test["ef"], test["ef_calibrated"], pre, post, plots / "bland_altman.png")
    figures.calibration_curve(lambda x: calibration.apply(calibrator, x), plots / "calibration.png")
    figures.confusion(post["confusion"], plots / "ef_classes.png")
    figures.overlays(overlay_cases(table[table["set"] == "test"], config.overlays, args.ingested, args.predictions),
                     plots / "overlays.png")
    print(f"evaluate: test n={post['n']} (failed {metrics['test']['n_failed']}): MAE {pre['mae']:.2f} -> {post['mae']:.2f}, "
          f"bias {pre['bias']:+.2f} -> {post['bias']:+.2f}, r {post['r']:.3f}")


if __name__ == "__main__":
    run(main)
