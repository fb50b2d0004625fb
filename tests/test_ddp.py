"""Training in several processes: DistributedDataParallel (two CPU processes, gloo, launched by the
train stage's torchrun) and ensemble members trained in parallel processes."""

import json

import pytest
import torch

from test_pipeline import TINY, make_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("ddp"), {**TINY, ("train", "processes"): 2, ("train", "threads"): 1})


def test_two_processes_give_the_same_outputs_as_one(repo):
    log = json.loads((repo / "models/train_log.json").read_text())
    assert log["processes"] == 2 and len(log["members"]) == 1 and len(log["members"][0]["history"]) == 3
    assert (repo / "models/segmenter.pt").stat().st_size > 1_000_000
    assert (repo / "metrics/train/metrics.json").is_file()  # written once, by rank 0
    ef = json.loads((repo / "metrics/ef.json").read_text())
    assert ef["test"]["n_patients"] == 2
    seg = json.loads((repo / "metrics/segmentation.json").read_text())
    assert set(seg) == {"val", "test"}


@pytest.fixture(scope="module")
def parallel_repo(tmp_path_factory):
    overrides = {**TINY, ("train", "members"): 2, ("train", "phases_per_input"): [1, 2], ("train", "parallel_members"): 2,
                 ("train", "threads"): 1}
    return make_repo(tmp_path_factory.mktemp("parallel"), overrides)


def test_members_in_parallel_processes_through_the_train_stage(parallel_repo):
    log = json.loads((parallel_repo / "models/train_log.json").read_text())
    assert [(m["seed"], m["phases_per_input"], len(m["history"])) for m in log["members"]] == [(0, 1, 3), (1, 2, 3)]
    state = torch.load(parallel_repo / "models/segmenter.pt", weights_only=False)
    assert len(state["state_dicts"]) == 2 and state["members"][1]["best_epoch"] == log["members"][1]["best_epoch"]
    curves = json.loads((parallel_repo / "metrics/train/metrics.json").read_text())  # dvclive, replayed after training
    assert curves["step"] == 2 and {"val_dice_lv", "train_loss"} <= set(curves["member_1"])
    assert json.loads((parallel_repo / "metrics/ef.json").read_text())["test"]["n_patients"] == 2
