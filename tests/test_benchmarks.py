"""The benchmark scripts that decide: compare_runs.py on small hand-made run records and a folds-only
workspace (the paired numbers, the rule's verdict both ways, the refusal of runs on different folds,
cross-fitting that does not depend on row order); grid_limit.py's round trip on a phantom patient;
review_limits.py's verdict; fold_pieces.py's folds kept one at a time and joined."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from echoef.io.atomic import read_json, write_json
from echoef.reporting import records

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/compare_runs.py"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_runs():
    return script("compare_runs")


def write_folds_run(folder: Path, ef: np.ndarray, ef_ref: np.ndarray, folds_md5: str = "f" * 32) -> Path:
    """A workspace that ran the folds alone (`dvc exp run ... cv`): its out-of-fold table, the
    cross-validation Dice and dvc.lock, no calibrator."""
    (folder / "data").mkdir(parents=True)
    (folder / "metrics").mkdir()
    pd.DataFrame({"patient": [f"patient{i:04d}" for i in range(len(ef))], "ef": ef, "ef_ref": ef_ref, "status": "ok",
                  "fold": np.arange(len(ef)) % 5}).to_csv(folder / "data/ef_cv.csv", index=False)
    write_json(folder / "metrics/segmentation_cv.json", {"oof": {"dice_lv_ed": 0.96, "dice_lv_es": 0.93}})
    (folder / "dvc.lock").write_text(yaml.safe_dump({"stages": {"split": {"outs": [
        {"path": "data/cv/folds.json", "md5": folds_md5}]}}}))
    return folder


def write_record(folder: Path, ef: np.ndarray, ef_ref: np.ndarray, folds_md5: str = "f" * 32) -> Path:
    """A record of out-of-fold rows only, with what compare_runs reads: patients.csv, record.json,
    the calibrator, the cross-validation Dice and a dvc.lock naming the folds file's hash."""
    patients = [f"patient{i:04d}" for i in range(len(ef))]
    (folder / "models").mkdir(parents=True)
    (folder / "metrics").mkdir()
    pd.DataFrame({"patient": patients, "set": "oof", "ef": ef, "ef_calibrated": ef, "ef_ref": ef_ref,
                  "status": "ok"}).to_csv(folder / "patients.csv", index=False)
    write_json(folder / "record.json", {"name": folder.name})
    write_json(folder / "models/calibrator.json", {"method": "none", "fit_set": "val", "ef_range": [5, 95]})
    write_json(folder / "metrics/segmentation_cv.json", {"oof": {"dice_lv_ed": 0.95, "dice_lv_es": 0.92}})
    (folder / "dvc.lock").write_text(yaml.safe_dump({"stages": {"split": {"outs": [
        {"path": "data/cv/folds.json", "md5": folds_md5}]}}}))
    return folder


@pytest.fixture
def cohort():
    rng = np.random.default_rng(3)
    ef_ref = rng.uniform(25, 70, 120)
    return ef_ref, rng.normal(0, 5, 120)


def run_script(monkeypatch, *args) -> None:
    """The script's main as its command line runs it."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
    compare_runs().main()


def test_a_run_with_half_the_error_replaces_the_other_and_the_same_run_does_not(tmp_path, cohort, monkeypatch):
    ef_ref, noise = cohort
    a = write_record(tmp_path / "a", ef_ref + noise, ef_ref)
    b = write_folds_run(tmp_path / "b", ef_ref + noise / 2, ef_ref)
    (a / "params.yaml").write_text(yaml.safe_dump({"train": {"optimisation": {"es_weight": 0.0, "epochs": 36}}}))
    (b / "params.yaml").write_text(yaml.safe_dump({"train": {"optimisation": {"es_weight": 1.0, "epochs": 36,
                                                                              "ef_weight": 0.0}}}))
    run_script(monkeypatch, a, b, "--cv", "--decide", "--bootstrap", 300, "--out", tmp_path / "ab")
    result = read_json(tmp_path / "ab/comparison.json")
    assert result["changed_parameters"] == {"train.optimisation.ef_weight": [None, 0.0],
                                            "train.optimisation.es_weight": [0.0, 1.0]}
    oof = result["results"]["oof"]
    before = oof["ef_abs_error"]["pre"]
    assert oof["n"] == 120 and result["b_replaces_a"] is True
    # Independent of the script: the mean paired difference of absolute errors.
    assert before["mean"] == pytest.approx(np.mean(np.abs(noise / 2) - np.abs(noise)))
    assert before["ci"][1] < 0 and oof["ef_abs_error"]["post"]["ci"][1] < 0
    assert oof["error_correlation"] == pytest.approx(1.0)
    assert "B replaces A" in (tmp_path / "ab/report.md").read_text()
    assert oof["lv_dice"]["es"] == {"a": 0.92, "b": 0.93, "n": None}
    # The verdict's numbers can be recomputed from the per-patient file it leaves.
    patients = pd.read_csv(tmp_path / "ab/patients.csv")
    assert len(patients) == 120 and set(patients["set"]) == {"oof"}
    assert (patients["pre_b"] - patients["pre_a"]).mean() == pytest.approx(before["mean"])
    assert np.allclose(patients["pre_b"], np.abs(patients["ef_b"] - patients["ef_ref"]))

    run_script(monkeypatch, a, a, "--cv", "--decide", "--bootstrap", 300, "--out", tmp_path / "aa", "--what", "the same run again")
    assert read_json(tmp_path / "aa/comparison.json")["b_replaces_a"] is False
    assert read_json(tmp_path / "aa/comparison.json")["what_b"] == "the same run again"
    assert "B: the same run again.\n" in (tmp_path / "aa/report.md").read_text()
    assert read_json(tmp_path / "aa/comparison.json")["changed_parameters"] == {}

    # README's sentences for both comparisons, the verdict recomputed from the intervals they store.
    same, better = records.recipe_lines(tmp_path)  # folders in name order: aa, ab
    assert better.startswith("Out of fold, record `ab`: a candidate recipe (parameters changed: "
                            "`train.optimisation.ef_weight` absent -> 0.0; `train.optimisation.es_weight` 0.0 -> 1.0) "
                            "against `a` on the same folds, 120 patients")
    assert f"candidate minus current {before['mean']:+.2f} [{before['ci'][0]:+.2f}, {before['ci'][1]:+.2f}]" in better
    assert better.endswith("the candidate is adopted.") and same.endswith("the current recipe stays.")
    assert "(parameters changed: none)" in same


def test_a_better_bias_alone_does_not_pass_the_rule(tmp_path, cohort, monkeypatch):
    """B only removes a constant bias, which a calibrator removes too: better before calibration,
    not after, so by the rule A stays."""
    ef_ref, noise = cohort
    a = write_record(tmp_path / "a", ef_ref + noise + 6, ef_ref)
    b = write_record(tmp_path / "b", ef_ref + noise, ef_ref)
    run_script(monkeypatch, a, b, "--cv", "--decide", "--bootstrap", 300, "--out", tmp_path / "ab")
    result = read_json(tmp_path / "ab/comparison.json")
    errors = result["results"]["oof"]["ef_abs_error"]
    assert errors["pre"]["ci"][1] < 0 and errors["post"]["ci"][1] >= 0
    assert result["b_replaces_a"] is False


def test_runs_on_different_folds_are_not_compared_out_of_fold(tmp_path, cohort, monkeypatch):
    ef_ref, noise = cohort
    a = write_record(tmp_path / "a", ef_ref + noise, ef_ref, folds_md5="a" * 32)
    b = write_record(tmp_path / "b", ef_ref + noise / 2, ef_ref, folds_md5="b" * 32)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(a), str(b), "--cv", "--out", str(tmp_path / "ab")])
    with pytest.raises(SystemExit, match="folds differ"):
        compare_runs().main()
    assert not (tmp_path / "ab").exists()


def test_cross_fitting_folds_follow_the_patients_not_the_row_order():
    module = compare_runs()
    patients = pd.Index([f"patient{i:04d}" for i in range(37)])
    folds = module.patient_folds(patients)
    shuffled = patients[np.random.default_rng(1).permutation(len(patients))]
    again = dict(zip(shuffled, module.patient_folds(shuffled)))
    assert dict(zip(patients, folds)) == again
    assert sorted(np.bincount(folds)) == [7, 7, 7, 8, 8]


def test_the_grid_round_trip_gives_back_what_the_grid_can_hold():
    """Expert masks through the network grid and back: at a grid as fine as the frame the LV cavity
    and the EF come back; at a coarse grid the cavity moves more, and never more than the grid allows."""
    from echoef.io import phantom
    from echoef.measure import ef

    module = script("grid_limit")
    rng = np.random.default_rng(4)
    anatomy = phantom.draw_patient(rng)
    frames = {}
    for view in ("2CH", "4CH"):
        for phase in ("ED", "ES"):
            _, label, spacing_mm = phantom.render_frame(anatomy, view, phase, rng)
            frames[(view, phase)] = (label, spacing_mm)
    native_ef = ef.patient_ef(frames, "simpson_biplane")["ef"]
    for label, spacing_mm in frames.values():
        fine = module.round_trip(label, spacing_mm, max(label.shape), soft=True)
        coarse = module.round_trip(label, spacing_mm, 32, soft=True)
        lv = (label == 1).sum()
        assert fine.shape == label.shape and abs((fine == 1).sum() / lv - 1) < 0.01
        assert (fine != label).mean() < (coarse != label).mean() < 0.05
    moved = {key: (module.round_trip(label, spacing_mm, max(label.shape), soft=False), spacing_mm)
             for key, (label, spacing_mm) in frames.items()}
    assert abs(ef.patient_ef(moved, "simpson_biplane")["ef"] - native_ef) <= 1


def test_a_rule_over_several_comparisons_adopts_only_when_every_one_passes(tmp_path, cohort, monkeypatch):
    """One candidate judged on two sets of models (--rule-group): README's one sentence names both
    records, and the candidate is adopted only if both comparisons pass."""
    ef_ref, noise = cohort
    a1 = write_record(tmp_path / "runs/a1", ef_ref + noise, ef_ref)
    a2 = write_record(tmp_path / "runs/a2", ef_ref + noise, ef_ref)
    better = write_folds_run(tmp_path / "runs/better", ef_ref + noise / 2, ef_ref)
    results = tmp_path / "results"
    run_script(monkeypatch, a1, better, "--cv", "--decide", "--rule-group", "tta", "--bootstrap", 300, "--out", results / "g1")
    run_script(monkeypatch, a2, a2, "--cv", "--decide", "--rule-group", "tta", "--bootstrap", 300, "--out", results / "g2")
    assert read_json(results / "g1/comparison.json")["b_replaces_a"] is True  # each comparison's own verdict is kept
    assert "adopts B only if every comparison of the group passes" in (results / "g1/report.md").read_text()
    [sentence] = records.recipe_lines(results)
    assert sentence.startswith("Out of fold, records `g1` and `g2`: a candidate recipe") and "against `a1` on the same folds" in sentence
    assert "against `a2` on the same folds" in sentence and sentence.endswith("the current recipe stays.")
    # The second comparison passing too: now the group adopts the candidate.
    run_script(monkeypatch, a2, better, "--cv", "--decide", "--rule-group", "tta", "--bootstrap", 300, "--out", results / "g3")
    (results / "g2/comparison.json").unlink()
    [sentence] = records.recipe_lines(results)
    assert "records `g1` and `g3`" in sentence and sentence.endswith("the candidate is adopted.")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(a1), str(better), "--cv", "--rule-group", "tta"])
    with pytest.raises(SystemExit):
        compare_runs().main()


def test_a_comparison_is_written_over_an_earlier_one_only_with_replace(tmp_path, cohort, monkeypatch):
    """README's decisions cite the comparisons under results/: one already there is kept, byte for
    byte, unless --replace; a user's folder is refused even so."""
    ef_ref, noise = cohort
    a = write_record(tmp_path / "runs/a", ef_ref + noise, ef_ref)
    better = write_folds_run(tmp_path / "runs/better", ef_ref + noise / 2, ef_ref)
    out = tmp_path / "results" / "cmp"
    run_script(monkeypatch, a, better, "--cv", "--decide", "--bootstrap", 300, "--out", out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(SystemExit, match=f"error: --out {out} already holds a record; give another folder, or --replace"):
        run_script(monkeypatch, a, a, "--cv", "--decide", "--bootstrap", 300, "--out", out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    run_script(monkeypatch, a, a, "--cv", "--decide", "--bootstrap", 300, "--out", out, "--replace")
    assert read_json(out / "comparison.json")["b_replaces_a"] is False
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    for replace in ([], ["--replace"]):
        with pytest.raises(SystemExit, match="holds files EchoEF did not write there"):
            run_script(monkeypatch, a, a, "--cv", "--bootstrap", 300, "--out", users, *replace)
    assert [path.name for path in users.iterdir()] == ["notes.txt"]


def test_review_limits_flags_by_the_members_spread_and_judges_by_the_rule(tmp_path):
    """review_limits.py on eight out-of-fold rows worked by hand (raw EF against the reference; the
    calibrated EF is not what it judges). Spreads 1, 2, 3, 4, 9, 12, 20 and NaN (one network: never
    flagged); absolute errors 1, 2, 1, 2, 12, 15, 20, 3. Over 8 points: the three studies of errors
    12, 15 and 20 (MAE 15.67) against five of MAE 1.8, all three errors over 10 caught; over 15: one."""
    module = script("review_limits")
    rows = pd.DataFrame({"patient": [f"p{i}" for i in range(8)], "set": "oof", "status": "ok",
                         "ef": [51, 48, 61, 38, 62, 35, 80, 53], "ef_calibrated": 50.0,
                         "ef_ref": [50, 50, 60, 40, 50, 50, 60, 50],
                         "member_ef_spread": [1, 2, 3, 4, 9, 12, 20, np.nan]})
    table = module.limit_table(rows, [8, 15], n_resamples=500)
    eight, fifteen = table[8.0], table[15.0]
    assert (eight["n"], eight["n_large_errors"], eight["n_flagged"]) == (8, 3, 3)
    assert eight["mae_flagged"] == pytest.approx(47 / 3) and eight["mae_others"] == pytest.approx(9 / 5)
    assert (eight["precision"], eight["recall"]) == (1.0, 1.0) and module.supported(eight)
    assert fifteen["n_flagged"] == 1 and fifteen["recall"] == pytest.approx(1 / 3)
    assert not module.supported(fifteen)  # one flagged study gives no interval: not surely worse
    rows.to_csv(tmp_path / "patients.csv", index=False)
    with pytest.raises(module.UsageError, match="hold no members' EF spread"):
        module.limit_table(rows.assign(member_ef_spread=np.nan), [5])


def git_commit(folder: Path, text: str) -> Path:
    """A git repository at ``folder`` with one commit (a README holding ``text``)."""
    import subprocess

    folder.mkdir(parents=True)
    (folder / "README.md").write_text(text)
    for command in (["init", "-q"], ["add", "README.md"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", *command], cwd=folder, check=True)
    return folder


def write_fold_workspace(folder: Path, origin: Path, ef: dict, spread: dict, dice_lv: dict,
                         params_text: str = "profile: camus-cpu\n") -> Path:
    """A clean clone of ``origin`` where both folds of a two-fold run finished: the fold lists, each
    fold's EF table, review signals, Dice and training log, and a dvc.lock that names each EF table's md5."""
    import hashlib
    import subprocess

    subprocess.run(["git", "clone", "-q", str(origin), str(folder)], check=True)
    (folder / "params.yaml").write_text(params_text)
    fold_of = {patient: int(patient[-1]) % 2 for patient in ef}
    write_json(folder / "data/cv/folds.json", {"k": 2, "fold_of": fold_of})
    lock = {"split": {"outs": [{"path": "data/cv/folds.json", "md5": "f" * 32}]}}
    for fold in (0, 1):
        mine = [patient for patient, number in fold_of.items() if number == fold]
        base = folder / f"data/cv/fold_{fold}"
        (base / "predictions").mkdir(parents=True)
        pd.DataFrame({"patient": mine, "set": "oof", "ef": [ef[p] for p in mine], "ef_ref": 50.0,
                      "status": "ok"}).to_csv(base / "ef.csv", index=False)
        pd.DataFrame({"patient": mine, "set": "oof", "member_ef_spread": [spread[p] for p in mine]}).to_csv(
            base / "predictions/review_signals.csv", index=False)
        pd.DataFrame([{"patient": p, "view": "4CH", "phase": phase, "dice_lv": dice_lv[p], "dice_myo": 0.8, "dice_la": 0.9}
                      for p in mine for phase in ("ED", "ES")]).to_csv(base / "predictions/dice.csv", index=False)
        write_json(base / "model/train_log.json", {"precision": "float32", "device": "cpu", "train_seconds": 60.0 * (fold + 1)})
        md5 = hashlib.md5((base / "ef.csv").read_bytes()).hexdigest()
        lock |= {f"train_fold@fold_{fold}": {"cmd": "train"}, f"infer_fold@fold_{fold}": {"cmd": "infer"},
                 f"ef_fold@fold_{fold}": {"outs": [{"path": f"data/cv/fold_{fold}/ef.csv", "md5": md5}]}}
    (folder / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": lock}))
    return folder


def test_folds_kept_one_at_a_time_join_into_the_out_of_fold_table(tmp_path, monkeypatch, capsys):
    """fold_pieces.py: each fold kept from its own workspace, joined only when both are there, into
    the table the cv stage would write (each patient once, its fold, its members' spread); the
    out-of-fold Dice is the mean over both folds' rows, with the folds' spread; review_limits.py reads
    the joined folder.
    Refused: an unknown fold, a fold kept twice, other parameters, a stale EF table, an edited checkout."""
    module = script("fold_pieces")
    ef = {"p0": 50.0, "p1": 70.0, "p2": 52.0, "p3": 30.0, "p4": 49.0, "p5": 62.0}
    spread = {"p0": 1.0, "p1": 12.0, "p2": 2.0, "p3": 15.0, "p4": 1.0, "p5": 9.0}
    dice_lv = {"p0": 0.9, "p1": 0.8, "p2": 0.94, "p3": 0.7, "p4": 0.92, "p5": 0.86}
    origin = git_commit(tmp_path / "origin", "a commit\n")
    first = write_fold_workspace(tmp_path / "first", origin, ef, spread, dice_lv)
    second = write_fold_workspace(tmp_path / "second", origin, ef, spread, dice_lv)
    out = tmp_path / "results/oof-pieces"
    module.keep(first, "fold_0", out, "dvc exp run ... ef_fold@fold_0")
    with pytest.raises(module.UsageError, match="1 of 2 folds not kept yet \\(fold_1\\)"):
        module.join(out)
    for fold, match in (("fold_2", "this run's folds are fold_0, fold_1"), ("../x", "this run's folds are"),
                        ("fold_0", "is kept already")):
        with pytest.raises(module.UsageError, match=match):
            module.keep(first, fold, out, "again")
    other = write_fold_workspace(tmp_path / "other", origin, ef, spread, dice_lv, params_text="profile: camus-gpu\n")
    with pytest.raises(module.UsageError, match="differs from the one the folds kept"):
        module.keep(other, "fold_1", out, "x")
    elsewhere = write_fold_workspace(tmp_path / "elsewhere", git_commit(tmp_path / "origin2", "another\n"), ef, spread, dice_lv)
    with pytest.raises(module.UsageError, match="the folds kept in .* at [0-9a-f]{12}; check out"):
        module.keep(elsewhere, "fold_1", out, "x")
    (second / "data/cv/fold_1/ef.csv").write_text((second / "data/cv/fold_1/ef.csv").read_text() + "p9,oof,1,50,ok\n")
    with pytest.raises(module.UsageError, match="not the table dvc.lock records"):
        module.keep(second, "fold_1", out, "x")
    second = write_fold_workspace(tmp_path / "second-again", origin, ef, spread, dice_lv)
    (second / "README.md").write_text("edited\n")
    with pytest.raises(module.UsageError, match="modified: a fold is kept only from a clean checkout"):
        module.keep(second, "fold_1", out, "x")
    (second / "README.md").write_text("a commit\n")
    module.keep(second, "fold_1", out, "dvc exp run ... ef_fold@fold_1")

    table = module.join(out).set_index("patient")
    assert sorted(table.index) == sorted(ef) and table["ef"].to_dict() == ef
    assert table["fold"].to_dict() == {p: int(p[-1]) % 2 for p in ef}
    assert table["member_ef_spread"].to_dict() == spread
    dice = read_json(out / "metrics/segmentation_cv.json")
    assert dice["oof"]["dice_lv_ed"] == pytest.approx(np.mean(list(dice_lv.values())))
    # each fold's mean LV Dice: (0.9 + 0.94 + 0.92) / 3 = 0.92 and (0.8 + 0.7 + 0.86) / 3 = 0.78667
    assert dice["fold_spread"] == pytest.approx({"dice_lv_mean": (0.92 + 2.36 / 3) / 2, "dice_lv_std": (0.92 - 2.36 / 3) / 2})
    pieces = read_json(out / "pieces.json")
    assert [pieces["folds"][f]["train_seconds"] for f in ("fold_0", "fold_1")] == [60.0, 120.0]
    lock = yaml.safe_load((out / "dvc.lock").read_text())["stages"]
    assert {"split", "ef_fold@fold_0", "ef_fold@fold_1"} <= set(lock)
    # review_limits reads the joined folder's out-of-fold rows: over 8 points p1, p3, p5 (errors 20, 20, 12)
    monkeypatch.setattr(sys, "argv", ["review_limits.py", str(out), "--limits", "8", "--out", str(tmp_path / "limits.json")])
    script("review_limits").main()
    eight = read_json(tmp_path / "limits.json")["limits"]["8.0"]
    assert eight["n_flagged"] == 3 and eight["mae_flagged"] == pytest.approx(52 / 3) and eight["mae_others"] == pytest.approx(1.0)

    monkeypatch.setattr(sys, "argv", ["fold_pieces.py", "join", str(out)])
    module.main()
    printed = capsys.readouterr().out
    assert "6 out-of-fold patients, 6 measured; EF before calibration: MAE 9.17, bias +2.17" in printed
    assert "fold_1: trained in float32 on cpu" in printed
    # what it reads is checked: a folds file of a billion folds, a pieces.json that is not one
    write_json(second / "data/cv/folds.json", {"k": 10**9, "fold_of": {"p0": 0}})
    with pytest.raises(module.UsageError, match="not a folds file of 2 to 20 folds"):
        module.keep(second, "fold_1", out, "x", replace=True)
    write_json(out / "pieces.json", {"folds": ["fold_0"]})
    with pytest.raises(module.UsageError, match="not what fold_pieces.py keep writes"):
        module.join(out)


def test_a_run_of_the_folds_alone_can_be_the_baseline(tmp_path, cohort, monkeypatch):
    """compare_runs.py with a folds-only run (fold_pieces.py join: no calibrator) as run A: the EF range
    of the cross-fitted calibration comes from its params.yaml; with neither, one line, not a traceback."""
    ef_ref, noise = cohort
    a = write_folds_run(tmp_path / "a", ef_ref + noise, ef_ref)
    better = write_folds_run(tmp_path / "better", ef_ref + noise / 2, ef_ref)
    with pytest.raises(SystemExit, match="holds no calibrator .* and no calibration.ef_range"):
        run_script(monkeypatch, a, better, "--cv", "--bootstrap", 300)
    (a / "params.yaml").write_text(yaml.safe_dump({"calibration": {"method": "linear", "fit_set": "val", "ef_range": [5, 95]}}))
    assert compare_runs().calibrated_range(a) == (5.0, 95.0)
    out = tmp_path / "cmp"
    run_script(monkeypatch, a, better, "--cv", "--decide", "--bootstrap", 300, "--out", out)
    assert read_json(out / "comparison.json")["b_replaces_a"] is True

