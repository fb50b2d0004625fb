"""EF from expert masks against the CAMUS reference EF, per method, and Simpson's speed.

Usage: python benchmarks/ef_reference.py --root ../shared/data/camus [--sample2019 ../shared/data/camus-2019-sample]
       [--record results/simpson-expert-masks]
Speed: median time per patient (four masks, arrays already in memory) on one thread. With --record,
the numbers are kept as a record (method_record.json, patients.csv) that README's results are made from.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import pandas as pd

from echoef import machine
from echoef.io import camus
from echoef.io.atomic import write_csv, write_json
from echoef.measure import ef, simpson
from echoef.stats import agreement


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/camus")
    parser.add_argument("--sample2019", default="../shared/data/camus-2019-sample")
    parser.add_argument("--record", type=Path, help="a folder to keep the numbers in (results/<name>)")
    args = parser.parse_args()
    studies = [camus.read_study(p) for p in camus.find_patients(args.root)]
    print(f"{len(studies)} patients from {args.root}; {machine.describe()}, numpy {np.__version__}")
    timings = []
    for study in studies:
        frames = ef.label_maps(study.frames)
        start = time.perf_counter()
        ef.patient_ef(frames, "simpson_biplane")
        timings.append(time.perf_counter() - start)
    print(f"simpson_biplane: median {1000 * np.median(timings):.1f} ms per patient "
          f"(p90 {1000 * np.percentile(timings, 90):.1f}, max {1000 * max(timings):.1f})")
    print(f"{'method':28s} {'n':>4s} {'failed':>6s} {'MAE':>6s} {'bias':>6s} {'r':>6s} {'exact':>6s} {'<=1':>6s}")
    table = pd.DataFrame({"patient": [s.patient for s in studies], "ef_ref": [s.ef_ref for s in studies]})
    summaries = {}
    for method in simpson.METHODS:
        rows = [ef.patient_ef(ef.label_maps(s.frames), method) for s in studies]
        table[method] = [r["ef"] if ef.is_measured(r["status"]) else np.nan for r in rows]
        ok = table[method].notna()
        stats = agreement.summary(table.loc[ok, method], table.loc[ok, "ef_ref"])
        error = (table.loc[ok, method] - table.loc[ok, "ef_ref"]).abs()
        summaries[method] = {"n": stats["n"], "failed": int((~ok).sum()), "mae": stats["mae"], "bias": stats["bias"],
                             "r": stats["r"], "exact": float((error == 0).mean()), "within_1": float((error <= 1).mean())}
        s = summaries[method]
        print(f"{method:28s} {s['n']:4d} {s['failed']:6d} {s['mae']:6.2f} {s['bias']:+6.2f} "
              f"{s['r']:6.3f} {100 * s['exact']:5.1f}% {100 * s['within_1']:5.1f}%")
    if args.record:
        write_csv(args.record / "patients.csv", table)
        write_json(args.record / "method_record.json", {
            "kind": "EF method on expert masks", "command": "python " + " ".join(sys.argv), "commit": machine.commit(),
            "machine": machine.cpu(), "data": str(args.root), "methods": summaries})
        print(f"record: {args.record}")
    if Path(args.sample2019).is_dir():
        print("\n2019 layout sample: Simpson biplane from the expert masks beside the cfg's LVef "
              "(another quantity than the 2023 EF)")
        for folder in camus.find_patients(args.sample2019):
            study = camus.read_study(folder)
            row = ef.patient_ef(ef.label_maps(study.frames), "simpson_biplane")
            print(f"  {study.patient}: EF {row['ef']:.0f} (EDV {row['edv_ml']:.0f}, ESV {row['esv_ml']:.0f} mL)   "
                  f"LVef {study.ef_ref:.1f} (LVedv {study.cohort_row()['edv_ref_ml']}, LVesv {study.cohort_row()['esv_ref_ml']})")


if __name__ == "__main__":
    main()
