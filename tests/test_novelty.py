"""The unlike-training flag: scale-free features of a study's masks and of the model's own uncertainty,
each against the validation studies' in robust SDs; the threshold flags the chosen share of them."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, strategies as st

from echoef.io import camus
from echoef.model import novelty, segmentation

from conftest import SIZE, echoef_in_process


def ellipse(shape, centre, axes):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) / axes[0]) ** 2 + ((cols - centre[1]) / axes[1]) ** 2 <= 1


def test_shape_features_of_known_masks():
    label = np.zeros((200, 160), np.uint8)
    label[ellipse(label.shape, (100, 80), (60, 20))] = camus.Label.LV
    found = novelty.frame_shape(label, (0.5, 0.5))
    assert found["lv_elongation"] == pytest.approx(3.0, rel=0.03)  # principal axes of an ellipse: a / b
    assert found["lv_fraction"] == pytest.approx(math.pi * 60 * 20 / label.size, rel=0.02)
    assert found["lv_solidity"] > 0.95
    # Anisotropic pixels: the same physical ellipse stored on a grid twice as coarse across.
    coarse = label[:, ::2]
    assert novelty.frame_shape(coarse, (0.5, 1.0))["lv_elongation"] == pytest.approx(3.0, rel=0.05)
    crescent = label.copy()
    crescent[ellipse(label.shape, (100, 95), (50, 20))] = 0
    assert novelty.frame_shape(crescent, (0.5, 0.5))["lv_solidity"] < 0.75
    assert math.isnan(novelty.frame_shape(np.zeros((10, 10), np.uint8), (1, 1))["lv_fraction"])


def test_uncertainty_is_the_entropy_around_the_lv():
    sure = torch.zeros(4, 20, 20)
    sure[0] = 1
    sure[camus.Label.LV, 5:10, 5:10], sure[0, 5:10, 5:10] = 1, 0
    assert novelty.lv_uncertainty(sure) == pytest.approx(0, abs=1e-5)
    unsure = torch.full((4, 20, 20), 0.25)
    unsure[camus.Label.LV, 5:10, 5:10] = 0.4
    unsure[:, 5:10, 5:10] /= unsure[:, 5:10, 5:10].sum(0)
    assert 0.9 < novelty.lv_uncertainty(unsure) <= 1.0


def test_the_threshold_flags_the_target_share_of_validation_studies():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({name: rng.normal(1.0, 0.1, 200) for name in novelty.FEATURES})
    reference = novelty.fit_reference(table)
    assert reference["validation_flagged"] == pytest.approx(novelty.TARGET_RATE, abs=0.01)
    typical = dict(table.median())
    assert novelty.flag(reference, typical)[1] is None
    assert novelty.flag(reference, {**typical, "uncertainty": 2.0})[1] == "unlike_training:uncertainty"
    assert novelty.flag(reference, {**typical, "uncertainty": 0.0})[1] is None  # sure is never odd
    assert novelty.flag(reference, {**typical, "lv_fraction": 0.0})[1] == "unlike_training:lv_fraction"  # shape: both ways
    assert novelty.flag(None, typical) == (pytest.approx(math.nan, nan_ok=True), None)
    with pytest.raises(ValueError):
        novelty.fit_reference(table.head(5))


@given(st.dictionaries(st.sampled_from([*novelty.FEATURES, "other"]),
                       st.one_of(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3), st.text(max_size=3)),
                       max_size=4),
       st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)))
def test_a_crafted_reference_is_refused_or_usable(features, threshold):
    reference = {"features": features, "threshold": threshold}
    try:
        novelty.validate(reference)
    except ValueError:
        return
    value, reason = novelty.flag(reference, dict.fromkeys(novelty.FEATURES, 0.5))
    assert reason is None or reason.startswith("unlike_training:")


def test_an_unfamiliar_study_is_flagged_by_predict(trained, phantom_root, tmp_path):
    """The reference from the phantom patients (ten the model was trained on, two not); one of its
    training patients' images turned into another picture (inverted grey levels) then score far above
    the untouched study, and are flagged where it is not."""
    from echoef.model.network import load_checkpoint

    models, state = load_checkpoint(trained / "segmenter.pt")
    folders = camus.find_patients(phantom_root)
    rows = []
    for folder in folders:  # the ten it was trained on and two it was not
        frames = camus.read_study(folder).frames
        labels, members, _, uncertainty = segmentation.predict_frames_with_members(models, frames, SIZE, 8)
        rows.append(novelty.study_features(labels, {k: f.spacing_mm for k, f in frames.items()}, members, uncertainty))
    reference = {**novelty.fit_reference(pd.DataFrame(rows)), "threshold": 3.0}
    (tmp_path / "novelty.json").write_text(json.dumps(reference))
    study = folders[0]
    odd = tmp_path / study.name
    odd.mkdir()
    for file in study.iterdir():
        if file.name.endswith("_gt.nii.gz") or not file.name.endswith(".nii.gz"):
            continue
        image = sitk.ReadImage(str(file))
        inverted = sitk.GetImageFromArray(255 - sitk.GetArrayFromImage(image))
        inverted.CopyInformation(image)
        sitk.WriteImage(inverted, str(odd / file.name))
    common = ["--model", trained / "segmenter.pt", "--calibrator", trained / "calibrator.json", "--novelty", tmp_path / "novelty.json"]
    assert echoef_in_process("predict", study, "--out", tmp_path / "same", *common).returncode == 0
    assert echoef_in_process("predict", odd, "--out", tmp_path / "odd", *common).returncode in (0, 1)
    same, changed = (pd.read_csv(tmp_path / name / "summary.csv").iloc[0] for name in ("same", "odd"))
    assert "unlike_training" not in str(same["review"]) and same["novelty_score"] < 3
    assert "unlike_training" in str(changed["review"]) and changed["novelty_score"] > 2 * same["novelty_score"]
    (tmp_path / "bad.json").write_text(json.dumps({**reference, "threshold": "high"}))
    refused = echoef_in_process("predict", study, "--out", tmp_path / "refused", *common[:4], "--novelty", tmp_path / "bad.json")
    assert refused.returncode == 2 and "--novelty" in refused.stderr and not (tmp_path / "refused").exists()
