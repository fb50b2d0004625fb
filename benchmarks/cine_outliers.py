"""How often ED and ES are found within a frame of the truth when some frames of a loop were segmented
badly: simulated LV area curves (a cosine beat of 12-40 frames per cycle, 1.2-3.5 cycles, noise of 1%
of the end-diastolic area), with none, one or two frames' areas multiplied by a factor, through
`echoef.app.cine.end_diastole_systole`; and how often clean loops with noisier areas are flagged
(`cine.outlier_frames`, review's `area_outliers`).

Usage: python benchmarks/cine_outliers.py [--loops 400] [--seed 0]
No model and no data: it measures the frame choice alone, on curves whose truth is known.
"""

import argparse

import numpy as np

from echoef import machine
from echoef.app import cine

CASES = {"clean": (0, [1.0]), "one frame at 0.2x or 1.8x": (1, [0.2, 1.8]), "two frames at 0.2x or 1.8x": (2, [0.2, 1.8]),
         "one frame at 0.7x or 1.3x": (1, [0.7, 1.3])}


def missed_share(outliers: int, factors: list[float], loops: int, seed: int) -> float:
    """The share of loops whose ED or ES is more than a frame (cyclically) from the truth."""
    rng = np.random.default_rng(seed)
    missed = 0
    for loop in range(loops):
        period = int(rng.integers(12, 40))
        frames, ed = int(rng.integers(int(period * 1.2), int(period * 3.5))), int(rng.integers(0, period))
        t = np.arange(frames)
        areas = 1500 + 700 * (1 + np.cos(2 * np.pi * (t - ed) / period)) / 2 + rng.normal(0, 15, frames)
        for _ in range(outliers):
            areas[rng.integers(0, frames)] *= factors[loop % len(factors)]
        found_ed, found_es = cine.end_diastole_systole(areas)
        off = [min((a - b) % period, (b - a) % period) for a, b in ((found_ed, ed), (found_es, ed + period // 2))]
        missed += max(off) > 1
    return missed / loops


def flagged_share(noise_share: float, loops: int, seed: int) -> float:
    """The share of clean loops (no outlier; per-frame area noise of ``noise_share`` of the area, beats
    of 8-40 frames whose area changes by 5-40%) in which ``cine.outlier_frames`` names a frame: false
    review flags."""
    rng = np.random.default_rng(seed)
    flagged = 0
    for _ in range(loops):
        period = int(rng.integers(8, 41))
        frames, ed = int(rng.integers(int(period * 1.2), int(period * 3.5) + 1)), int(rng.integers(0, period))
        t = np.arange(frames)
        amplitude = rng.uniform(100, 700)
        areas = 1500 + amplitude * (1 + np.cos(2 * np.pi * (t - ed) / period)) / 2 + rng.normal(0, noise_share * 1850, frames)
        flagged += bool(cine.outlier_frames(areas))
    return flagged / loops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"Machine: {machine.describe()}; commit {machine.commit()}; {args.loops} loops per case, seed {args.seed}")
    for name, (outliers, factors) in CASES.items():
        print(f"{name}: ED or ES more than a frame off in {missed_share(outliers, factors, args.loops, args.seed):.1%}")
    for noise_share in (0.01, 0.02, 0.05):
        print(f"clean loops with frame-to-frame area noise of {noise_share:.0%}: flagged area_outliers in "
              f"{flagged_share(noise_share, args.loops, args.seed):.1%}")


if __name__ == "__main__":
    main()
