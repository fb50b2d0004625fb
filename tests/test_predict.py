"""The prediction command on new studies, with a model trained here on the tiny configuration."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from echoef.errors import CheckpointError, StudyError
from echoef.io import camus
from echoef.measure import ef
from echoef.model import dataset, geometry, network, segmentation
from echoef.stats import calibration

from conftest import CAMUS, CAMUS_2019, SIZE, TINY, echoef_in_process, needs_shared, stored_with_direction


def predict(trained, *args):
    return echoef_in_process("predict", *args, "--model", trained / "segmenter.pt", "--calibrator", trained / "calibrator.json")


def test_predict_with_a_ridge_calibrator_reads_each_studys_view_measures(trained, phantom_root, tmp_path):
    weights = {"edv_ml": 0.01, "esv_ml": -0.02, "ef_2ch": 0.1, "long_axis_ed_2ch_mm": 0.03, "long_axis_es_2ch_mm": -0.03,
               "ef_4ch": -0.05, "long_axis_ed_4ch_mm": 0.02, "long_axis_es_4ch_mm": -0.01}
    ridge = {"method": "ridge", "fit_set": "oof", "n": 100, "ef_range": [5, 95], "alpha": 1.0, "intercept": 2.0, "slope": 0.9,
             "features": weights, "ef_method": "simpson_biplane"}
    (tmp_path / "ridge.json").write_text(json.dumps(ridge))
    result = echoef_in_process("predict", *camus.find_patients(phantom_root)[10:12], "--out", tmp_path / "out",
                               "--model", trained / "segmenter.pt", "--calibrator", tmp_path / "ridge.json")
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    by_hand = 2.0 + 0.9 * summary["ef"] + sum(w * summary[name] for name, w in weights.items())
    assert summary["status"].eq("ok").all() and np.allclose(summary["ef_calibrated"], by_hand.clip(5, 95))
    assert not np.allclose(summary["ef_calibrated"], (2.0 + 0.9 * summary["ef"]).clip(5, 95))  # the measures moved it


def assert_same_geometry(written, reference):
    a, b = sitk.ReadImage(str(written)), sitk.ReadImage(str(reference))
    assert a.GetSize() == b.GetSize() and a.GetSpacing() == pytest.approx(b.GetSpacing())
    assert a.GetOrigin() == pytest.approx(b.GetOrigin()) and a.GetDirection() == pytest.approx(b.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(a))) <= {0, 1, 2, 3}


def test_predict_synthetic_patients(trained, phantom_root, tmp_path):
    folders = camus.find_patients(phantom_root)[10:12]  # not seen in training
    # As a user runs it: the installed console script, in a process of its own, from another folder.
    result = subprocess.run([Path(sys.executable).parent / "echoef", "predict", *folders, "--out", tmp_path, "--model",
                             trained / "segmenter.pt", "--calibrator", trained / "calibrator.json"], cwd=tmp_path.parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["patient"].tolist() == [f.name for f in folders]
    assert (summary["method"] == "simpson_biplane").all() and (summary["status"] == "ok").all()
    assert np.allclose(summary["ef_calibrated"], calibration.apply(json.loads((trained / "calibrator.json").read_text()), summary["ef"]))
    for folder in folders:
        for view, phase in camus.FRAME_KEYS:
            written = tmp_path / folder.name / f"{folder.name}_{view}_{phase}_gt.nii.gz"
            assert_same_geometry(written, folder / f"{folder.name}_{view}_{phase}.nii.gz")
        assert (tmp_path / folder.name / f"{folder.name}_overlay.png").stat().st_size > 5000
    # The written masks are what `ef --labels` reads: the same EF comes back.
    assert echoef_in_process("ef", phantom_root, "--labels", tmp_path, "--out", tmp_path / "ef.csv").returncode == 0
    again = pd.read_csv(tmp_path / "ef.csv").set_index("patient").loc[summary["patient"]]
    assert again["ef"].tolist() == summary["ef"].tolist()


def test_a_wide_interval_is_said_once_for_the_run_and_reviews_no_study(trained, phantom_root, tmp_path):
    """The calibrator's interval is one width for every study: wider than ± 10 points, the run warns
    once, naming the calibrator, and no study's review says it (a reason on every study picks out none);
    within ± 10 nothing is said. The intervals themselves are the calibrator's either way."""
    folders = camus.find_patients(phantom_root)[10:12]
    stored = json.loads((trained / "calibrator.json").read_text())
    for half_width, warned in ((10.5, True), (9.5, False)):
        wide = {**stored, "interval": {"level": 0.9, "half_width": half_width, "n": 50}}
        (tmp_path / f"{half_width}.json").write_text(json.dumps(wide))
        out = tmp_path / f"out-{half_width}"
        result = echoef_in_process("predict", *folders, "--out", out, "--model", trained / "segmenter.pt",
                                   "--calibrator", tmp_path / f"{half_width}.json")
        assert result.returncode == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if "interval" in line]
        assert said == ([f"warning: {tmp_path / f'{half_width}.json'}: every calibrated EF's 90% interval is ± "
                         f"{half_width:.1f} points, too wide to tell EF classes apart"] if warned else [])
        summary = pd.read_csv(out / "summary.csv")
        assert summary["status"].eq("ok").all() and not summary["review"].fillna("").str.contains("interval").any()
        assert np.allclose(summary["ef_high"] - summary["ef_calibrated"], half_width)


def test_a_view_whose_es_cavity_is_not_smaller_is_reviewed(trained, phantom_root, tmp_path):
    """A view's ED and ES files given the wrong way round: its single-plane EF is below 0, which no
    heart gives, while the biplane EF can still look plausible; review names the view. The same study
    the right way round is not flagged."""
    folder = camus.find_patients(phantom_root)[10]
    files = {key: folder / f"{folder.name}_{key[0]}_{key[1]}.nii.gz" for key in camus.FRAME_KEYS}
    for name, ed_2ch, es_2ch in (("swapped", files["2CH", "ES"], files["2CH", "ED"]), ("right", files["2CH", "ED"], files["2CH", "ES"])):
        result = predict(trained, "--2ch-ed", ed_2ch, "--2ch-es", es_2ch, "--4ch-ed", files["4CH", "ED"], "--4ch-es", files["4CH", "ES"],
                         "--patient", name, "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr
        row = pd.read_csv(tmp_path / name / "summary.csv").iloc[0]
        reasons = str(row["review"]) if isinstance(row["review"], str) else ""
        if name == "swapped":
            assert row["ef_2ch"] < 0 and row["ef_4ch"] > 0 and "es_not_smaller:2CH" in reasons.split("; ")
            assert "es_not_smaller:4CH" not in reasons
        else:
            assert row["ef_2ch"] > 0 and "es_not_smaller" not in reasons


def test_predicted_masks_overlay_inputs_of_any_origin_and_direction(trained, phantom_root, tmp_path):
    # The same study stored flipped and turned, at another origin: the same canonical images give
    # the same masks, written with each input's own header so a viewer lays them over the image.
    source = camus.find_patients(phantom_root)[10]
    stored_with_direction(source, tmp_path / "turned" / source.name, (0.0, -1.0, 1.0, 0.0), (31.5, -12.25))
    for name in ("plain", "turned"):
        folder = source if name == "plain" else tmp_path / "turned" / source.name
        assert predict(trained, folder, "--out", tmp_path / f"out_{name}").returncode == 0
    for view, phase in camus.FRAME_KEYS:
        stem = f"{source.name}_{view}_{phase}"
        written = tmp_path / "out_turned" / source.name / f"{stem}_gt.nii.gz"
        assert_same_geometry(written, tmp_path / "turned" / source.name / f"{stem}.nii.gz")
        plain = camus.read_label(tmp_path / "out_plain" / source.name / f"{stem}_gt.nii.gz")[0]
        assert np.array_equal(camus.read_label(written)[0], plain)
    rows = [pd.read_csv(tmp_path / f"out_{name}" / "summary.csv").iloc[0] for name in ("plain", "turned")]
    assert rows[0]["ef"] == rows[1]["ef"] and rows[0]["status"] == rows[1]["status"] == "ok"


def test_predict_one_view_is_single_plane_and_flagged(trained, phantom_root, tmp_path):
    folder = camus.find_patients(phantom_root)[11]
    result = predict(trained, "--out", tmp_path, "--patient", "p", "--2ch-ed", folder / f"{folder.name}_2CH_ED.nii.gz",
                     "--2ch-es", folder / f"{folder.name}_2CH_ES.nii.gz")
    assert result.returncode == 0, result.stderr
    row = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    assert row["method"] == "simpson_single_plane_2ch" and row["status"].startswith("ok_single_plane")
    assert np.isnan(row["ef_calibrated"])  # the calibrator was fitted for biplane EF


@needs_shared
def test_predict_real_layouts_keep_their_geometry(trained, tmp_path):
    patients = [CAMUS_2019 / "patient0001", CAMUS / "database_nifti" / "patient0002"]
    result = predict(trained, *patients, "--out", tmp_path)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 2  # a row each, measured or with a status
    # A model trained briefly on synthetic hearts segments real ones poorly: whatever it finds is
    # either a plausible ventricle or says why not, and is never calibrated as if measured.
    measured = summary["status"].str.startswith("ok")
    assert result.returncode == (0 if measured.any() else 1), result.stderr
    ok = summary[measured]
    assert ok["edv_ml"].between(ef.MIN_VOLUME_ML, ef.MAX_VOLUME_ML).all() and (ok["esv_ml"] < ok["edv_ml"]).all()
    assert summary.loc[~measured, "status"].str.match(r"(implausible|empty_mask|tiny_mask|no_basal_chord):").all()
    assert summary.loc[~measured, "ef_calibrated"].isna().all()
    assert_same_geometry(tmp_path / "patient0001" / "patient0001_2CH_ED_gt.mhd", patients[0] / "patient0001_2CH_ED.mhd")
    assert_same_geometry(tmp_path / "patient0002" / "patient0002_2CH_ES_gt.nii.gz", patients[1] / "patient0002_2CH_ES.nii.gz")


def test_incompatible_model_fails_clearly(trained, phantom_root, tmp_path):
    state = torch.load(trained / "segmenter.pt", weights_only=False)
    state["model_config"]["encoder_depth"] = 5  # weights no longer fit the network this builds
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    result = echoef_in_process("predict", camus.find_patients(phantom_root)[0], "--out", tmp_path / "o", "--model", bad)
    assert result.returncode == 2
    assert "refused: model_config.decoder_channels" in result.stderr and "Traceback" not in result.stderr
    state["model_config"]["decoder_channels"] = [64, 32, 16, 8, 4]  # a valid configuration the weights do not fit
    torch.save(state, bad)
    result = echoef_in_process("predict", camus.find_patients(phantom_root)[0], "--out", tmp_path / "o", "--model", bad)
    assert result.returncode == 2
    # named from the weights' names and shapes, before any weight is read
    assert "weights not those of its network" in result.stderr and "Traceback" not in result.stderr


def test_a_paired_model_needs_both_phases_of_a_view(trained, phantom_root, tmp_path):
    paired = dataclasses.replace(TINY.network, phases_per_input=2, members=1)
    network.save_checkpoint(tmp_path / "paired.pt", [network.build_network(paired, 2).state_dict()], paired, {})
    folder = camus.find_patients(phantom_root)[0]
    frames = camus.read_study(folder).frames
    assert dataset.input_order(frames, 2) == list(camus.FRAME_KEYS)
    with pytest.raises(StudyError, match="2CH: this model segments a view's ED and ES frames together"):
        dataset.input_order({k: v for k, v in frames.items() if k != ("2CH", "ES")}, 2)
    assert dataset.input_order({k: v for k, v in frames.items() if k != ("2CH", "ES")}, 1) == [("2CH", "ED"), ("4CH", "ED"), ("4CH", "ES")]
    result = echoef_in_process("predict", "--out", tmp_path / "o", "--model", tmp_path / "paired.pt",
                               "--calibrator", trained / "calibrator.json", "--2ch-ed", folder / f"{folder.name}_2CH_ED.nii.gz")
    assert result.returncode == 1, result.stderr  # no study measured
    assert pd.read_csv(tmp_path / "o" / "summary.csv")["status"].tolist() == ["unpaired_view"]
    assert "1 studies: 0 ok, 1 failed (unpaired_view 1)" in result.stdout


def test_a_mixed_ensemble_averages_its_members_softmax_frame_by_frame(phantom_root):
    # A one-frame and a paired member: each frame's label map is the argmax of the two members' mean
    # softmax for that frame (mapped to its native grid, post-processed), and a view missing a phase is
    # refused because one member needs both.
    models = []
    for seed, phases in ((0, 1), (1, 2)):
        torch.manual_seed(seed)
        models.append(network.build_network(TINY.network, phases).eval())
    frames = camus.read_study(camus.find_patients(phantom_root)[0]).frames
    keys = dataset.input_order(frames, 2)
    images, _, boxes = dataset.grid_tensors([frames[k] for k in keys], SIZE, with_labels=False)
    scores = [network.predict_scores(m, images, 8) for m in models]
    labels = segmentation.predict_frames(models, frames, SIZE, 8)
    for i, key in enumerate(keys):
        mean = geometry.to_native((scores[0][i] + scores[1][i]) / 2, boxes[i]).argmax(0).numpy().astype(np.uint8)
        assert np.array_equal(labels[key], segmentation.postprocess(mean))
    alone = segmentation.predict_frames(models[:1], frames, SIZE, 8)
    assert any(not np.array_equal(labels[k], alone[k]) for k in keys)
    with pytest.raises(StudyError, match="unpaired_view: 4CH: this model segments a view's ED and ES frames together"):
        segmentation.predict_frames(models, {k: v for k, v in frames.items() if k != ("4CH", "ES")}, SIZE, 8)


class _RunsCodeWhenUnpickled:
    """What a crafted model file holds: unpickling it calls a function of the attacker's choice."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_model_file_that_would_run_code_is_refused_without_running_it(trained, phantom_root, tmp_path):
    state = torch.load(trained / "segmenter.pt", weights_only=True)
    evidence = tmp_path / "code_ran"
    torch.save({**state, "extra": _RunsCodeWhenUnpickled(evidence)}, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match="refused: it holds Python objects beyond tensors and plain data"):
        network.load_checkpoint(tmp_path / "crafted.pt")
    result = echoef_in_process("predict", camus.find_patients(phantom_root)[0], "--out", tmp_path / "o", "--model", tmp_path / "crafted.pt")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "refused" in result.stderr
    assert not evidence.exists()
    # The same object unpickled without the guard does run: the test would catch a regression.
    torch.load(tmp_path / "crafted.pt", weights_only=False)
    assert evidence.exists()


def test_images_without_a_pixel_size_need_one_given(trained, phantom_root, tmp_path):
    folder = camus.find_patients(phantom_root)[11]
    pngs = {}
    for view, phase in camus.FRAME_KEYS:
        image = sitk.ReadImage(str(folder / f"{folder.name}_{view}_{phase}.nii.gz"))
        pngs[(view, phase)] = tmp_path / f"{view}_{phase}.png"
        sitk.WriteImage(image, str(pngs[(view, phase)]))
    args = [arg for (view, phase), path in pngs.items() for arg in (f"--{view.lower()}-{phase.lower()}", path)]
    refused = predict(trained, *args, "--out", tmp_path / "refused")
    assert refused.returncode == 1
    row = pd.read_csv(tmp_path / "refused" / "summary.csv").iloc[0]
    assert row["status"] == "no_spacing" and "give --spacing-mm" in row["detail"]
    # With a pixel size the 2CH frames (0.85 x 0.95 mm) are read at that size and labels come back as NIfTI.
    given = predict(trained, "--2ch-ed", pngs[("2CH", "ED")], "--2ch-es", pngs[("2CH", "ES")], "--spacing-mm", 0.85, 0.95,
                    "--out", tmp_path / "given")
    assert given.returncode == 0, given.stderr
    written = sitk.ReadImage(str(tmp_path / "given" / "study" / "study_2CH_ED_gt.nii.gz"))
    assert written.GetSpacing() == pytest.approx((0.95, 0.85))
    nifti = predict(trained, "--2ch-ed", folder / f"{folder.name}_2CH_ED.nii.gz", "--2ch-es", folder / f"{folder.name}_2CH_ES.nii.gz",
                    "--out", tmp_path / "nifti")
    assert nifti.returncode == 0
    # The same frames as grey + alpha PNGs (decoded by Pillow: ITK fails on them) are the same study.
    from PIL import Image

    for view, phase in (("2CH", "ED"), ("2CH", "ES")):
        grey = np.asarray(Image.open(pngs[(view, phase)]))
        Image.fromarray(np.stack([grey, np.full_like(grey, 128)], axis=-1), "LA").save(tmp_path / f"{view}_{phase}_alpha.png")
    alpha = predict(trained, "--2ch-ed", tmp_path / "2CH_ED_alpha.png", "--2ch-es", tmp_path / "2CH_ES_alpha.png",
                    "--spacing-mm", 0.85, 0.95, "--out", tmp_path / "alpha")
    assert alpha.returncode == 0, alpha.stderr
    same = [pd.read_csv(tmp_path / name / "summary.csv").iloc[0] for name in ("given", "nifti", "alpha")]
    assert same[0]["ef"] == same[1]["ef"] == same[2]["ef"] and same[0]["status"] == same[1]["status"] == same[2]["status"]


def test_a_cohort_in_shards_resumed_and_merged(trained, phantom_root, tmp_path):
    folders = camus.find_patients(phantom_root)[8:12]
    shards = [predict(trained, *folders, "--out", tmp_path, "--shard", f"{i}/2") for i in range(2)]
    assert all(r.returncode == 0 for r in shards)
    parts = [set(pd.read_csv(tmp_path / f"summary-{i}-of-2.csv")["patient"]) for i in range(2)]
    assert not parts[0] & parts[1] and parts[0] | parts[1] == {f.name for f in folders}  # each study in one shard
    merged = echoef_in_process("merge", tmp_path)
    assert merged.returncode == 0 and "4 studies: " in merged.stdout
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert sorted(summary["patient"]) == [f.name for f in folders]
    # Again without --force: every study is resumed from what was written, nothing is redone.
    overlay = tmp_path / folders[0].name / f"{folders[0].name}_overlay.png"
    written = overlay.stat().st_mtime_ns
    again = predict(trained, *folders, "--out", tmp_path)
    assert again.returncode == 0 and overlay.stat().st_mtime_ns == written
    assert pd.read_csv(tmp_path / "summary.csv").set_index("patient").sort_index().equals(summary.set_index("patient").sort_index())
    predict(trained, folders[0], "--out", tmp_path, "--force")
    assert overlay.stat().st_mtime_ns > written
    assert predict(trained, folders[0], "--out", tmp_path, "--shard", "2/2").returncode == 2  # I must be below N
