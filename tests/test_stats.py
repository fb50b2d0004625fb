import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from echoef import params
from echoef.io.atomic import read_json, write_json
from echoef.measure import ef
from echoef.model import geometry
from echoef.stats import agreement, calibration, split

from conftest import ROOT

PRED = np.array([55.0, 60, 35, 48, 70, 25, 52, 61])
REF = np.array([52.0, 63, 30, 50, 66, 31, 50, 58])


def test_summary_against_independent_numbers():
    s = agreement.summary(PRED, REF)
    diff = PRED - REF
    assert s["n"] == 8 and s["bias"] == pytest.approx(0.75)
    assert s["mae"] == pytest.approx(3.5) and s["sd"] == pytest.approx(np.std(diff, ddof=1))
    assert s["loa_high"] == pytest.approx(0.75 + 1.96 * np.std(diff, ddof=1))
    assert s["r"] == pytest.approx(stats.pearsonr(PRED, REF)[0])
    assert s["r2"] == pytest.approx(1 - ((REF - PRED) ** 2).sum() / ((REF - REF.mean()) ** 2).sum())
    assert s["within_5"] == pytest.approx(7 / 8)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    a = agreement.bootstrap_ci(PRED, REF, 500, seed=1)
    assert a == agreement.bootstrap_ci(PRED, REF, 500, seed=1)
    assert a["mae_ci"][0] < 3.5 < a["mae_ci"][1]


def test_classification_counts():
    c = agreement.classification(np.array([30.0, 45, 55, 35]), np.array([35.0, 38, 60, 45]))
    assert c["confusion"] == [[1, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert c["sensitivity_ef_lt_40"] == 0.5 and c["specificity_ef_lt_40"] == 0.5


def test_calibrators():
    lin = calibration.fit(PRED, 2 * PRED - 10, "linear", (5, 95), "val")
    assert lin["slope"] == pytest.approx(2) and lin["intercept"] == pytest.approx(-10)
    assert calibration.apply(lin, np.array([40.0, 60.0, np.nan]))[:2].tolist() == [70, 95]  # clipped
    iso = calibration.fit(PRED, REF, "isotonic", (5, 95), "val")
    out = calibration.apply(iso, PRED)
    assert np.all(np.diff(out[np.argsort(PRED)]) >= 0)
    assert calibration.apply(calibration.fit(PRED, REF, "none", (0, 100), "val"), PRED).tolist() == PRED.tolist()


def test_letterbox_keeps_the_physical_aspect():
    box = geometry.letterbox((224, 224), (0.535, 0.755), 128)
    assert (box.height, box.width) == (91, 128) and box.top == 18
    label = np.zeros((224, 224), dtype=np.uint8)
    label[60:150, 80:140] = 1
    grid = geometry.labels_to_grid(label, box)
    scores = np.stack([(grid == 0).numpy(), (grid == 1).numpy()]).astype(np.float32)
    back = geometry.to_native(__import__("torch").as_tensor(scores), box).argmax(0).numpy()
    assert back.shape == (224, 224) and (back == label).mean() > 0.99


def test_params_errors_name_the_key():
    good = yaml.safe_load(Path("params.yaml").read_text())

    def with_train(**groups):
        train = {k: {**v, **groups.get(k, {})} if isinstance(v, dict) else groups.get(k, v) for k, v in good["train"].items()}
        return {**good, "train": train}

    cases = [
        (with_train(optimisation={"epochs": "ten"}), "train.optimisation.epochs = 'ten' must be int"),
        (with_train(optimisation={"epoch": 3}), "unknown key 'train.optimisation.epoch'; allowed here: epochs, "),
        ({**good, "calibration": {**good["calibration"], "method": "cubic"}}, "calibration.method = 'cubic' is not allowed.*'linear'"),
        (with_train(optimisation={"batch_size": 7}, network={"phases_per_input": 2}),
         "train.optimisation.batch_size = 7 counts frames.*phases_per_input = 2"),
        (with_train(optimisation={"batch_size": 7}, network={"members": 2, "phases_per_input": [1, 2]}),
         "train.optimisation.batch_size = 7 counts frames.*phases_per_input = \\[1, 2\\]"),
        (with_train(network={"members": 2}, runtime={"parallel_members": 2, "processes": 2}),
         "parallel_members > 1 .* cannot be combined with train.runtime.processes > 1"),
        (with_train(network={"members": 3, "phases_per_input": [1, 2]}), "phases_per_input = \\[1, 2\\] has 2 entries but train.network.members = 3"),
        (with_train(network={"members": 2, "phases_per_input": [1, 3]}), "train.network.phases_per_input = \\[1, 3\\] must be 1, 2, or a list"),
        (with_train(network={"phases_per_input": 1.0}), "train.network.phases_per_input = 1.0 must be 1, 2, or a list"),
        ({**good, "infer": {**good["infer"], "precision": "fp16"}}, "infer.precision = 'fp16' is not allowed.*'bf16'"),
        ({**good, "split": {**good["split"], "folds": 2}},
         "cv.fold_seeds has 0 entries but split.folds = 2; use -S '\\+\\+cv.fold_seeds=\\{fold_0:0,fold_1:1\\}'"),
        ({key: value for key, value in good.items() if key != "ef"}, "missing key 'ef'"),
    ]
    for mapping, message in cases:
        with pytest.raises(params.ParamsError, match=message):
            params.build(params.Params, mapping)
    mixed = params.build(params.Params, with_train(network={"members": 2, "phases_per_input": [2, 1]})).train.network
    assert mixed.member_phases() == [2, 1] and dataclasses.replace(mixed, phases_per_input=2).member_phases() == [2, 2]
    loaded = params.load()
    assert isinstance(loaded.train.optimisation, params.Optimisation) and loaded.train.optimisation.epochs == good["train"]["optimisation"]["epochs"]


def test_stratified_split_covers_everyone_once():
    cohort = pd.DataFrame({"patient": [f"p{i:03d}" for i in range(60)], "ef_ref": np.linspace(15, 80, 60),
                           "quality_2ch": ["Good", "Medium", "Poor"] * 20})
    s = split.assign(cohort, None, 0.2, 0.2, seed=0)
    assert sorted(s["train"] + s["val"] + s["test"]) == sorted(cohort["patient"])
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (36, 12, 12)
    lists = split.assign(cohort, {"train": ["p000", "p001"], "val": ["p002"], "test": ["p003", "zzz"]}, 0.2, 0.2, 0)
    assert lists["test"] == ["p003"] and len(lists["train"]) == 58
    with pytest.raises(split.SplitError, match="val set empty"):
        split.assign(cohort, {"train": ["p000"], "val": [], "test": ["p003"]}, 0.2, 0.2, 0)


def test_paired_difference_of_two_runs():
    err_a, err_b = np.abs(PRED - REF), np.abs(PRED + 1 - REF)  # b reads every EF one point higher
    out = agreement.paired_difference(err_a, err_b, 2000, seed=0)
    assert out["n"] == 8 and out["mean"] == pytest.approx(0.25)  # five patients 1 point worse, three 1 better
    assert out["ci"] == [-0.5, 1.0] and out == agreement.paired_difference(err_a, err_b, 2000, seed=0)
    assert agreement.paired_difference(err_a, err_a, 100, seed=0)["ci"] == [0.0, 0.0]
    assert np.isnan(agreement.paired_difference(err_a, err_b, 0, seed=0)["ci"]).all()


def test_the_adoption_rule_needs_an_interval_wholly_below_zero():
    below, touching, none = {"ci": [-0.4, -0.01]}, {"ci": [-0.4, 0.0]}, {"ci": [float("nan"), float("nan")]}
    assert agreement.wholly_below_zero(below)
    assert not any(agreement.wholly_below_zero(row) for row in (touching, none, {"ci": [None, None]}, {}))
    assert agreement.all_wholly_below_zero([below, below]) and not agreement.all_wholly_below_zero([below, touching])
    assert not agreement.all_wholly_below_zero([])  # nothing judged, nothing adopted
    rows = {"current": {"mae": 4.5, "minus_current": {"ci": [0.0, 0.0]}},
            "worse but lower": {"mae": 4.0, "minus_current": touching},
            "better": {"mae": 4.3, "minus_current": below}, "best": {"mae": 4.2, "minus_current": {"ci": [-0.5, -0.1]}}}
    assert agreement.rule_choice("current", rows) == "best"  # the lowest MAE among those the rule admits
    assert agreement.rule_choice("current", {k: rows[k] for k in ("current", "worse but lower")}) == "current"


def test_proportional_bias_against_scipy():
    out = agreement.proportional_bias(PRED, REF)
    fit = stats.linregress((PRED + REF) / 2, PRED - REF)
    half = stats.t.ppf(0.975, len(PRED) - 2) * fit.stderr
    assert out["prop_bias_slope"] == pytest.approx(fit.slope)
    assert out["prop_bias_slope_ci"] == pytest.approx([fit.slope - half, fit.slope + half])


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    from echoef.io.atomic import read_json, write_json

    path = tmp_path / "metrics.json"
    write_json(path, {"mae": 4.0, "ci": [float("nan"), 1.0]})
    assert read_json(path) == {"mae": 4.0, "ci": [None, 1.0]}
    with pytest.raises(TypeError):
        write_json(path, {"mae": object()})  # fails while serialising, after the temporary file exists
    assert read_json(path) == {"mae": 4.0, "ci": [None, 1.0]}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_too_small_a_fit_set_is_reported_not_fitted():
    c = calibration.fit(np.array([40.0]), np.array([45.0]), "linear", (5, 95), "val")
    assert c["method"] == "none" and c["requested_method"] == "linear" and "only 1" in c["note"]
    assert calibration.apply(c, np.array([40.0, 99.0])).tolist() == [40.0, 95.0]
    out, calibrators = calibration.cross_fit(np.array([30.0, 50, np.nan, np.nan]), np.array([32.0, 52, 40, 60]),
                                             np.array([0, 0, 1, 1]), "linear", (5, 95))
    assert [c["method"] for c in calibrators] == ["none", "none"] and np.isnan(out[2:]).all()


def test_cross_validation_report_numbers():
    oof = pd.DataFrame({"patient": list("abcdefgh"), "fold": [0, 0, 0, 0, 1, 1, 1, 1], "ef": PRED, "ef_ref": REF,
                        "status": ["ok"] * 7 + ["no_basal_chord:2CH_ED"]})
    oof.loc[7, "ef"] = np.nan
    calibrator = {"method": "none", "ef_range": [0, 100]}
    report = agreement.cross_validation_report(oof, oof.iloc[:3], calibrator, 0, 0)
    assert report["folds"] == 2 and report["oof"]["n_patients"] == 8 and report["oof"]["n_failed"] == 1
    assert [f["n"] for f in report["fold_spread"]["per_fold"]] == [4, 3]
    fold_mae = [np.abs(PRED[:4] - REF[:4]).mean(), np.abs(PRED[4:7] - REF[4:7]).mean()]
    assert report["fold_spread"]["mae_pre_mean"] == pytest.approx(np.mean(fold_mae))
    assert report["fold_spread"]["mae_pre_std"] == pytest.approx(np.std(fold_mae))
    assert report["oof"]["post"]["mae"] == pytest.approx(np.abs(PRED[:7] - REF[:7]).mean())
    assert report["test_ensemble"]["n_patients"] == 3
    assert agreement.cross_validation_report(oof.iloc[:0], oof.iloc[:0], calibrator, 0, 0) == {"folds": 0}


def test_notebook_area_length_report_cross_validates_inside_the_set():
    rows = pd.DataFrame({"ef_seed_scoring": PRED + 4, "ef_ref": REF})
    rows.loc[3, "ef_seed_scoring"] = np.nan
    report = agreement.notebook_area_length_report(rows, 0)
    keep = np.arange(8) != 3
    x, y = PRED[keep] + 4, REF[keep]
    assert report["n_failed"] == 1 and report["pre"]["mae"] == pytest.approx(np.abs(x - y).mean())
    # Independent cross-validation: the same seeded 5 folds, a least-squares line fitted without each.
    from sklearn.model_selection import KFold
    calibrated = np.empty(7)
    for fit, held in KFold(5, shuffle=True, random_state=0).split(x):
        slope, intercept = np.polyfit(x[fit], y[fit], 1)
        calibrated[held] = intercept + slope * x[held]
    assert report["post"]["mae"] == pytest.approx(np.abs(calibrated - y).mean())
    assert report["post"]["mae"] != pytest.approx(report["pre"]["mae"])


def test_split_conformal_interval_covers_new_patients_at_its_level():
    # Residuals of 200 calibration patients and 20,000 new ones from one distribution: the interval
    # of the 90% level (the 181st smallest absolute residual of 200) holds about 90% of the new ones.
    rng = np.random.default_rng(0)
    reference = rng.uniform(20, 70, 20_200)
    calibrated = reference + rng.normal(0, 5, 20_200)
    fitted = calibration.conformal_half_width(calibrated[:200], reference[:200], 0.9)
    residuals = np.sort(np.abs(calibrated[:200] - reference[:200]))
    assert fitted == {"level": 0.9, "half_width": residuals[180], "n": 200}
    report = calibration.interval_report({"interval": fitted}, calibrated[200:], reference[200:])
    assert abs(report["coverage"] - 0.9) < 0.03 and report["interval_width"] <= 2 * fitted["half_width"]
    assert calibration.conformal_half_width(calibrated[:5], reference[:5], 0.9)["half_width"] is None  # ceil(6 * 0.9) = 6 > 5
    assert calibration.interval_report({"interval": {"half_width": None}}, calibrated, reference)["coverage"] is None


def ridge_rows(n: int, seed: int) -> pd.DataFrame:
    """EF rows with every ridge measure, and a reference EF that is linear in the biplane EF plus the
    views' disagreement (ef_2ch - ef_4ch), with noise of SD 0.5."""
    rng = np.random.default_rng(seed)
    ef_pred = rng.uniform(20, 75, n)
    edv = rng.uniform(60, 200, n)
    rows = pd.DataFrame({"ef": ef_pred, "edv_ml": edv, "esv_ml": edv * (1 - ef_pred / 100) + rng.normal(0, 3, n),
                         "ef_2ch": ef_pred + rng.normal(0, 4, n), "ef_4ch": ef_pred + rng.normal(0, 4, n),
                         **{name: rng.normal(80, 8, n) for name in ef.VIEW_COLUMNS if name.startswith("long_axis")}})
    rows["ef_ref"] = 6 + 0.85 * rows["ef"] + 0.4 * (rows["ef_2ch"] - rows["ef_4ch"]) + rng.normal(0, 0.5, n)
    return rows


def test_the_ridge_calibrator_recovers_a_linear_plus_feature_relation():
    rows = ridge_rows(300, 0)
    fitted = calibration.fit(rows["ef"], rows["ef_ref"], "ridge", (0, 100), "oof", rows)
    weights = fitted["features"]
    assert fitted["method"] == "ridge" and fitted["slope"] == pytest.approx(0.85, abs=0.03)
    assert weights["ef_2ch"] == pytest.approx(0.4, abs=0.02) and weights["ef_4ch"] == pytest.approx(-0.4, abs=0.02)
    assert max(abs(weights[name]) for name in weights if name not in ("ef_2ch", "ef_4ch")) < 0.02
    # The same penalised least squares solved independently: the penalty as extra rows, on the
    # standardised measures only, intercept and slope unpenalised.
    x = rows[list(calibration.RIDGE_FEATURES)].to_numpy()
    z = (x - x.mean(0)) / x.std(0)
    design = np.vstack([np.column_stack([np.ones(len(rows)), rows["ef"], z]),
                        np.column_stack([np.zeros((z.shape[1], 2)), np.sqrt(fitted["alpha"]) * np.eye(z.shape[1])])])
    solution = np.linalg.lstsq(design, np.concatenate([rows["ef_ref"], np.zeros(z.shape[1])]), rcond=None)[0]
    assert fitted["slope"] == pytest.approx(solution[1], abs=1e-9)
    np.testing.assert_allclose(list(weights.values()), solution[2:] / x.std(0), atol=1e-9)
    applied = calibration.apply(fitted, rows["ef"], rows)
    np.testing.assert_allclose(applied, solution[0] + solution[1] * rows["ef"] + z @ solution[2:], atol=1e-9)
    # Out of sample, cross-fitted on five folds: well below the linear calibrator, which cannot see the views.
    folds = np.arange(len(rows)) % 5
    ridge, _ = calibration.cross_fit(rows["ef"], rows["ef_ref"], folds, "ridge", (0, 100), rows)
    linear, _ = calibration.cross_fit(rows["ef"], rows["ef_ref"], folds, "linear", (0, 100), rows)
    assert np.abs(ridge - rows["ef_ref"]).mean() < 0.6 < 0.5 * np.abs(linear - rows["ef_ref"]).mean()


def test_the_ridge_calibrator_says_what_it_needs():
    rows = ridge_rows(40, 1)
    with pytest.raises(ValueError, match="needs the EF table's columns ef_2ch"):
        calibration.fit(rows["ef"], rows["ef_ref"], "ridge", (0, 100), "oof", rows.drop(columns="ef_2ch"))
    few = calibration.fit(rows["ef"][:10], rows["ef_ref"][:10], "ridge", (0, 100), "val", rows[:10])
    assert few["method"] == "linear" and few["requested_method"] == "ridge"  # 10 patients: linear, said so
    fitted = calibration.fit(rows["ef"], rows["ef_ref"], "ridge", (0, 100), "oof", rows)
    calibration.validate(json.loads(json.dumps(fitted)))  # as read back from its file
    with pytest.raises(ValueError, match="needs the EF table's columns"):
        calibration.apply(fitted, rows["ef"])
    one = {name: [np.nan if name == "ef_4ch" else 50.0] for name in calibration.RIDGE_FEATURES}
    assert np.isnan(calibration.apply(fitted, [50.0], one)).all()  # a patient without a measure gets no calibrated EF


def test_the_calibrate_stage_never_reads_a_test_row(tmp_path):
    params.compose(tmp_path / "params.yaml", ["calibration.method=ridge", "calibration.fit_set=oof", "split.folds=2",
                                              "++cv.fold_seeds={fold_0:0,fold_1:1}"], ROOT)
    table = ridge_rows(60, 2).assign(patient=[f"p{i}" for i in range(60)], method="simpson_biplane", status="ok",
                                     set=["val"] * 30 + ["test"] * 30)
    oof = ridge_rows(120, 3).assign(patient=[f"q{i}" for i in range(120)], status="ok", fold=np.arange(120) % 2)
    oof.to_csv(tmp_path / "oof.csv", index=False)
    from echoef.model import novelty

    features = pd.DataFrame({name: np.random.default_rng(1).normal(1, 0.1, 60) for name in novelty.FEATURES}).assign(
        patient=table["patient"], set=table["set"])
    fitted, references = [], []
    for scrambled in (table, table.assign(**{c: np.where(table["set"] == "test", -table[c], table[c])
                                             for c in ["ef", "ef_ref", *calibration.RIDGE_FEATURES]})):
        scrambled.to_csv(tmp_path / "ef.csv", index=False)
        features.assign(**{n: np.where(features["set"] == "test", -features[n], features[n]) for n in novelty.FEATURES}
                        if len(fitted) else {}).to_csv(tmp_path / "novelty.csv", index=False)
        subprocess.run([sys.executable, ROOT / "stages/calibrate.py", "--ef", "ef.csv", "--oof", "oof.csv", "--out", "calibrator.json",
                        "--novelty-features", "novelty.csv", "--novelty-out", "novelty.json"], cwd=tmp_path, check=True, capture_output=True)
        fitted.append(json.loads((tmp_path / "calibrator.json").read_text()))
        references.append(json.loads((tmp_path / "novelty.json").read_text()))
    assert fitted[0] == fitted[1] and fitted[0]["method"] == "ridge" and fitted[0]["n"] == 120
    # The unlike-training reference too is fitted on the validation rows alone (the test rows' share is only reported).
    assert {k: v for k, v in references[0].items() if k != "test_flagged"} == {k: v for k, v in references[1].items() if k != "test_flagged"}
    assert references[0]["n_validation"] == 30 and references[0]["validation_flagged"] == pytest.approx(0.05, abs=0.04)


def test_a_calibrators_fingerprint_follows_every_value_but_its_own(tmp_path):
    fitted = calibration.fit(PRED, REF, "linear", (5, 95), "val")
    stamped = {**fitted, "fingerprint": calibration.fingerprint(fitted)}
    assert calibration.fingerprint(stamped) == stamped["fingerprint"] and len(stamped["fingerprint"]) == 8
    assert calibration.fingerprint({**fitted, "slope": fitted["slope"] + 1e-9}) != stamped["fingerprint"]
    assert calibration.fingerprint(dict(reversed(list(fitted.items())))) == stamped["fingerprint"]  # key order aside
    # A fit on no patient has NaN statistics, stored as null: read back, it still matches its fingerprint.
    empty = {**calibration.fit(PRED[:0], REF[:0], "linear", (5, 95), "val"), "val_mae_before": float("nan")}
    write_json(tmp_path / "calibrator.json", {**empty, "fingerprint": calibration.fingerprint(empty)})
    stored = read_json(tmp_path / "calibrator.json")
    assert stored["val_mae_before"] is None and calibration.fingerprint(stored) == stored["fingerprint"]


def test_the_calibrator_comparison_pairs_ridge_with_linear_on_the_same_folds():
    rows = ridge_rows(200, 4).assign(fold=np.arange(200) % 5)
    compared = agreement.calibrator_comparison(rows, (0, 100), 500, 0)
    linear, _ = calibration.cross_fit(rows["ef"], rows["ef_ref"], rows["fold"], "linear", (0, 100))
    ridge, _ = calibration.cross_fit(rows["ef"], rows["ef_ref"], rows["fold"], "ridge", (0, 100), rows)
    difference = np.abs(ridge - rows["ef_ref"]) - np.abs(linear - rows["ef_ref"])
    assert compared["mae"]["linear"] == pytest.approx(np.abs(linear - rows["ef_ref"]).mean()) and compared["ridge_folds"] == 5
    paired = compared["ridge_minus_linear"]
    assert paired["mean"] == pytest.approx(difference.mean()) and paired["ci"][0] < paired["mean"] < paired["ci"][1] < 0
    single_plane = agreement.calibrator_comparison(rows.assign(ef_4ch=np.nan), (0, 100), 500, 0)
    assert "ridge" not in single_plane["mae"] and "ridge_minus_linear" not in single_plane  # no measure, no ridge


def test_a_site_calibrator_learns_the_sites_offset_and_its_interval(tmp_path, tiny_model, phantom_root):
    """40 studies of a site that reads EF 12 points low (as an under-traced ES would): the calibrator
    recovers the offset, its cross-fitted MAE falls with a paired interval below zero, its interval
    is made of the site's own residuals, and predict takes it."""
    from conftest import echoef_in_process

    rng = np.random.default_rng(0)
    ref = rng.uniform(25, 70, 40)
    predicted = ref - 12 + rng.normal(0, 3, 40)
    table = pd.DataFrame({"patient": [f"s{i}" for i in range(40)], "method": "simpson_single_plane_4ch", "status": "ok_single_plane",
                          "ef": predicted, "ef_ref": ref})
    table.loc[3, "status"] = "empty_mask:4CH_ES"  # not measured: left out
    table.to_csv(tmp_path / "site.csv", index=False)
    result = echoef_in_process("site-calibrate", tmp_path / "site.csv", "--out", tmp_path / "site.json")
    assert result.returncode == 0, result.stderr
    calibrator = json.loads((tmp_path / "site.json").read_text())
    assert calibrator["ef_method"] == "simpson_single_plane_4ch" and calibrator["fit_set"] == "site" and calibrator["n"] == 39
    assert calibrator["slope"] == pytest.approx(1.0, abs=0.1) and calibrator["intercept"] == pytest.approx(12, abs=4)
    report = calibrator["site"]
    assert report["mae_before"] == pytest.approx(np.abs(np.delete(predicted - ref, 3)).mean())
    assert report["mae_after"] < 4 < report["mae_before"] and report["after_minus_before"]["ci"][1] < 0
    assert 2 < calibrator["interval"]["half_width"] < 8 and calibrator["fingerprint"] == calibration.fingerprint(calibrator)
    calibration.validate(calibrator)
    assert "cross-fitted EF MAE" in result.stdout
    # Run again onto its own calibrator: replaced. Onto the site's table, or a user's notes: kept, exit 2.
    assert echoef_in_process("site-calibrate", tmp_path / "site.csv", "--out", tmp_path / "site.json").returncode == 0
    (tmp_path / "notes.json").write_text('{"my": "notes"}')
    for kept in (tmp_path / "site.csv", tmp_path / "notes.json"):
        before = kept.read_bytes()
        refused = echoef_in_process("site-calibrate", tmp_path / "site.csv", "--out", kept)
        assert refused.returncode == 2 and "holds a file that is not a calibrator; it is kept" in refused.stderr
        assert kept.read_bytes() == before
    few = table.head(15)
    few.to_csv(tmp_path / "few.csv", index=False)
    refused = echoef_in_process("site-calibrate", tmp_path / "few.csv", "--out", tmp_path / "few.json")
    assert refused.returncode == 2 and "needs 20 or more" in refused.stderr and not (tmp_path / "few.json").exists()
    table.assign(method=["simpson_biplane", "simpson_single_plane_4ch"] * 20).to_csv(tmp_path / "mixed.csv", index=False)
    assert echoef_in_process("site-calibrate", tmp_path / "mixed.csv", "--out", tmp_path / "m.json").returncode == 2
    # The same studies twice (shards joined twice): each would sit on both sides of the cross-fitting.
    pd.concat([table, table.head(5)]).to_csv(tmp_path / "twice.csv", index=False)
    twice = echoef_in_process("site-calibrate", tmp_path / "twice.csv", "--out", tmp_path / "twice.json")
    assert twice.returncode == 2 and "4 studies in more than one row (s0, s1, s2, ...); keep one row per study" in twice.stderr
    assert not (tmp_path / "twice.json").exists()
    out = echoef_in_process("predict", phantom_root / "database_nifti" / "patient0001", "--out", tmp_path / "pred",
                            "--model", tiny_model / "segmenter.pt", "--calibrator", tmp_path / "site.json")
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr


def test_review_flags_read_back_from_csv_count_without_filling_floats_with_text(tmp_path):
    """A summary whose review column is empty on every row comes back from CSV as floats (NaN):
    the flag rates are 0, with no warning of the fill a future pandas refuses; a mixed column counts
    its flagged rows; no column at all counts none. The same for the split's quality column."""
    import warnings

    from echoef.io.atomic import text_column

    rows = {"patient": ["a", "b", "c", "d"], "status": "ok", "ef": [50.0, 60, 40, 55], "ef_ref": [52.0, 58, 45, 55]}
    for review, flagged, unlike in ((["", "", "", ""], 0.0, 0.0), (["", "unlike_training:3.1", "touches_border", ""], 0.5, 0.25)):
        pd.DataFrame({**rows, "review": review}).to_csv(tmp_path / "summary.csv", index=False)
        table = pd.read_csv(tmp_path / "summary.csv")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report = agreement.cohort_agreement(table, n_resamples=50)
        assert (report["flagged_for_review"], report["unlike_training"]) == (flagged, unlike)
    assert report["n_measured"] == 4 and report["ef"]["mae"] == pytest.approx(np.mean([2, 2, 5, 0]))
    assert agreement.cohort_agreement(pd.DataFrame(rows), n_resamples=50)["flagged_for_review"] == 0.0
    assert text_column(pd.DataFrame({"quality_2ch": [np.nan, np.nan]}), "quality_2ch").tolist() == ["", ""]
    assert text_column(pd.DataFrame({"x": [1.0]}), "quality_2ch").tolist() == [""]


def test_review_is_judged_by_the_errors_of_the_studies_it_flags():
    """Per kind of review reason: counts, the MAE of the flagged and of the others (worked out here by
    hand), precision and recall for errors over 10 points, and an interval that brackets the difference.
    The calibrated EF is judged where there is one, the raw one where not (single-plane); unmeasured
    studies and studies without a reference are left out; a name no reason has counts as unrecognised."""
    from echoef.reporting.cohort import markdown

    table = pd.DataFrame({
        "patient": list("abcdefgh"),
        "status": ["ok", "ok", "ok_touches_border", "ok_single_plane", "ok", "ok", "no_lv", "ok"],
        "ef": [50.0, 60, 40, 30, 55, 45, np.nan, 50],
        "ef_calibrated": [52.0, 61, 58, np.nan, 55, 46, np.nan, 50],
        "ef_ref": [50.0, 60, 40, 42, 55, 50, 50, np.nan],
        "review": ["", "lv_holes:2CH_ES", "touches_border; lv_holes:4CH_ED; lv_holes:4CH_ES", "view_missing:2CH",
                   "", "x|y:z", "touches_border", "touches_border"],
    })
    flags = agreement.cohort_agreement(table, n_resamples=200)["review_flags"]
    # Measured with a reference: a-f. Their errors (calibrated, else raw): 2, 1, 18, 12, 0, 4.
    assert flags["n"] == 6 and flags["n_large_errors"] == 2
    assert set(flags["kinds"]) == {"any", "lv_holes", "touches_border", "view_missing", "unrecognised"}
    lv_holes = flags["kinds"]["lv_holes"]
    assert lv_holes["n_flagged"] == 2 and lv_holes["share_flagged"] == pytest.approx(2 / 6)
    assert lv_holes["mae_flagged"] == pytest.approx((1 + 18) / 2) and lv_holes["mae_others"] == pytest.approx((2 + 12 + 0 + 4) / 4)
    assert lv_holes["precision"] == 0.5 and lv_holes["recall"] == 0.5
    low, high = lv_holes["difference_ci"]
    assert lv_holes["difference"] == pytest.approx(9.5 - 4.5) and low <= 5.0 <= high
    touches = flags["kinds"]["touches_border"]
    assert (touches["n_flagged"], touches["precision"], touches["recall"]) == (1, 1.0, 0.5)
    assert np.isnan(touches["difference_ci"]).all()  # one study flagged: no interval
    everything = flags["kinds"]["any"]
    assert everything["n_flagged"] == 4 and everything["mae_others"] == pytest.approx((2 + 0) / 2)
    assert everything["recall"] == 1.0 and everything["precision"] == 0.5
    assert flags["kinds"]["unrecognised"]["n_flagged"] == 1
    page = markdown(agreement.cohort_agreement(table, n_resamples=200))
    assert "| `lv_holes` | 2 (33%) | 9.50 | 4.50 | +5.00 [" in page and "x|y" not in page
    assert agreement.flag_kinds("touches_border; lv_holes:2CH_ES; lv_holes:4CH_ED") == ["touches_border", "lv_holes"]
    assert agreement.flag_kinds("any; touches_border\n| 1 |:x; ") == ["unrecognised"]


def test_errors_by_reference_class_worked_by_hand():
    """Six measured rows, one failed, one without a reference. Reference EFs 30, 35 (< 40), 45 (40-49),
    55, 65 (>= 50) and one more of 45 whose expert masks failed. EF errors before: +6, +4, 0, -5, -3,
    +2; after a calibration that adds 1 everywhere: +7, +5, +1, -4, -2, +3. Predicted volumes against
    the expert masks': ESV -20%, -10% in the reduced hearts, +0% at 45, +10%, +30% in the preserved ones;
    EDV -10%, 0, 0, 0, +10%."""
    rows = pd.DataFrame({
        "ef": [36, 39, 45, 50, 62, 47, 40, 50], "ef_ref": [30, 35, 45, 55, 65, 45, 40, np.nan],
        "status": ["ok", "ok", "ok", "ok", "ok", "ok", "no_prediction", "ok"],
        "edv_ml": [90, 100, 100, 100, 110, 100, 100, 100], "edv_expert_ml": [100] * 8,
        "esv_ml": [40, 45, 60, 33, 26, 50, 50, 50], "esv_expert_ml": [50, 50, 60, 30, 20, 50, 50, 50],
        "status_expert": ["ok", "ok", "ok", "ok", "ok", "no_contour:2CH_ES", "ok", "ok"]})
    found = agreement.by_reference_class(rows, rows["ef"] + 1.0)
    reduced, mild, preserved = (found["classes"][name] for name in ("<40", "40-49", ">=50"))
    assert (reduced["n"], mild["n"], preserved["n"]) == (2, 2, 2)
    assert (reduced["bias_pre"], mild["bias_pre"], preserved["bias_pre"]) == (5.0, 1.0, -4.0)
    assert (reduced["bias_post"], mild["bias_post"], preserved["bias_post"]) == (6.0, 2.0, -3.0)
    assert reduced["esv_relative_error"] == pytest.approx(-0.15) and reduced["edv_relative_error"] == pytest.approx(-0.05)
    assert mild["esv_relative_error"] == pytest.approx(0.0)  # the row whose expert masks failed is left out of volumes
    assert preserved["esv_relative_error"] == pytest.approx(0.2) and preserved["edv_relative_error"] == pytest.approx(0.05)
    # ESV errors -0.2, -0.1, 0, 0.1, 0.3 rise with references 30, 35, 45, 55, 65: rho 1.
    assert found["esv_error_rho"] == pytest.approx(1.0)
    assert found["edv_error_rho"] == pytest.approx(stats.spearmanr([-0.1, 0, 0, 0, 0.1], [30, 35, 45, 55, 65])[0])
    # Without the expert volumes: biases only.
    bare = agreement.by_reference_class(rows.drop(columns=["edv_expert_ml", "esv_expert_ml", "status_expert"]), rows["ef"])
    assert "esv_error_rho" not in bare and set(bare["classes"]["<40"]) == {"n", "bias_pre", "bias_post"}
