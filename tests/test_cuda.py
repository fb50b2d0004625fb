"""The train and infer stages on CUDA, on the synthetic cohort: the CUDA, bf16 and NCCL paths that a
CPU machine never runs. Skipped without a GPU (`pytest -m cuda` selects them); the two-process NCCL
test needs two GPUs."""

import json
import subprocess
import sys

import pytest
import torch

from echoef import params

from conftest import ROOT

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

TINY = ["train.network.input_size=64", "train.network.encoder_depth=3", "train.optimisation.epochs=2",
        "train.runtime.device=cuda", "train.runtime.precision=auto", "infer.precision=auto", "data.phantom.n_patients=10"]


def stage(args, cwd, processes=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    result = subprocess.run([*launcher, str(ROOT / "stages" / args[0]), *map(str, args[1:])], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("cuda")
    params.compose(work / "params.yaml", TINY, ROOT)
    stage(["phantom.py", "data/phantom"], work)
    stage(["ingest.py", "data/phantom", "data/ingested", "metrics/ingest.json"], work)
    stage(["split.py", "data/ingested/cohort.csv", "data/phantom", "data/split.json", "data/cv/folds.json", "data/cv/sets"], work)
    return work


def train(work, name, processes=1):
    return stage(["train.py", "--ingested", "data/ingested", "--sets", "data/split.json", "--model", f"{name}/segmenter.pt",
                  "--train-log", f"{name}/train_log.json", "--curves", f"{name}/curves"], work, processes)


def test_train_and_infer_on_one_gpu(workspace):
    train(workspace, "one")
    log = json.loads((workspace / "one/train_log.json").read_text())
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert log["device"] == "cuda" and log["precision"] == ("bf16" if native else "float32")
    assert log["environment"]["gpu"] == torch.cuda.get_device_name(0)
    out = stage(["infer.py", "--model", "one/segmenter.pt", "--ingested", "data/ingested", "--sets", "data/split.json",
                 "--subsets", "val", "test", "--out", "pred", "--dice", "dice.csv", "--metrics", "seg.json"], workspace)
    assert "on cuda" in out and len(list((workspace / "pred").glob("*.npz"))) == 4


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL across processes needs two GPUs")
def test_two_processes_with_nccl(workspace):
    train(workspace, "two", processes=2)
    log = json.loads((workspace / "two/train_log.json").read_text())
    assert log["processes"] == 2 and log["device"] == "cuda:0"
