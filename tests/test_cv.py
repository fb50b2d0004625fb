"""K-fold cross-validation end to end: the tiny configuration with K = 2."""

import json

import pandas as pd
import pytest

from test_pipeline import TINY, make_repo, run, set_params

K2 = {**TINY, ("data", "phantom", "n_patients"): 14, ("split", "folds"): 2, ("cv", "fold_seeds"): {"0": 0, "1": 1}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("cv"), K2)


def test_every_train_val_patient_has_one_out_of_fold_prediction(repo):
    split = json.loads((repo / "data/split.json").read_text())
    folds = json.loads((repo / "data/cv/folds.json").read_text())
    train_val = sorted(split["train"] + split["val"])
    assert sorted(folds["fold_of"]) == train_val and set(folds["fold_of"].values()) == {0, 1}
    oof = pd.read_csv(repo / "data/ef_cv.csv")
    assert sorted(oof["patient"]) == train_val  # exactly once each
    assert not set(oof["patient"]) & set(split["test"])
    for fold in (0, 1):
        log = json.loads((repo / f"data/cv/fold_{fold}/model/train_log.json").read_text())
        held_out = {p for p, f in folds["fold_of"].items() if f == fold}
        seen = set(log["train_patients"]) | set(log["val_patients"])
        assert log["fold"] == fold and log["seed"] == fold
        assert not seen & held_out  # no model saw its held-out patients, not even to pick its checkpoint
        assert seen | held_out == set(train_val)
        assert set(oof.loc[oof["fold"] == fold, "patient"]) == held_out


def test_cv_metrics_count_every_out_of_fold_patient(repo):
    split = json.loads((repo / "data/split.json").read_text())
    ef_cv = json.loads((repo / "metrics/ef_cv.json").read_text())
    oof = ef_cv["oof"]
    assert ef_cv["folds"] == 2
    assert oof["n_patients"] == len(split["train"]) + len(split["val"]) == oof["post"]["n"] + oof["n_failed"]
    for key in ("mae", "bias", "sd", "loa_low", "loa_high", "r", "r2", "mae_ci"):
        assert key in oof["pre"] and key in oof["post"]
    assert {"mae_pre_mean", "mae_pre_std", "mae_post_mean", "per_fold"} <= set(ef_cv["fold_spread"])
    single = json.loads((repo / "metrics/ef.json").read_text())["test"]
    assert ef_cv["test_ensemble"]["n_patients"] == single["n_patients"] == len(split["test"])
    seg = json.loads((repo / "metrics/segmentation_cv.json").read_text())
    assert seg["oof"]["n_patients"] == oof["n_patients"] and "dice_lv_ed" in seg["test_ensemble"]


def test_changing_one_fold_reruns_that_fold_only(repo):
    assert "up to date" in run(["dvc", "repro"], repo)
    set_params(repo, {("cv", "fold_seeds"): {"0": 0, "1": 7}})
    dry = run(["dvc", "repro", "--dry"], repo)
    ran = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    assert "train_fold@1" in ran and not {"train_fold@0", "infer_fold@0", "ef_fold@0", "train", "split"} & ran


def test_calibration_on_out_of_fold_predictions(repo):
    set_params(repo, {("cv", "fold_seeds"): {"0": 0, "1": 1}, ("calibration", "fit_set"): "oof"})
    run(["dvc", "repro"], repo)
    calibrator = json.loads((repo / "models/calibrator.json").read_text())
    oof = pd.read_csv(repo / "data/ef_cv.csv")
    assert calibrator["fit_set"] == "oof" and calibrator["n"] == oof["status"].str.startswith("ok").sum()  # measured ones only
