"""Site adaptation: the simulated site (other pictures, ES traced inside the expert's line), the loss
of a site that traces the LV alone, and `echoef site-tune` from a bundle to a new bundle judged on
studies kept aside."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from echoef.domain import Label
from echoef.io import camus, phantom
from echoef.io.site_shift import SiteShift, shift_image, site_label
from echoef.model import finetune, network

from conftest import echoef_in_process


def test_the_site_traces_es_a_fixed_distance_inside(phantom_root):
    study = camus.read_study(camus.find_patients(phantom_root)[0])
    shift = SiteShift(es_inset_mm=2.0, ed_inset_mm=0.0)
    for (_, phase), frame in study.frames.items():
        traced = site_label(frame.label, phase, frame.spacing_mm, shift)
        lv, kept = frame.label == Label.LV, traced == Label.LV
        assert not (kept & ~lv).any() and ((traced != frame.label) <= (lv & ~kept)).all()
        if phase == "ED":
            assert (traced == frame.label).all()
            continue
        # Independent check: each pixel taken from the LV lies within 2 mm of a pixel outside it (brute force).
        taken = np.argwhere(lv & ~kept) * frame.spacing_mm
        outside = np.argwhere(~lv) * frame.spacing_mm
        nearest = np.sqrt(((taken[:, None, :] - outside[None, :, :]) ** 2).sum(-1)).min(1)
        assert nearest.max() <= 2.0 + 1e-9 and kept.sum() < lv.sum() * 0.95


def test_the_site_image_keeps_its_geometry_and_loses_its_sector_edges(phantom_root):
    frame = camus.read_study(camus.find_patients(phantom_root)[0]).frames[("4CH", "ED")]
    shifted = shift_image(frame.image, frame.spacing_mm, SiteShift(sector_deg=20), np.random.default_rng(0))
    assert shifted.shape == frame.image.shape and shifted.min() >= 0 and shifted.max() <= 255
    rows, cols = frame.image.shape
    assert shifted[rows - 1, 0] == 0 and shifted[rows // 2, cols // 2] >= 0  # a corner of the old sector is black now
    assert not np.allclose(shifted, frame.image)


def test_a_pixel_known_only_not_to_be_lv_asks_nothing_else():
    """For such a pixel the loss depends on p(LV) alone: moving probability between myocardium and
    atrium changes nothing; for a labelled pixel it does."""
    loss = finetune.SiteLoss()
    target = torch.full((1, 4, 4), finetune.NOT_LV, dtype=torch.long)
    target[0, :2, :2] = Label.LV
    a = torch.zeros(1, 4, 4, 4)
    b = a.clone()
    b[0, Label.MYOCARDIUM, 3, 3], b[0, Label.ATRIUM, 3, 3] = 2.0, -2.0  # and the LV logit that keeps p(LV) at 1/4:
    b[0, Label.LV, 3, 3] = torch.logsumexp(torch.tensor([0.0, 2.0, -2.0]), 0) - torch.log(torch.tensor(3.0))
    assert torch.softmax(b, 1)[0, Label.LV, 3, 3] == pytest.approx(float(torch.softmax(a, 1)[0, Label.LV, 3, 3]))
    assert float(loss(a, target)) == pytest.approx(float(loss(b, target)), abs=1e-6)
    labelled = target.clone()
    labelled[0, 3, 3] = Label.MYOCARDIUM
    assert float(loss(b, labelled)) < float(loss(a, labelled))


def test_site_tune_writes_a_new_bundle_judged_on_studies_kept_aside(trained, phantom_root, tmp_path):
    from echoef.app.site import write_simulated_site
    from echoef.model.network import load_checkpoint

    _, state = load_checkpoint(trained / "segmenter.pt")
    base = tmp_path / "base"
    base.mkdir()
    network.save_bundle(base, state)
    (base / "calibrator.json").write_text((trained / "calibrator.json").read_text())
    (base / "MODEL_CARD.md").write_text("# EchoEF model card\n")
    before = network.model_fingerprint(base)
    patients = [p.name for p in camus.find_patients(phantom_root)]
    site_ef = write_simulated_site(phantom_root, patients, tmp_path / "site", SiteShift(), seed=0)
    expert = {p: camus.read_study(phantom_root / "database_nifti" / p).ef_ref for p in patients}
    assert np.mean([site_ef[p] - expert[p] for p in patients]) > 2  # an ES traced inside: a higher EF at this site
    folders = [tmp_path / "site" / "database_nifti" / p for p in patients]
    result = echoef_in_process("site-tune", *folders, "--model", base, "--out", tmp_path / "tuned", "--epochs", 2)
    assert result.returncode == 0, result.stderr
    assert "judged on 4 kept aside" in result.stdout
    report = json.loads((tmp_path / "tuned" / "site_tuning.json").read_text())
    assert set(report["trained"]).isdisjoint(report["aside"]) and len(report["trained"]) + len(report["aside"]) == 12
    assert report["n_with_reference_ef"] == 4 and isinstance(report["better"], bool)
    card = (tmp_path / "tuned" / "MODEL_CARD.md").read_text()
    assert "## Site fine-tuning" in card and ("**better**" in card) == report["better"]
    models, tuned_state = load_checkpoint(tmp_path / "tuned")
    assert network.model_fingerprint(base) == before and network.model_fingerprint(tmp_path / "tuned") != before
    assert tuned_state["fine_tuned"]["n_aside"] == 4
    moved = [not torch.equal(a, b) for a, b in zip(tuned_state["state_dicts"][0].values(), state["state_dicts"][0].values())
             if a.is_floating_point()]
    assert any(moved)
    refused = echoef_in_process("site-tune", *folders[:5], "--model", base, "--out", tmp_path / "few")
    assert refused.returncode == 2 and "at least 6" in refused.stderr and not (tmp_path / "few").exists()


def test_an_echonet_site_gives_lv_only_labels(tmp_path):
    from echoef.app.site import read_site

    phantom.write_echonet(tmp_path / "echonet", 3, seed=5, n_frames=24, period=12)
    studies = read_site([tmp_path / "echonet"])
    assert len(studies) == 3
    frames, ef_ref = next(iter(studies.values()))
    assert set(frames) == {("4CH", "ED"), ("4CH", "ES")} and 0 < ef_ref < 100
    for frame in frames.values():
        assert set(np.unique(frame.label)) == {Label.LV, finetune.NOT_LV}
        assert ndimage.label(frame.label == Label.LV)[1] == 1
    assert (frames[("4CH", "ED")].label == Label.LV).sum() > (frames[("4CH", "ES")].label == Label.LV).sum()
