"""How often review's `still_loop` flag is raised: on real ED and ES pairs and simulated beating loops (a
false flag) and on one picture repeated with pixel noise (a loop without a heart cycle, which should
be flagged), whatever the loop's length or frame time.

Real: every CAMUS patient's ED and ES frames of each view, read as a loop of two frames (a beating
loop holds both, so it changes at least as much). Beating: the phantom's loops (`phantom.write_loops`,
one beat of 20 frames, speckle drawn per frame). Still: each phantom patient's first frame repeated
12 or 48 times with Gaussian noise of SD 0-32 grey levels, drawn per frame. Each loop goes through
`echoef.app.cine.picture_change_percent` and `echoef.measure.review.loop_reasons` as `predict` calls them.

Usage: python benchmarks/still_loops.py [--data ../shared/data/camus] [--patients 40] [--seed 0]
No model: the pictures and the flag alone.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

from echoef import machine
from echoef.app import cine
from echoef.io import camus, imagefile, phantom
from echoef.measure import review


def flagged(change: float) -> bool:
    return any(reason.startswith("still_loop:") for reason in review.loop_reasons({}, {}, {}, {"4CH": change}))


def real_pairs(data: Path) -> np.ndarray:
    """The picture change of every ED and ES pair of every patient under ``data``."""
    changes = []
    for folder in camus.find_patients(data):
        layout = camus.detect_layout(folder)
        for view in camus.VIEWS:
            pair = [imagefile.read_image(camus.frame_path(folder, view, phase, layout))[0] for phase in camus.PHASES]
            changes.append(cine.picture_change_percent(np.stack(pair)))
    return np.asarray(changes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/camus"))
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"Machine: {machine.describe()}; commit {machine.commit()}; limit {review.STILL_LOOP_PERCENT}%; "
          f"{args.patients} phantom patients, seed {args.seed}")
    if args.data.is_dir():
        real = real_pairs(args.data)
        print(f"real ED/ES pairs ({len(real)}): change min {real.min():.1f}%, 1st percentile {np.percentile(real, 1):.1f}%, "
              f"median {np.median(real):.1f}%; flagged {np.mean([flagged(c) for c in real]):.1%}")
    with tempfile.TemporaryDirectory() as root:
        phantom.write_cohort(root, args.patients, seed=args.seed)
        phantom.write_loops(root, args.patients, seed=args.seed)
        loops = [imagefile.read_loop(folder / f"{folder.name}_{view}_sequence.nii.gz").frames
                 for folder in camus.find_patients(root) for view in camus.VIEWS]
    beating = np.array([cine.picture_change_percent(frames) for frames in loops])
    print(f"phantom beating loops ({len(loops)}): change min {beating.min():.1f}%, median {np.median(beating):.1f}%; "
          f"flagged {np.mean([flagged(c) for c in beating]):.1%}")
    rng = np.random.default_rng(args.seed)
    for count in (12, 48):
        for noise_sd in (0, 4, 8, 16, 32):
            still = [cine.picture_change_percent(np.repeat(frames[:1], count, axis=0) + rng.normal(0, noise_sd, (count, *frames.shape[1:])))
                     for frames in loops]
            print(f"still, {count} frames, noise SD {noise_sd:>2}: change max {max(still):.1f}%, "
                  f"flagged {np.mean([flagged(c) for c in still]):.1%}")


if __name__ == "__main__":
    main()
