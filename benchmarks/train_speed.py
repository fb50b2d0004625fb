"""Training speed of a profile's networks on this machine's CPU, float32 against bf16 mixed precision.

Runs `echoef.model.training.Trainer` itself for two epochs of `--steps` batches of `train.batch_size` random
frames at the profile's grid (speed does not depend on the content) and times the second epoch, so
one-off kernel set-up is left out; the time includes the epoch's validation of one batch.

Usage: python benchmarks/train_speed.py [--profile camus-cpu | --params FILE] [--steps 20] [--threads 2]
"""

import argparse
import dataclasses
import platform
import time

import torch

from echoef import params
from echoef.model import network, runtime, training


def seconds_of_second_epoch(config: params.Train, phases: int, train_set, val_set) -> float:
    """Wall seconds of epoch 2 of a ``training.Trainer`` run with ``config`` (epochs forced to 2)."""
    ends = []
    config = dataclasses.replace(config, optimisation=dataclasses.replace(config.optimisation, epochs=2))
    runtime.seed_everything(0)
    net = network.build_network(config.network, phases)
    training.Trainer(net, train_set, val_set, config, "cpu", log=lambda epoch, row: ends.append(time.perf_counter())).run()
    return ends[1] - ends[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--profile", default="camus-cpu", help="a profile in conf/profile/ (default camus-cpu)")
    source.add_argument("--params", help="a params file instead of a profile")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = (params.load(args.params) if args.params else params.load_profile(args.profile)).train
    size, batch_size = config.network.input_size, config.optimisation.batch_size
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(args.steps * batch_size, 1, size, size, generator=generator)
    labels = torch.randint(0, network.N_CLASSES, (len(frames), size, size), generator=generator)
    val_set = (frames[:batch_size], labels[:batch_size])
    print(f"{config.network.encoder} depth {config.network.encoder_depth} at {size}, batch {batch_size} frames, {args.steps} steps; "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}, {platform.python_version()}")
    for phases in sorted(set(config.network.member_phases())):
        for precision in ("fp32", "bf16"):
            precise = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, precision=precision))
            seconds = seconds_of_second_epoch(precise, phases, (frames, labels), val_set)
            print(f"phases_per_input {phases}, {precision}: {1000 * seconds / args.steps:.0f} ms per step")


if __name__ == "__main__":
    main()
