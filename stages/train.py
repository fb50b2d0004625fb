"""Train the U-Net; keep the checkpoint with the best validation LV Dice.

Plain mode: training list -> models/segmenter.pt, chosen on the validation list.
``--fold K --seed S``: the training folds less their inner validation part -> data/cv/fold_K/model/.
"""

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from dvclive import Live

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import dataset, framefile, model as M, params as P, split as S  # noqa: E402
from echoef.io import read_json, write_json  # noqa: E402
from echoef.stage import run  # noqa: E402
from echoef.status import StudyError  # noqa: E402


def load_set(patients, config):
    frames, skipped = [], []
    for patient in patients:
        study = framefile.load(dataset.patient_path(patient))
        try:
            frames += [study[key] for key in dataset.input_order(study, max(P.member_phases(config)))]
        except StudyError as error:  # a paired member cannot read this patient; the others still train
            skipped.append(f"{patient} ({error})")
    if skipped:
        print(f"train: {len(skipped)} patient(s) left out: " + "; ".join(skipped))
    images, labels, _ = dataset.grid_tensors(frames, config["input_size"])
    return images, labels


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fold", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    config = P.load()["train"]
    if args.fold is None:
        sets = read_json("data/split.json")
        out, log_dir = Path("models"), Path("metrics/train")
    else:
        sets = S.fold_sets(read_json("data/cv/folds.json"), args.fold)
        config = {**config, "seed": args.seed}
        out = log_dir = Path(f"data/cv/fold_{args.fold}/model")
    device = M.resolve_device(config["device"])
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    # Launched by torchrun with several processes: one process group, one GPU per process (or
    # gloo on CPU); only rank 0 logs and writes.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    writer = not distributed or dist.get_rank() == 0
    train_set = load_set(sets["train"], config)
    val_set = load_set(sets["val"], config)
    world = dist.get_world_size() if distributed else 1
    if writer:
        print(f"train: {len(train_set[0])} training and {len(val_set[0])} validation frames on {device} in "
              f"{M.precision_name(config['precision'], device)}"
              + (f", {world} processes" if distributed else "") + f", {config['members']} ensemble member(s), {min(config['parallel_members'], config['members'])} at a time")
    live = Live(str(log_dir), dvcyaml=None, save_dvc_exp=False, report=None) if writer else contextlib.nullcontext()
    with live:
        def log(member, epoch, row):
            live.step = epoch  # each member's curve starts at step 0
            for key, value in row.items():
                live.log_metric(key if config["members"] == 1 else f"member_{member}/{key}", value)
            live.make_summary()
            print(f"member {member} epoch {epoch + 1}: " + " ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)

        start = time.perf_counter()
        members = M.train_members(train_set, val_set, config, device, log if writer else None)
        seconds = time.perf_counter() - start
    if distributed:
        dist.destroy_process_group()
    if not writer:
        return
    summary = [{"seed": m["seed"], "phases_per_input": m["phases_per_input"], "best_epoch": m["best_epoch"],
                "val_dice_lv": m["history"][m["best_epoch"]]["val_dice_lv"]} for m in members]
    M.save_checkpoint(out / "segmenter.pt", [m["state_dict"] for m in members], config,
                      {"members": summary, "train_patients": sets["train"], "val_patients": sets["val"]})
    # Who the model saw, beside it: the cross-validation checks read this.
    write_json(out / "train_log.json", {"fold": args.fold, "seed": config["seed"], "processes": world, "device": device, "train_seconds": seconds,
                                        "train_patients": sets["train"], "val_patients": sets["val"],
                                        "members": [{**s, "history": m["history"]} for s, m in zip(summary, members)]})
    print(f"train: {seconds:.0f} s; " + "; ".join(f"seed {s['seed']} ({s['phases_per_input']} frame(s) per input) best epoch {s['best_epoch'] + 1}, validation LV Dice "
                                                   f"{s['val_dice_lv']:.4f}" for s in summary))


if __name__ == "__main__":
    run(main)
