"""DistributedDataParallel training: two CPU processes (gloo) launched by the train stage's torchrun."""

import json

import pytest

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
