"""Wall time of `echoef predict` on CAMUS-layout patient folders, as a user runs it (process start, imports,
the model file read and checked, each study read, segmented, measured, its QC picture and page
written), and, in this process, the two fixed costs inside it: loading the model file and drawing
one study's QC picture.

Usage: python benchmarks/predict_speed.py [--root data/phantom] [--patients 10] [--runs 3]
           [--model models/segmenter.pt] [--calibrator models/calibrator.json] [--threads 2]
The defaults are what `make run` leaves: its model, and the phantom patients it was trained on, which
it measures (the default model measures few real CAMUS studies, and an unmeasured study draws less).
Prints the command, the machine and the commit, each run's seconds, the median per study, and the
median of 5 model loads and of 10 QC pictures.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from echoef import machine
from echoef.io import camus


def median_seconds(action, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def in_process_costs(model: Path, patient: Path, out: Path) -> tuple[float, float]:
    """Median seconds of one model load and of one QC picture (the patient's expert masks measured)."""
    from echoef.measure import simpson
    from echoef.model.network import load_checkpoint
    from echoef.reporting import figures

    study = camus.read_study(patient)
    frames = {key: (frame.image, frame.spacing_mm, simpson.lv_geometry(frame.label == camus.Label.LV, frame.spacing_mm))
              for key, frame in study.frames.items()}
    load = median_seconds(lambda: load_checkpoint(model), 5)
    figure = median_seconds(lambda: figures.simpson_construction(frames, patient.name, out / "qc.png"), 10)
    return load, figure


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/phantom")
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="models/segmenter.pt")
    parser.add_argument("--calibrator", default="models/calibrator.json")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every process timed")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    patients = camus.find_patients(Path(args.root))[: args.patients]
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "echoef", "predict", *map(str, patients), "--out", str(Path(tmp) / "out"),
                   "--model", args.model, "--calibrator", args.calibrator, "--device", "cpu", "--force"]
        print(f"command: {' '.join(command[1:4])} <{len(patients)} patients> {' '.join(command[4 + len(patients):])}\n"
              f"machine: {machine.describe()}\ncommit: {machine.commit()}\nthreads: {args.threads}")
        seconds = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds.append(time.perf_counter() - start)
        load, figure = in_process_costs(Path(args.model), patients[0], Path(tmp))
    median = statistics.median(seconds)
    print(f"{len(patients)} studies: " + ", ".join(f"{s:.1f}" for s in seconds) + f" s; median {median:.1f} s, "
          f"{median / len(patients):.2f} s per study")
    print(f"model load: {load:.3f} s; QC picture: {figure:.3f} s per study")


if __name__ == "__main__":
    main()
