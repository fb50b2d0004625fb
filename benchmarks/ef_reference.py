"""EF from expert masks against the CAMUS reference EF, per method, and Simpson's speed.

Usage: python benchmarks/ef_reference.py --root ../shared/data/camus [--sample2019 ../shared/data/camus-2019-sample]
Speed: median time per patient (four masks, arrays already in memory) on one thread.
"""

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np

from echoef import agreement, camus, ef, simpson


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/camus")
    parser.add_argument("--sample2019", default="../shared/data/camus-2019-sample")
    args = parser.parse_args()
    studies = [camus.read_study(p) for p in camus.find_patients(args.root)]
    print(f"{len(studies)} patients from {args.root}; {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    timings = []
    for study in studies:
        frames = ef.label_maps(study.frames)
        start = time.perf_counter()
        ef.patient_ef(frames, "simpson_biplane")
        timings.append(time.perf_counter() - start)
    print(f"simpson_biplane: median {1000 * np.median(timings):.1f} ms per patient "
          f"(p90 {1000 * np.percentile(timings, 90):.1f}, max {1000 * max(timings):.1f})")
    print(f"{'method':28s} {'n':>4s} {'failed':>6s} {'MAE':>6s} {'bias':>6s} {'r':>6s} {'exact':>6s} {'<=1':>6s}")
    for method in simpson.METHODS:
        rows = [ef.patient_ef(ef.label_maps(s.frames), method) for s in studies]
        ok = [ef.is_measured(r["status"]) for r in rows]
        pred = np.array([r["ef"] for r, good in zip(rows, ok) if good])
        ref = np.array([s.ef_ref for s, good in zip(studies, ok) if good])
        stats = agreement.summary(pred, ref)
        error = np.abs(pred - ref)
        print(f"{method:28s} {stats['n']:4d} {len(rows) - stats['n']:6d} {stats['mae']:6.2f} {stats['bias']:+6.2f} "
              f"{stats['r']:6.3f} {100 * (error == 0).mean():5.1f}% {100 * (error <= 1).mean():5.1f}%")
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
