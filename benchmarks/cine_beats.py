"""How often review's `no_beat` flag is raised: on simulated beating loops (a false flag) and on still
pictures repeated with noise (a loop without a heart cycle, which should be flagged), each lasting
3-6 s at 25-80 frames a second.

Beating: a cosine LV area curve at 40-150 beats a minute whose area changes by 5-40% of its end-
diastolic area, with frame-to-frame area noise of 1%, 2% or 5% of that area. Still: a constant area
with the same noise. Each curve goes through `echoef.app.cine.beats` and `echoef.measure.review.loop_reasons`
as `predict` calls them, with the loop's duration from its frame time.

Usage: python benchmarks/cine_beats.py [--loops 400] [--seed 0]
No model and no data: the frame choice and the flag alone, on curves whose truth is known.
"""

import argparse

import numpy as np

from echoef import machine
from echoef.app import cine
from echoef.measure import review


def flagged_share(beating: bool, noise_share: float, loops: int, seed: int) -> float:
    """The share of simulated loops that review flags `no_beat`."""
    rng = np.random.default_rng(seed)
    flagged = 0
    for _ in range(loops):
        frame_ms = 1000.0 / rng.uniform(25, 80)
        frames = int(rng.uniform(3000, 6000) / frame_ms)
        period = 60000.0 / rng.uniform(40, 150) / frame_ms  # frames per beat
        t = np.arange(frames)
        end_diastolic = 1850.0
        amplitude = rng.uniform(0.05, 0.40) * end_diastolic if beating else 0.0
        areas = (end_diastolic - amplitude + amplitude * (1 + np.cos(2 * np.pi * (t - rng.uniform(0, period)) / period)) / 2
                 + rng.normal(0, noise_share * end_diastolic, frames))
        beatless = {} if cine.beats(areas) else {"4CH": frames * frame_ms}
        flagged += any(reason.startswith("no_beat:") for reason in review.loop_reasons({}, {}, beatless))
    return flagged / loops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"Machine: {machine.describe()}; commit {machine.commit()}; {args.loops} loops per case, seed {args.seed}")
    for noise_share in (0.01, 0.02, 0.05):
        print(f"area noise {noise_share:.0%}: beating loops flagged no_beat in {flagged_share(True, noise_share, args.loops, args.seed):.1%}, "
              f"still pictures with noise in {flagged_share(False, noise_share, args.loops, args.seed):.1%}")


if __name__ == "__main__":
    main()
