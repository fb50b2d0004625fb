"""End to end: the real `dvc repro` on a tiny configuration, in a temporary copy of the repository."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

TINY = {
    ("data", "phantom", "n_patients"): 10,
    ("train", "epochs"): 3,
    ("train", "input_size"): 64,
    ("train", "encoder_depth"): 3,
    ("evaluate", "bootstrap"): 50,
    ("evaluate", "overlays"): 1,
}


# The venv's dvc and python first on PATH, as `make` puts them.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


def run(args, cwd):
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def set_params(repo: Path, overrides: dict) -> None:
    """Change params.yaml keys given as tuples of nested names."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for keys, value in overrides.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_repo(repo: Path, overrides: dict) -> Path:
    """A git repository holding this project's tracked files with ``overrides``, run and committed."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    (repo / "dvc.lock").unlink(missing_ok=True)
    set_params(repo, overrides)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(git + ["commit", "-qm", "tiny"], repo)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(git + ["commit", "-qm", "baseline run"], repo)
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("repo"), TINY)


def test_outputs(repo):
    ef = json.loads((repo / "metrics/ef.json").read_text())
    post = ef["test"]["post"]
    for key in ("mae", "bias", "sd", "loa_low", "loa_high", "r", "r2", "n", "mae_ci"):
        assert key in post and key in ef["test"]["pre"]
    assert ef["test"]["n_patients"] == post["n"] + ef["test"]["n_failed"] == 2
    seg = json.loads((repo / "metrics/segmentation.json").read_text())
    assert {"dice_lv_ed", "dice_lv_es", "dice_myo_ed", "dice_la_es"} <= set(seg["test"])
    calibrator = json.loads((repo / "models/calibrator.json").read_text())
    assert calibrator["fit_set"] == "val" and calibrator["n"] <= 2
    split = json.loads((repo / "data/split.json").read_text())
    assert not set(split["train"]) & set(split["test"]) and split["source"] == "stratified"
    for png in ("ef_scatter", "bland_altman", "calibration", "ef_classes", "overlays"):
        assert (repo / f"plots/{png}.png").stat().st_size > 1000
    table = __import__("pandas").read_csv(repo / "data/ef.csv")
    assert set(table["set"]) == {"val", "test"} and (table["method"] == "simpson_biplane").all()


def test_forced_rerun_gives_identical_metrics(repo):
    """Same params, seeds and data on CPU: `dvc repro -f` reproduces every metrics file exactly."""
    files = ["metrics/ef.json", "metrics/segmentation.json", "metrics/ingest.json", "models/calibrator.json", "data/ef.csv"]
    before = {name: (repo / name).read_bytes() for name in files}
    run(["dvc", "repro", "-f"], repo)
    assert {name: (repo / name).read_bytes() for name in files} == before


def test_nothing_to_do_then_an_experiment_reruns_only_calibration(repo):
    assert "up to date" in run(["dvc", "repro"], repo)
    log = run(["dvc", "exp", "run", "-S", "calibration.method=none"], repo)
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    assert ran == {"check_params", "calibrate", "evaluate"}  # the check re-runs nothing by itself
    assert json.loads((repo / "models/calibrator.json").read_text())["method"] == "none"
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], repo))
    assert {"test.n_patients", "test.n_failed", "test.post.n", "val.post.n"} <= set(diff["metrics/ef.json"])
    assert "bland_altman" in run(["dvc", "plots", "show", "--json"], repo)


def test_a_bad_parameter_stops_with_the_key(repo):
    set_params(repo, {("ef", "method"): "teichholz"})
    result = subprocess.run([sys.executable, "stages/ef.py"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 2
    assert "ef.method = 'teichholz' is not allowed" in result.stderr and "Traceback" not in result.stderr


OUTPUTS = ["models/segmenter.pt", "models/calibrator.json", "metrics/ef.json", "data/ef.csv", "plots/overlays.png"]


def snapshot(repo: Path, names=OUTPUTS) -> dict:
    return {name: (repo / name).read_bytes() for name in names}


def restore(repo: Path) -> None:
    """Back to the committed parameters and their outputs."""
    run(["git", "checkout", "params.yaml"], repo)
    run(["dvc", "repro"], repo)


def test_a_params_typo_leaves_every_previous_output_in_place(repo):
    before = snapshot(repo)
    set_params(repo, {("train", "epoch"): 30})
    result = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, env=ENV)
    assert result.returncode != 0
    assert "params.yaml: unknown key 'train.epoch'" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(repo) == before  # DVC never reached the stages that would have deleted them
    restore(repo)


def test_a_run_killed_mid_stage_leaves_nothing_a_rerun_trusts(repo):
    set_params(repo, {("evaluate", "bootstrap"): 60})
    process = subprocess.Popen(["dvc", "repro"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=ENV, start_new_session=True)
    for line in process.stdout:
        if line.startswith("Running stage 'evaluate'"):
            break
    time.sleep(2.0)  # inside evaluate: it writes metrics, tables and figures one after another
    os.killpg(process.pid, signal.SIGKILL)  # ProcessLookupError here would mean it had finished: no test
    process.wait()
    assert "evaluate" in run(["dvc", "status"], repo)  # DVC knows the stage did not complete
    run(["dvc", "repro"], repo)  # the interrupted stage is re-run, not taken as done
    interrupted = snapshot(repo, ["metrics/ef.json", "metrics/ef_cv.json", "plots/ef_scatter.csv", "plots/bland_altman.csv"])
    run(["dvc", "repro", "-f", "-s", "evaluate"], repo)
    assert snapshot(repo, list(interrupted)) == interrupted
    assert "up to date" in run(["dvc", "status"], repo)
    restore(repo)


def test_a_second_run_at_the_same_time_is_refused_by_dvcs_lock(repo):
    from dvc.repo import Repo

    with Repo(str(repo)).lock:  # what a first `dvc repro` holds while it runs
        result = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, env=ENV)
    assert result.returncode != 0 and "Unable to acquire lock" in result.stderr + result.stdout
