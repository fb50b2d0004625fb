"""Wall time of `echoef ef` on a CAMUS folder, as a user runs it: process start, imports, reading every
file, Simpson's method, the CSV.

Usage: python benchmarks/ef_speed.py [--root ../shared/data/camus] [--runs 3] [--jobs N]
Prints the command, the machine and the commit with each run's seconds and the time per patient.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from echoef import machine
from echoef.io import camus


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/camus")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, help="passed on to echoef ef (default: its own, one per core)")
    args = parser.parse_args()
    patients = len(camus.find_patients(Path(args.root)))
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "echoef", "ef", args.root, "--out", str(Path(tmp) / "ef.csv")]
        command += ["--jobs", str(args.jobs)] if args.jobs else []
        print(f"command: {' '.join(command[1:])}\nmachine: {machine.describe()}\ncommit: {machine.commit()}")
        seconds = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(f"{patients} patients: " + ", ".join(f"{s:.1f}" for s in seconds) + f" s; median {median:.1f} s, "
          f"{1000 * median / patients:.0f} ms per patient")


if __name__ == "__main__":
    main()
