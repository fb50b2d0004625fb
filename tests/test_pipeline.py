"""End to end: the real `dvc repro` on a tiny configuration, in one temporary copy of the repository
shared by every test here (built once: training in two processes, two cross-validation folds).
Each test that changes the copy puts it back."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from echoef import params
from echoef.io.atomic import write_json
from echoef.reporting.report import fmt

from conftest import ROOT, echoef_in_process

pytestmark = pytest.mark.slow

TINY = {
    ("data", "phantom", "n_patients"): 14,
    ("split", "folds"): 2,
    ("cv", "fold_seeds"): {"fold_0": 0, "fold_1": 1},
    ("train", "network", "input_size"): 64,
    ("train", "network", "encoder_depth"): 3,
    # Six epochs, not three: after three, float32 on an AVX2-only CPU left a validation and a test patient with
    # ESV above EDV (not measured), so the counts these tests assert depended on the processor; after six every
    # phantom patient is measured with ESV well below EDV (training 10.6 s against 8.6 s there).
    ("train", "optimisation", "epochs"): 6,
    ("train", "runtime", "processes"): 2,  # DistributedDataParallel on CPU (gloo), launched by the stage's torchrun
    ("train", "runtime", "threads"): 1,
    # float32 everywhere: the same numbers and about the same time on every CPU (bf16 where native is
    # what `auto` picks, and its kernels differ between processors).
    ("train", "runtime", "precision"): "fp32",
    ("infer", "precision"): "fp32",
    ("evaluate", "bootstrap"): 50,
    ("evaluate", "overlays"): 1,
}
# The venv's dvc and python first on PATH, as `make` puts them.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


def run(args, cwd):
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def stages_run(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def set_params(repo: Path, overrides: dict, file: str = "params.yaml") -> None:
    """Change keys given as tuples of nested names in params.yaml (or another YAML file)."""
    params = yaml.safe_load((repo / file).read_text())
    for keys, value in overrides.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    (repo / file).write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    """A git repository holding this project's tracked files with TINY, run and committed."""
    repo = tmp_path_factory.mktemp("repo")
    ENV["PYTHONPATH"] = str(repo)  # the stages import the copy's echoef, which DVC hashed, not this checkout's
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    (repo / "dvc.lock").unlink(missing_ok=True)
    set_params(repo, TINY, "conf/config.yaml")  # what `dvc exp run` composes params.yaml from
    params.compose(repo / "params.yaml", [], repo)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(git + ["commit", "-qm", "tiny"], repo)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(git + ["commit", "-qm", "baseline run"], repo)
    return repo


def read(repo, name):
    return json.loads((repo / name).read_text())


def test_outputs(repo):
    # The headline DVC shows: a few scalars, every interval as two; the full statistics beside it.
    headline, full = read(repo, "metrics/ef.json"), read(repo, "reports/ef_full.json")
    assert set(headline) == {"n", "n_failed", "mae", "mae_low", "mae_high", "bias", "sd", "loa_low", "loa_high", "r", "r_low",
                             "r_high", "mae_uncalibrated", "mae_uncalibrated_low", "mae_uncalibrated_high", "bias_uncalibrated",
                             "r_uncalibrated", "r_uncalibrated_low", "r_uncalibrated_high", "val_mae"}
    post = full["test"]["post"]
    for key in ("mae", "bias", "sd", "loa_low", "loa_high", "r", "r2", "n", "mae_ci", "confusion"):
        assert key in post and key in full["test"]["pre"]
    # Rounded as the reports print them (2 decimals of an EF point, 3 of r).
    assert headline["mae"] == round(post["mae"], 2)
    assert [headline["mae_low"], headline["mae_high"]] == [None if v is None else round(v, 2) for v in post["mae_ci"]]
    assert headline["r"] == (None if post["r"] is None else round(post["r"], 3))
    split = read(repo, "data/split.json")
    assert full["test"]["n_patients"] == headline["n"] + headline["n_failed"] == len(split["test"]) == 3
    interval = full["test"]["interval"]  # 3 validation patients are too few for a 90% interval: none, said so
    assert interval["level"] == 0.9 and interval["half_width"] is None and interval["coverage"] is None
    assert interval["note"] == "3 patients are too few for a 90% interval"
    seg, seg_full = read(repo, "metrics/segmentation.json"), read(repo, "reports/segmentation_full.json")
    assert set(seg) == {"val", "test"} and set(seg["test"]) == {"dice_lv_ed", "dice_lv_es"}
    assert {"dice_lv_ed", "dice_lv_es", "dice_myo_ed", "dice_la_es"} <= set(seg_full["test"])
    classes = pd.read_csv(repo / "plots/ef_classes.csv")
    assert len(classes) == headline["n"] and set(classes.columns) == {"patient", "reference", "predicted"}
    calibrator = read(repo, "models/calibrator.json")
    assert calibrator["fit_set"] == "val" and calibrator["n"] <= len(split["val"])
    assert not set(split["train"]) & set(split["test"]) and split["source"] == "stratified"
    for png in ("ef_scatter", "bland_altman", "calibration", "ef_classes", "overlays"):
        assert (repo / f"plots/{png}.png").stat().st_size > 1000
    table = pd.read_csv(repo / "data/ef.csv")
    assert set(table["set"]) == {"val", "test"} and (table["method"] == "simpson_biplane").all()
    assert not list((repo / "data").rglob("*.resume.pt"))  # the folds' saved training states went with their models


def test_training_in_two_processes(repo):
    log = read(repo, "models/train_log.json")
    epochs = TINY[("train", "optimisation", "epochs")]
    assert log["processes"] == 2 and len(log["members"]) == 1 and len(log["members"][0]["history"]) == epochs
    assert (repo / "metrics/train/metrics.json").is_file()  # written once, by rank 0
    state = torch.load(repo / "models/segmenter.pt", weights_only=True)
    assert state["members"][0]["best_epoch"] == log["members"][0]["best_epoch"] and len(state["state_dicts"]) == 1


def test_every_train_val_patient_has_one_out_of_fold_prediction(repo):
    split, folds = read(repo, "data/split.json"), read(repo, "data/cv/folds.json")
    train_val = sorted(split["train"] + split["val"])
    assert sorted(folds["fold_of"]) == train_val and set(folds["fold_of"].values()) == {0, 1}
    oof = pd.read_csv(repo / "data/ef_cv.csv")
    assert sorted(oof["patient"]) == train_val  # exactly once each
    assert not set(oof["patient"]) & set(split["test"])
    for fold in (0, 1):
        log = read(repo, f"data/cv/fold_{fold}/model/train_log.json")
        held_out = {p for p, f in folds["fold_of"].items() if f == fold}
        sets = read(repo, f"data/cv/sets/fold_{fold}.json")
        seen = set(log["train_patients"]) | set(log["val_patients"])
        assert log["seed"] == fold and log["processes"] == 1 and set(sets["oof"]) == held_out
        assert not seen & held_out  # no model saw its held-out patients, not even to pick its checkpoint
        assert seen | held_out == set(train_val)
        assert set(oof.loc[oof["fold"] == fold, "patient"]) == held_out


def test_cv_metrics_count_every_out_of_fold_patient(repo):
    split, ef_cv = read(repo, "data/split.json"), read(repo, "reports/ef_full.json")["cv"]
    oof = ef_cv["oof"]
    assert ef_cv["folds"] == 2 and read(repo, "metrics/ef_cv.json")["oof"]["mae"] == round(oof["post"]["mae"], 2)
    assert oof["n_patients"] == len(split["train"]) + len(split["val"]) == oof["post"]["n"] + oof["n_failed"]
    for key in ("mae", "bias", "sd", "loa_low", "loa_high", "r", "r2", "mae_ci"):
        assert key in oof["pre"] and key in oof["post"]
    assert {"mae_pre_mean", "mae_pre_std", "mae_post_mean", "per_fold"} <= set(ef_cv["fold_spread"])
    single = read(repo, "reports/ef_full.json")["test"]
    assert ef_cv["test_ensemble"]["n_patients"] == single["n_patients"] == len(split["test"])
    seg = read(repo, "reports/segmentation_cv_full.json")
    assert seg["oof"]["n_patients"] == oof["n_patients"] and "dice_lv_ed" in seg["test_ensemble"]


def test_forced_reruns_give_identical_outputs(repo):
    """Same params, seeds, data and model on CPU: re-running the split and the stages from EF on
    reproduces their files exactly (training repeats bit for bit: test_model; inference is a pure
    function of the model and the frames)."""
    files = ["metrics/ef.json", "metrics/ef_cv.json", "models/calibrator.json", "data/ef.csv", "data/split.json", "data/cv/folds.json"]
    before = {name: (repo / name).read_bytes() for name in files}
    run(["dvc", "repro", "-f", "-s", "split"], repo)
    run(["dvc", "repro", "-f", "--downstream", "ef"], repo)
    assert {name: (repo / name).read_bytes() for name in files} == before
    assert "up to date" in run(["dvc", "status"], repo)


OUTPUTS = ["models/segmenter.pt", "models/calibrator.json", "metrics/ef.json", "data/ef.csv", "plots/overlays.png"]


def snapshot(repo: Path, names=OUTPUTS) -> dict:
    return {name: (repo / name).read_bytes() for name in names}


def test_a_params_typo_leaves_every_previous_output_in_place(repo):
    before = snapshot(repo)
    set_params(repo, {("train", "optimisation", "epoch"): 30})
    result = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, env=ENV)
    assert result.returncode != 0
    assert "params.yaml: unknown key 'train.optimisation.epoch'" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(repo) == before  # DVC never reached the stages that would have deleted them
    run(["git", "checkout", "params.yaml"], repo)
    assert stages_run(run(["dvc", "repro"], repo)) == {"check_params"}  # its marker back; nothing else to do


def test_changing_one_fold_reruns_that_fold_only(repo):
    set_params(repo, {("cv", "fold_seeds"): {"fold_0": 0, "fold_1": 7}})
    ran = stages_run(run(["dvc", "repro", "--dry"], repo))
    assert "train_fold@fold_1" in ran and not {"train_fold@fold_0", "infer_fold@fold_0", "ef_fold@fold_0", "train", "split"} & ran
    run(["git", "checkout", "params.yaml"], repo)


def test_a_bad_parameter_stops_the_stage_with_the_key(repo):
    set_params(repo, {("ef", "method"): "teichholz"})
    result = subprocess.run([sys.executable, "stages/ef.py", "--predictions", "data/predictions", "--ingested", "data/ingested",
                             "--sets", "data/split.json", "--subsets", "test", "--out", "/dev/null"],
                            cwd=repo, capture_output=True, text=True)
    assert result.returncode == 2
    assert "ef.method = 'teichholz' is not allowed" in result.stderr and "Traceback" not in result.stderr
    run(["git", "checkout", "params.yaml"], repo)


def test_nothing_to_do_then_an_experiment_reruns_only_calibration(repo):
    assert "up to date" in run(["dvc", "repro"], repo)
    log = run(["dvc", "exp", "run", "-S", "calibration.method=isotonic"], repo)
    assert stages_run(log) == {"check_params", "calibrate", "evaluate"}  # the check re-runs nothing by itself
    assert read(repo, "models/calibrator.json")["method"] == "isotonic"
    # What changed fits a 160-column terminal laid out for 1,000. The cross-validation columns are left
    # out: the default run has none, this repository has two folds.
    shown = subprocess.run(["dvc", "exp", "show", "--only-changed", "--no-pager", "--drop", r"^(oof\.|test_ensemble\.)"],
                           cwd=repo, capture_output=True, text=True, env={**ENV, "COLUMNS": "1000"}, check=True).stdout
    assert "isotonic" in shown and " mae " in shown and max(map(len, shown.splitlines())) <= 160, shown
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], repo))
    assert {"n", "n_failed", "mae", "bias", "val_mae"} <= set(diff["metrics/ef.json"])  # intervals too, when not null
    assert "bland_altman" in run(["dvc", "plots", "show", "--json"], repo)


def test_a_run_killed_mid_stage_leaves_nothing_a_rerun_trusts(repo):
    # After the experiment above (calibration.method isotonic): calibrate on the out-of-fold predictions.
    set_params(repo, {("calibration", "method"): "linear", ("calibration", "fit_set"): "oof"})
    process = subprocess.Popen(["dvc", "repro"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=ENV, start_new_session=True)
    for line in process.stdout:
        if line.startswith("Running stage 'evaluate'"):
            break
    time.sleep(2.0)  # inside evaluate: it writes metrics, tables and figures one after another
    os.killpg(process.pid, signal.SIGKILL)  # ProcessLookupError here would mean it had finished: no test
    process.wait()
    assert "evaluate" in run(["dvc", "status"], repo)  # DVC knows the stage did not complete
    assert stages_run(run(["dvc", "repro"], repo)) == {"evaluate"}  # the interrupted stage is re-run, not taken as done
    calibrator = read(repo, "models/calibrator.json")
    oof = pd.read_csv(repo / "data/ef_cv.csv")
    assert calibrator["fit_set"] == "oof" and calibrator["n"] == oof["status"].str.startswith("ok").sum()  # measured ones only
    interrupted = snapshot(repo, ["metrics/ef.json", "metrics/ef_cv.json", "plots/ef_scatter.csv", "plots/bland_altman.csv"])
    run(["dvc", "repro", "-f", "-s", "evaluate"], repo)
    assert snapshot(repo, list(interrupted)) == interrupted
    assert "up to date" in run(["dvc", "status"], repo)  # the tests after this one need no particular parameters


def test_a_second_run_at_the_same_time_is_refused_by_dvcs_lock(repo):
    from dvc.repo import Repo

    with Repo(str(repo)).lock:  # what a first `dvc repro` holds while it runs
        result = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, env=ENV)
    assert result.returncode != 0 and "Unable to acquire lock" in result.stderr + result.stdout


def label_maps(folder: Path) -> dict:
    import numpy as np

    return {(file.stem, key): array for file in sorted(folder.glob("*.npz")) for key, array in np.load(file).items()}


def test_the_infer_stage_given_several_model_files_is_cvs_fold_ensemble(repo, tmp_path):
    """infer.py --model A B: the mean softmax of both files' networks, which cv.py computes by itself
    for the test list from the same two fold models; the same file twice is that file alone."""
    import numpy as np

    folds = [str(repo / f"data/cv/fold_{k}/model/segmenter.pt") for k in (0, 1)]

    def infer(models, out):
        return run([sys.executable, str(repo / "stages/infer.py"), "--model", *models, "--ingested", str(repo / "data/ingested"),
                    "--sets", str(repo / "data/split.json"), "--subsets", "test", "--out", str(tmp_path / out),
                    "--dice", str(tmp_path / f"{out}.csv")], repo)

    assert "infer: 2 network(s)" in infer(folds, "both")
    ensemble, both = label_maps(repo / "data/cv_ensemble"), label_maps(tmp_path / "both")
    assert len(ensemble) >= 3 * 4 and set(ensemble) == set(both)
    assert all(np.array_equal(both[key], ensemble[key]) for key in ensemble)
    infer(folds[:1], "one")
    infer(folds[:1] * 2, "twice")
    one, twice = label_maps(tmp_path / "one"), label_maps(tmp_path / "twice")
    assert all(np.array_equal(one[key], twice[key]) for key in one)
    assert any(not np.array_equal(one[key], both[key]) for key in one)  # the second fold's networks count


def test_members_in_parallel_processes_through_the_train_stage(repo, tmp_path):
    # The train stage itself, outside DVC, on the shared run's data: two members (one-frame and
    # paired) trained at once in two processes, their curves replayed into dvclive afterwards.
    set_params(repo, {("train", "network", "members"): 2, ("train", "network", "phases_per_input"): [1, 2],
                      ("train", "runtime", "processes"): 1, ("train", "runtime", "parallel_members"): 2,
                      ("train", "optimisation", "epochs"): 3})  # what is asserted is the bookkeeping, not the fit
    shutil.copy(repo / "params.yaml", tmp_path / "params.yaml")
    run(["git", "checkout", "params.yaml"], repo)
    run([sys.executable, str(repo / "stages/train.py"), "--ingested", str(repo / "data/ingested"), "--sets",
         str(repo / "data/split.json"), "--model", "segmenter.pt", "--train-log", "train_log.json", "--curves", "curves"], tmp_path)
    log = read(tmp_path, "train_log.json")
    assert [(m["seed"], m["phases_per_input"], len(m["history"])) for m in log["members"]] == [(0, 1, 3), (1, 2, 3)]
    state = torch.load(tmp_path / "segmenter.pt", weights_only=True)
    assert len(state["state_dicts"]) == 2 and state["members"][1]["best_epoch"] == log["members"][1]["best_epoch"]
    curves = read(tmp_path, "curves/metrics.json")
    assert curves["step"] == 2 and {"val_dice_lv", "train_loss"} <= set(curves["member_1"])


def test_a_train_stage_killed_mid_way_goes_on_where_it_stopped(repo, tmp_path):
    # Two members, one after another: killed once the second has trained an epoch, the first's saved
    # state is resumed and the second trained again; the model is the uninterrupted run's, bit for bit,
    # the curves hold every epoch, and the saved states go once the model is written.
    set_params(repo, {("train", "network", "members"): 2, ("train", "runtime", "processes"): 1,
                      ("train", "optimisation", "epochs"): 2})  # the fewest epochs that leave one after the kill
    for name in ("whole", "killed"):
        (tmp_path / name).mkdir()
        shutil.copy(repo / "params.yaml", tmp_path / name / "params.yaml")
    run(["git", "checkout", "params.yaml"], repo)
    args = [sys.executable, str(repo / "stages/train.py"), "--ingested", str(repo / "data/ingested"), "--sets",
            str(repo / "data/split.json"), "--model", "segmenter.pt", "--train-log", "train_log.json", "--curves", "curves"]
    run(args, tmp_path / "whole")
    process = subprocess.Popen(args + ["--resume", "state"], cwd=tmp_path / "killed", stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    for line in process.stdout:
        if line.startswith("member 1 epoch 1:"):
            break
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL and not (tmp_path / "killed/segmenter.pt").exists()
    assert len(list((tmp_path / "killed/state").glob("*.resume.pt"))) == 1  # the finished member's
    output = run(args + ["--resume", "state"], tmp_path / "killed")
    assert "resuming training from a saved state after epoch 2 of 2" in output
    whole, resumed = (torch.load(tmp_path / name / "segmenter.pt", weights_only=True)["state_dicts"] for name in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(whole, resumed, strict=True) for k in a)
    log = read(tmp_path / "killed", "train_log.json")
    assert [m["resumed_after_epoch"] for m in log["members"]] == [2, 0]
    assert [m["history"] for m in log["members"]] == [m["history"] for m in read(tmp_path / "whole", "train_log.json")["members"]]
    assert read(tmp_path / "killed", "curves/metrics.json")["step"] == 1
    assert not (tmp_path / "killed/state").exists()


def test_a_run_record_and_the_report(repo, tmp_path):
    from test_docs import remote_resources

    from echoef.reporting import records

    assert echoef_in_process("record", "tiny", "--workspace", repo, "--results", tmp_path, "--command", "dvc repro").returncode == 0
    record = read(tmp_path / "tiny", "record.json")
    assert record["profile"] == "synthetic" and record["train_precision"] == "float32" and record["environment"]["cpu"]["cores"]
    assert {"train", "infer", "evaluate", "train_fold@fold_0", "ef_fold@fold_1", "cv"} <= set(record["stage_seconds"])
    assert all(seconds > 0 for seconds in record["stage_seconds"].values())
    for name in ("metrics/ef.json", "reports/ef_full.json", "params.yaml", "dvc.lock", "models/train_log.json"):
        assert (tmp_path / "tiny" / name).read_bytes() == (repo / name).read_bytes()
    patients = pd.read_csv(tmp_path / "tiny" / "patients.csv")
    split = read(repo, "data/split.json")
    # Validation and test patients by the model, and every train+val patient out of fold.
    assert list(patients.columns) == records.PATIENT_COLUMNS + records.SIGNAL_COLUMNS
    assert patients["set"].value_counts().to_dict() == {"oof": len(split["train"]) + len(split["val"]), "val": len(split["val"]),
                                                        "test": len(split["test"])}
    # Review's signals of every row: the validation and test patients' as inference left them, the out-of-fold
    # ones' as each fold's inference did (one network here: no members' EF spread; tests/test_simpson.py has its numbers).
    signals = pd.concat([pd.read_csv(repo / "data/novelty_features.csv"),
                         *[pd.read_csv(path).assign(set="oof") for path in sorted((repo / "data/cv").glob("fold_*/predictions/review_signals.csv"))]])
    joined = patients.merge(signals, on=["patient", "set"], suffixes=("", "_left"), validate="one_to_one")
    assert len(joined) == len(patients) and patients["uncertainty"].notna().all() and patients["lv_fraction"].notna().all()
    assert len(read(repo, "models/train_log.json")["members"]) == 1 and patients["member_ef_spread"].isna().all()
    for name in ("member_ef_spread", "uncertainty", "lv_fraction"):
        assert np.allclose(joined[name], joined[f"{name}_left"], equal_nan=True), name
    ef = read(repo, "metrics/ef.json")
    row = records.results_table(tmp_path).splitlines()[2]
    assert row.startswith("| tiny | synthetic | 3 (") and f"| {fmt(ef['mae'])} [{fmt(ef['mae_low'])}, {fmt(ef['mae_high'])}] |" in row
    # The prediction interval's coverage on the test list, as evaluate measured it, stated in the record
    # (none here: 3 validation patients make no 90% interval; a record with one shows its coverage).
    interval = read(repo, "reports/ef_full.json")["test"]["interval"]
    assert record["test_prediction_interval"] == interval and interval["n_test"] == ef["n"] and interval["n_validation"] == 3
    assert f"| {fmt(ef['mae_uncalibrated'])} | - |" in row
    write_json(tmp_path / "tiny/record.json", {**record, "test_prediction_interval": {
        **interval, "half_width": 6.25, "coverage": 0.875, "n_test": 48}})
    assert "| 0.88 of 48 at 90% (± 6.2) |" in records.results_table(tmp_path).splitlines()[2]
    # The report: one page with everything inside it; the Markdown beside it links the committed PNGs.
    # A record is evidence: made again only with --replace, then whole; a folder that is not a record is
    # never replaced.
    kept = echoef_in_process("record", "tiny", "--workspace", repo, "--results", tmp_path, "--command", "again")
    assert kept.returncode == 2 and f"{tmp_path / 'tiny'} exists (made {record['created']} at commit {record['commit'][:7]}); " \
        "give another name, or --replace to make it again" in kept.stderr
    assert read(tmp_path / "tiny", "record.json")["command"] == "dvc repro"
    assert echoef_in_process("record", "tiny", "--workspace", repo, "--results", tmp_path, "--command", "again",
                             "--replace").returncode == 0
    assert read(tmp_path / "tiny", "record.json")["command"] == "again"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    refused = echoef_in_process("record", "notes", "--workspace", repo, "--results", tmp_path, "--replace")  # not even so
    assert refused.returncode == 2 and "holds files EchoEF did not write there (mine.txt)" in refused.stderr
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]
    assert remote_resources(repo / "reports/report.html") == []
    assert "data:image/png;base64," in (repo / "reports/report.html").read_text()
    markdown = (repo / "reports/report.md").read_text()
    assert "](../plots/ef_scatter.png)" in markdown
    # Errors by the reference EF's class, as evaluate computed them, in the report (the synthetic cohort's expert
    # masks give the volumes).
    by_class = read(repo, "reports/ef_full.json")["test"]["by_reference_class"]
    assert sum(row["n"] for row in by_class["classes"].values()) == ef["n"] and "esv_error_rho" in by_class
    for name, row in by_class["classes"].items():
        assert f"| {name} | {row['n']} | {fmt(row['bias_post'], sign='+')} | {fmt(row['bias_pre'], sign='+')} |" in markdown


def test_an_exported_bundle_predicts_without_the_run(repo, tmp_path):
    bundle = tmp_path / "bundle"
    paths = {"--model": "models/segmenter.pt", "--calibrator": "models/calibrator.json", "--train-log": "models/train_log.json",
             "--params": "params.yaml", "--metrics": "metrics/ef.json", "--full": "reports/ef_full.json"}
    args = [a for option, path in paths.items() for a in (option, repo / path)]
    assert echoef_in_process("export", "--out", bundle, *args).returncode == 0
    assert sorted(p.name for p in bundle.iterdir()) == [".echoef", "MODEL_CARD.md", "calibrator.json", "model.json", "novelty.json",
                                                         "weights.safetensors"]
    card, ef = (bundle / "MODEL_CARD.md").read_text(), read(repo, "metrics/ef.json")
    assert "Trained on the synthetic cohort only" in card and "CC BY-NC-SA 4.0" in card and "Leclerc" in card
    assert f"EF MAE after calibration {fmt(ef['mae'])} points [95% CI {fmt(ef['mae_low'])}, {fmt(ef['mae_high'])}]" in card
    assert f"{ef['n']} patients measured, {ef['n_failed']} failed" in card
    # A folder of the user's own files is never replaced by a bundle.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused = echoef_in_process("export", "--out", tmp_path / "mine", *args)
    assert refused.returncode == 2 and "holds files EchoEF did not write there (notes.txt)" in refused.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    # Elsewhere, with nothing of the run but the bundle: the same masks as the model file gives.
    patient = repo / "data/phantom/database_nifti" / read(repo, "data/split.json")["test"][0]
    (bundle / "unrelated.txt").write_text("a bundle is its four files; others are left alone")
    result = subprocess.run([str(Path(sys.executable).parent / "echoef"), "predict", str(patient), "--out", "from_bundle",
                             "--model", str(bundle)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode in (0, 1) and "trained on the synthetic cohort only" in result.stderr, result.stderr
    echoef_in_process("predict", patient, "--out", tmp_path / "from_file", "--model", repo / "models/segmenter.pt",
                      "--calibrator", repo / "models/calibrator.json")
    rows = [pd.read_csv(tmp_path / name / "summary.csv").iloc[0] for name in ("from_bundle", "from_file")]
    assert rows[0]["status"] == rows[1]["status"]
    assert rows[0]["edv_ml"] == rows[1]["edv_ml"] or (pd.isna(rows[0]["edv_ml"]) and pd.isna(rows[1]["edv_ml"]))
    page = tmp_path / "from_bundle" / patient.name / f"{patient.name}_report.html"
    from test_docs import remote_resources

    assert remote_resources(page) == [] and "Simpson" in page.read_text()


def test_the_gpu_command_rehearsed_on_cpu_where_python_is_not_on_path(repo, tmp_path):
    """benchmarks/gpu_record.py as on a bare machine (no `python` and no `dvc` on PATH): one experiment
    through `dvc exp run`, its numbers and its record left in OUT, the lock gone; a second copy on the
    same OUT while the lock is held is refused."""
    bare = {key: value for key, value in ENV.items() if key != "PYTHONPATH"} | {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)}
    script = [sys.executable, str(repo / "benchmarks/gpu_record.py"), "--allow-cpu", "--profile", "synthetic"]
    done = subprocess.run([*script, "--out", str(tmp_path / "gpu"), "--name", "rehearsal", "--deadline-s", "300"], cwd=tmp_path,
                          env=bare, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    steps = {step["step"]: step for step in json.loads((tmp_path / "gpu/status.json").read_text())["steps"]}
    assert steps["python"]["ok"] and steps["dvc exp run"] == {**steps["dvc exp run"], "status": 0, "timed_out": False}
    assert f"python on the stages' PATH runs in: {sys.prefix}" in done.stdout
    record = json.loads((tmp_path / "gpu/results/rehearsal/record.json").read_text())
    assert record["command"].startswith("python3 benchmarks/gpu_record.py") and (tmp_path / "gpu/run/metrics/ef.json").is_file()
    assert not (tmp_path / "gpu/.lock").exists()
    (tmp_path / "gpu/.lock").write_text("1")
    assert subprocess.run([*script, "--out", str(tmp_path / "gpu")], env=bare, capture_output=True).returncode == 2

    assert "up to date" in run(["dvc", "status"], repo)


def gpu_record():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_record", ROOT / "benchmarks/gpu_record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_command_never_trains_more_than_two_networks_at_once(tmp_path):
    module = gpu_record()
    log = module.Log(tmp_path)
    assert module.capped(12, log) == ["train.runtime.parallel_members=2"]
    assert module.capped(2, log) == [] and module.capped(1, log) == []


def test_the_gpu_commands_stages_save_the_training_every_minute_unless_told_otherwise(tmp_path, monkeypatch):
    from echoef.model import resume

    module = gpu_record()
    monkeypatch.delenv(resume.EVERY_S_VARIABLE, raising=False)
    env = module.stage_environment(tmp_path)
    assert module.SAVE_EVERY_VARIABLE == resume.EVERY_S_VARIABLE and env[resume.EVERY_S_VARIABLE] == "60"
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "bin")
    monkeypatch.setattr(os, "environ", env)
    assert resume.save_interval_s() == 60.0
    monkeypatch.setitem(os.environ, resume.EVERY_S_VARIABLE, "5")
    assert module.stage_environment(tmp_path)[resume.EVERY_S_VARIABLE] == "5" and resume.save_interval_s() == 5.0
    for wrong in ("-1", "nan", "inf", "a minute"):
        monkeypatch.setitem(os.environ, resume.EVERY_S_VARIABLE, wrong)
        with pytest.warns(UserWarning, match="not a number of seconds"):
            assert resume.save_interval_s() == resume.RESUME_EVERY_S


def test_the_gpu_commands_deadline_stops_the_whole_process_tree(tmp_path):
    """A run past its deadline: SIGTERM to its process group (children included), its output logged
    up to then, the status it ended with; a grandchild left running would keep a GPU busy."""
    module = gpu_record()
    log = module.Log(tmp_path)
    child = "import subprocess, sys, time; p = subprocess.Popen(['sleep', '120']); print(p.pid, flush=True); time.sleep(120)"
    start = time.monotonic()
    status, timed_out = module.run_logged([sys.executable, "-c", child], log, ENV, tmp_path, time.monotonic() + 2)
    assert timed_out and status != 0 and time.monotonic() - start < 30
    grandchild = int((tmp_path / "gpu_record.log").read_text().split("\n")[1].split("]   ")[1])
    time.sleep(0.5)
    assert not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]
    assert "deadline reached" in (tmp_path / "gpu_record.log").read_text()


def test_the_gpu_command_installs_only_what_the_machine_lacks(tmp_path, monkeypatch):
    """A pin the machine lacks is installed from the wheels, at its pin; one it has at another version is
    kept and logged; one left out by --leave is not installed; with no wheels folder a missing pin is
    a failure named in the log, not a half-installed machine."""
    module = gpu_record()
    pins = module.pinned_requirements(ROOT / "requirements.txt")
    assert ("dvc", "3.67.1") in pins and not {"torch", "torchvision"} & {name for name, _ in pins}
    machine = {module.distribution_name(name): version for name, version in pins}
    machine |= {"numpy": "2.5.2", "pillow": None}
    del machine["simpleitk"], machine["av"], machine["dvc"]
    commands = []
    monkeypatch.setattr(module, "run_logged", lambda command, *rest, **named: commands.append(command) or (0, False))
    log = module.Log(tmp_path)
    assert module.install_lacking(tmp_path / "wheels", ("av",), machine, log, ENV) == 0
    assert commands[0][-4:] == ["--find-links", str(tmp_path / "wheels"), "SimpleITK==2.5.7", "dvc==3.67.1"]
    step = json.loads((tmp_path / "status.json").read_text())["steps"][-1]
    assert sorted(step["installed"]) == ["SimpleITK==2.5.7", "dvc==3.67.1"] and step["left"] == ["av==18.1.0"]
    assert {"name": "numpy", "machine": "2.5.2", "pinned": "2.4.6"} in step["kept"]
    logged = (tmp_path / "gpu_record.log").read_text()
    assert "kept the machine's numpy 2.5.2 (requirements.txt pins 2.4.6)" in logged
    assert "kept the machine's pillow (version not known) (requirements.txt pins 13.0.0)" in logged
    commands.clear()
    assert module.install_lacking(None, (), machine, log, ENV) == 1 and commands == []
    assert "missing, and no --wheels to install them from: SimpleITK==2.5.7, av==18.1.0, dvc==3.67.1" in (tmp_path / "gpu_record.log").read_text()


def gpu_wheels():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "benchmarks/gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_wheels_are_the_closure_of_what_the_machine_lacks():
    """On a hand-made graph: needs followed through extras and markers evaluated for the machine's
    Python, a cycle ending, torch never carried, a need the machine has at an accepted version (or an
    unlisted one) not carried, one at a version it does not accept carried; the versions are those
    installed here, and a mismatch is an error."""
    module = gpu_wheels()
    graph = {"a": ("1.0", ["b>=2", "c; python_version < '3.12'", "d[x]", "torch>=2", "e"]), "b": ("2.1", []),
             "c": ("1.0", []), "d": ("3.0", ["f; extra == 'x'", "g; extra == 'y'"]), "e": ("1.0", []), "f": ("1.0", ["a"]),
             "g": ("1.0", [])}

    def metadata_of(name):
        return graph[module.distribution_name(name)]

    def needed(python, machine, missing=(("a", "1.0"),)):
        return module.needed(list(missing), machine, module.target_environment(python), metadata_of)

    assert needed("3.12", {}) == {"a": "1.0", "b": "2.1", "d": "3.0", "e": "1.0", "f": "1.0"}
    assert needed("3.11", {}) == {"a": "1.0", "b": "2.1", "c": "1.0", "d": "3.0", "e": "1.0", "f": "1.0"}
    assert needed("3.12", {"b": "2.5", "e": None}) == {"a": "1.0", "d": "3.0", "f": "1.0"}
    assert needed("3.12", {"b": "1.9"})["b"] == "2.1"
    with pytest.raises(SystemExit, match="a 1.0 is installed here, 2.0 is wanted"):
        needed("3.12", {}, missing=(("a", "2.0"),))
    graph["e"] = ("0.9", [])
    graph["a"] = ("1.0", ["e>=1"])
    with pytest.raises(SystemExit, match="a needs e>=1, 0.9 is installed here"):
        needed("3.12", {})


def test_the_gpu_wheels_of_this_project_for_a_machine_with_torch_alone(tmp_path):
    """The real requirements, read from what `make setup` installed: dvc and SimpleITK are carried with
    what they need, torch never; a machine that lists numpy keeps its own."""
    module = gpu_wheels()
    missing, _, _ = module.lacking(module.pinned_requirements(ROOT / "requirements.txt"), module.read_installed(None))
    carry = module.needed(missing, module.read_installed(None), module.target_environment("3.12"))
    assert {"dvc", "simpleitk", "segmentation-models-pytorch", "dvc-data", "scmrepo", "numpy"} <= set(carry)
    assert not {"torch", "torchvision"} & set(carry)
    (tmp_path / "freeze.txt").write_text("torch==2.11.0\nnumpy==2.5.2\n# a comment\npandas\n")
    machine = module.read_installed(tmp_path / "freeze.txt")
    assert machine == {"torch": "2.11.0", "numpy": "2.5.2", "pandas": None}
    missing, kept, _ = module.lacking(module.pinned_requirements(ROOT / "requirements.txt"), machine)
    assert ("numpy", "2.5.2", "2.4.6") in kept and "numpy" not in module.needed(missing, machine, module.target_environment("3.12"))
