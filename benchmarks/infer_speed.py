"""Inference speed of a profile's network on real CAMUS frames, in frames per second.

End to end is what `stages/infer.py` and `python -m echoef predict` do per patient once the frames
are in memory (`echoef.model.segmentation.predict_frames`: letterbox onto the grid, network, map the
scores back to each native grid, post-process); network alone is the grid tensors through the
network in batches of `infer.batch_size`. Reading the files is not timed.

Usage: python benchmarks/infer_speed.py [--profile camus-cpu | --params FILE] [--model models/segmenter.pt]
           [--root ../shared/data/camus] [--patients 25] [--threads 2] [--precision fp32|bf16]
Without --model the params' network is built with random weights: its speed does not depend on them.
"""

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from echoef import params
from echoef.io import camus
from echoef.model import network, segmentation
from echoef.model.dataset import grid_tensors, input_order


def listed_patients(root: Path, count: int) -> list[Path]:
    """The first ``count`` patients of the root's test list (of all its patients without lists)."""
    lists, found = camus.read_split_lists(root), camus.find_patients(root)
    return [p for p in found if not lists or p.name in lists["test"]][:count]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--profile", default="camus-cpu", help="a profile in conf/profile/ (default camus-cpu)")
    source.add_argument("--params", help="a params file instead of a profile")
    parser.add_argument("--model", help="a checkpoint (models/segmenter.pt); default: the params' network, random weights")
    parser.add_argument("--root", default="../shared/data/camus")
    parser.add_argument("--patients", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", choices=params.PRECISIONS, help="default: the params' infer.precision")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = (params.load(args.params) if args.params else params.load_profile(args.profile))
    if args.model:
        models, state = network.load_checkpoint(args.model, args.device)
        config = params.build(params.Network, {**state["model_config"], "members": len(models)})
    else:
        torch.manual_seed(0)  # the stage does not switch on deterministic kernels, so neither does this
        config = settings.train.network
        models = [network.build_network(config, phases).to(args.device, memory_format=torch.channels_last).eval()
                  for phases in config.member_phases()]
    size, batch_size, tta = config.input_size, settings.infer.batch_size, settings.infer.tta
    precision = args.precision or settings.infer.precision
    studies = [camus.read_study(path, with_label=False).frames for path in listed_patients(Path(args.root), args.patients)]
    n_frames = sum(len(frames) for frames in studies)
    print(f"{len(studies)} patients ({n_frames} frames) from {args.root}; {config.encoder} depth "
          f"{config.encoder_depth} at {size}, {len(models)} model(s), phases_per_input {[m.phases_per_input for m in models]}, "
          f"tta {tta}, precision {precision}, batch {batch_size}; {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{platform.machine()}, {platform.python_version()}")

    segmentation.predict_frames(models, studies[0], size, batch_size, tta, precision)  # warm-up, not timed
    per_patient = []
    for frames in studies:
        start = time.perf_counter()
        segmentation.predict_frames(models, frames, size, batch_size, tta, precision)
        per_patient.append(time.perf_counter() - start)
    print(f"end to end: {n_frames / sum(per_patient):.1f} frames/s; per patient median "
          f"{1000 * np.median(per_patient):.0f} ms, p90 {1000 * np.percentile(per_patient, 90):.0f} ms")

    images = torch.cat([grid_tensors([f[k] for k in input_order(f, max(m.phases_per_input for m in models))], size, with_labels=False)[0]
                        for f in studies])
    start = time.perf_counter()
    for net in models:
        network.predict_scores(net, images, batch_size, tta, precision)
    print(f"network alone: {len(images) / (time.perf_counter() - start):.1f} frames/s ({len(images)} grid frames)")


if __name__ == "__main__":
    main()
