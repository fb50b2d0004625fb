"""Adapting a bundle to one site's studies: `echoef site-tune`.

The site's traced frames come from CAMUS-layout patient folders (every structure traced) or from an
EchoNet-Dynamic folder (the LV outlined on two frames of each video). A share of the studies is kept
aside before anything is trained; the fine-tuned networks (``model.finetune``) are compared with the
bundle's on those studies alone, by the LV Dice of each study with the site's tracing (paired, with a
patient-level 95% interval) and, where the site states a reference EF, by the EF error. The new bundle
is written either way; its model card says whether it is better and by how much.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..domain import Frame, Label
from ..errors import StudyError, UsageError
from ..io import camus, echonet
from ..io.atomic import atomic_folder, write_json
from ..io.untrusted import read_bounded
from ..measure import ef
from ..model import dataset, finetune, overlap, segmentation
from ..model.network import check_state, load_checkpoint, model_fingerprint, network_to_load, save_bundle
from ..stats.agreement import paired_difference
from .predict import ef_method

MIN_SITE_STUDIES = 6  # fewer cannot be split into studies to train on and studies to judge by
ASIDE_FRACTION = 0.3


def camus_site_frames(folder: Path) -> tuple[dict, float]:
    """A CAMUS-layout patient folder's traced frames (images with their label maps) and its cfg EF."""
    study = camus.read_study(folder)
    return dict(study.frames), camus.reference_ef(study.info, study.cfg_error)[0]


def echonet_site_frames(video: echonet.Video) -> tuple[dict, float]:
    """An EchoNet-Dynamic video's two traced frames as 4CH ED and ES, each labelled LV inside the
    tracing and ``NOT_LV`` outside it; and its reference EF. StudyError without two tracings."""
    from ..io.video import read_video

    phases = video.traced_phases()
    if video.path is None or phases is None:
        raise StudyError("no_tracing", f"{video.name}: a video with two traced frames is needed")
    loop = read_video(video.path)
    frames = {}
    for phase, tracing in zip(("ED", "ES"), phases):
        if not 0 <= tracing.frame < len(loop.frames):
            raise StudyError("bad_phase_frames", f"{video.name}: traced frame {tracing.frame} of {len(loop.frames)}")
        label = np.where(tracing.mask(loop.frames.shape[1:]), Label.LV, finetune.NOT_LV).astype(np.uint8)
        frames[("4CH", phase)] = Frame(loop.frames[tracing.frame].astype(np.float32), label, loop.spacing_mm, loop.header)
    return frames, video.ef_ref


def read_site(inputs: list[Path]) -> dict[str, tuple[dict, float]]:
    """Every usable study of the site: name -> (traced frames, reference EF or NaN); a study that
    cannot be read is left out and named on stderr."""
    import sys

    found, skipped = {}, []
    for folder in inputs:
        if echonet.file_list(folder):
            for video in echonet.read_cohort(folder):
                try:
                    found[video.name] = echonet_site_frames(video)
                except StudyError as error:
                    skipped.append(str(error))
        else:
            try:
                found[Path(folder).name] = camus_site_frames(Path(folder))
            except StudyError as error:
                skipped.append(f"{Path(folder).name}: {error}")
    if skipped:
        print(f"site-tune: {len(skipped)} study(ies) left out: " + "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else ""),
              file=sys.stderr)
    return found


def split_aside(names: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(studies to train on, studies kept aside to judge by): a seeded shuffle, at least 3 aside."""
    order = list(np.random.default_rng(seed).permutation(sorted(names)))
    count = max(3, round(fraction * len(order)))
    return sorted(order[count:]), sorted(order[:count])


def tensors(studies: dict, names: list[str], phases: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid tensors of the named studies' frames in the input order of members reading ``phases``."""
    frames = [studies[name][0][key] for name in names for key in dataset.input_order(studies[name][0], phases)]
    images, labels, _ = dataset.grid_tensors(frames, size)
    return images, labels


def judge(models: list, studies: dict, names: list[str], size: int, batch_size: int, precision: str) -> dict:
    """Per kept-aside study: its mean LV Dice with the site's tracing (on the native grid, after the
    pipeline's clean-up) and, where it has a reference and a complete view, its EF error."""
    dice, errors = [], []
    for name in names:
        frames, ef_ref = studies[name]
        labels = segmentation.predict_frames(models, frames, size, batch_size, False, precision)
        dice.append(float(np.nanmean([float(overlap.dice(labels[k][None], frame.label[None], labels=(Label.LV,))[0, 0])
                                      for k, frame in frames.items()])))  # frames of other sizes: one at a time
        method = ef_method({v for v, _ in frames if all((v, p) in frames for p in ("ED", "ES"))})
        row = ef.patient_ef({k: (labels[k], f.spacing_mm) for k, f in frames.items()}, method) if method else {"status": ""}
        errors.append(float(row["ef"]) - ef_ref if ef.is_measured(row["status"]) and math.isfinite(ef_ref) else math.nan)
    return {"lv_dice": np.array(dice), "ef_error": np.array(errors)}


def verdict(before: dict, after: dict) -> dict:
    """Whether the fine-tuned networks are better on the kept-aside studies: the paired LV Dice
    difference (after - before) with its 95% interval, better only if the interval lies above zero;
    and the EF MAE before and after on the studies with a reference EF."""
    dice = paired_difference(before["lv_dice"], after["lv_dice"], 2000, 0)
    with_ef = np.isfinite(before["ef_error"]) & np.isfinite(after["ef_error"])
    mae = paired_difference(np.abs(before["ef_error"][with_ef]), np.abs(after["ef_error"][with_ef]), 2000, 0)
    return {"n_aside": int(len(before["lv_dice"])), "lv_dice_before": float(before["lv_dice"].mean()),
            "lv_dice_after": float(after["lv_dice"].mean()), "lv_dice_after_minus_before": dice,
            "n_with_reference_ef": int(with_ef.sum()),
            "ef_mae_before": float(np.abs(before["ef_error"][with_ef]).mean()) if with_ef.any() else math.nan,
            "ef_mae_after": float(np.abs(after["ef_error"][with_ef]).mean()) if with_ef.any() else math.nan,
            "ef_mae_after_minus_before": mae, "better": bool(dice["ci"][0] > 0)}


def card_section(report: dict) -> str:
    """The model card's section on the fine-tuning."""
    d, m = report["lv_dice_after_minus_before"], report["ef_mae_after_minus_before"]
    lines = ["", "## Site fine-tuning", "",
             f"- From bundle {report['base_fingerprint']} ({report['base']}), trained {report['settings']['epochs']} epochs "
             f"(peak learning rate {report['settings']['lr']:g}) on {report['n_trained']} of the site's studies; "
             f"{report['n_aside']} kept aside to judge.",
             f"- Kept-aside LV Dice with the site's tracing {report['lv_dice_before']:.3f} -> {report['lv_dice_after']:.3f} "
             f"(after - before {d['mean']:+.3f} [95% CI {d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]).",
             (f"- Kept-aside EF MAE against the site's reference {report['ef_mae_before']:.1f} -> {report['ef_mae_after']:.1f} "
              f"points on {report['n_with_reference_ef']} studies (after - before {m['mean']:+.1f} "
              f"[{m['ci'][0]:+.1f}, {m['ci'][1]:+.1f}]).") if report["n_with_reference_ef"] else
             "- No kept-aside study states a reference EF: the EF effect is not measured.",
             "- Verdict: " + ("**better** on the kept-aside studies (the Dice interval lies above zero)." if report["better"] else
                              "**not shown better** on the kept-aside studies: keep using the base bundle, or trace more studies."),
             "- The calibrator and its interval are the base bundle's, fitted before this fine-tuning: fit the site's own with "
             "`echoef site-calibrate` on studies not used here.", ""]
    return "\n".join(lines)


def site_tune(inputs: list[Path], model: Path, out: Path, settings: finetune.FineTune, aside_fraction: float,
              device: str, precision: str) -> dict:
    """Fine-tune bundle ``model`` on the site's studies in ``inputs`` and write the new bundle ``out``;
    returns the comparison on the kept-aside studies."""
    if not (model.is_dir() and (model / "calibrator.json").is_file()):
        raise UsageError(f"--model {model}: give a bundle folder of echoef export (weights, model.json, calibrator.json)")
    studies = read_site(inputs)
    if len(studies) < MIN_SITE_STUDIES:
        raise UsageError(f"{len(studies)} usable traced studies; site fine-tuning needs at least {MIN_SITE_STUDIES} "
                         "(some to train on, some kept aside to judge by)")
    models, state = load_checkpoint(model, device)
    network = check_state(state)
    size = network.input_size
    trained, aside = split_aside(list(studies), aside_fraction, settings.seed)
    batch = max(network.member_phases()) * math.ceil(settings.batch_size / max(network.member_phases()))
    config = finetune.train_config(network, settings if batch == settings.batch_size else
                                   finetune.FineTune(settings.epochs, settings.lr, batch, settings.seed), device, precision)
    sets = {phases: (tensors(studies, trained, phases, size), tensors(studies, aside, phases, size))
            for phases in set(network.member_phases())}
    before = judge(models, studies, aside, size, settings.batch_size, precision)
    tuned = finetune.fine_tune(_copies(models, network, device), sets, config, device,
                               lambda member, epoch, row: print(f"site-tune: member {member} epoch {epoch + 1}: loss "
                                                                f"{row['train_loss']:.4f} kept-aside LV Dice {row['val_dice_lv']:.4f}",
                                                                flush=True))
    new_models = _copies(models, network, device)
    for member, result in zip(new_models, tuned):
        member.load_state_dict(result["state_dict"])
        member.eval()
    after = judge(new_models, studies, aside, size, settings.batch_size, precision)
    report = {**verdict(before, after), "base": str(model), "base_fingerprint": model_fingerprint(model),
              "n_trained": len(trained), "trained": trained, "aside": aside, "settings": asdict(settings)}
    new_state = {**{k: v for k, v in state.items() if k != "state_dicts"}, "state_dicts": [r["state_dict"] for r in tuned],
                 "fine_tuned": {k: v for k, v in report.items() if k not in ("trained", "aside")}}
    card = read_bounded(model / "MODEL_CARD.md").decode("utf-8", errors="replace") if (model / "MODEL_CARD.md").is_file() \
        else "# EchoEF model card\n"
    with atomic_folder(out) as folder:
        save_bundle(folder, new_state)
        for name in ("calibrator.json", "novelty.json"):
            if (model / name).is_file():
                shutil.copy2(model / name, folder / name)
        (folder / "MODEL_CARD.md").write_text(card.rstrip("\n") + "\n" + card_section(report))
        write_json(folder / "site_tuning.json", report)
    return report


def _copies(models: list, network, device: str) -> list:
    """Fresh networks holding the given members' weights (the bundle's own stay as they are)."""
    copies = []
    for model in models:
        copy = network_to_load(network, model.phases_per_input, device)
        copy.load_state_dict(model.state_dict())
        copy = copy.to(memory_format=torch.channels_last)
        copies.append(copy)
    return copies


def write_simulated_site(root: Path, patients: list[str], out: Path, shift, seed: int) -> dict[str, float]:
    """CAMUS patients of ``root`` as a simulated site (``io.site_shift``) in the CAMUS 2023 layout under
    ``out/database_nifti``: each frame's image as the site's scanner shows it, its label map as the
    site traces it, and in Info_2CH.cfg the site's reference EF, Simpson's biplane on those tracings
    (rounded, as CAMUS's). Returns patient -> site EF."""
    from ..io.imagefile import write_image, write_label
    from ..io.site_shift import shift_image, site_label

    found = {}
    for number, patient in enumerate(patients):
        source = next(p for p in (root / "database_nifti" / patient, root / patient) if p.is_dir())
        study = camus.read_study(source)
        folder = out / "database_nifti" / patient
        folder.mkdir(parents=True, exist_ok=True)
        traced = {}
        for index, ((view, phase), frame) in enumerate(sorted(study.frames.items())):
            rng = np.random.default_rng([seed, number, index])
            write_image(shift_image(frame.image, frame.spacing_mm, shift, rng), frame.header,
                        folder / f"{patient}_{view}_{phase}.nii.gz")
            traced[(view, phase)] = (site_label(frame.label, phase, frame.spacing_mm, shift), frame.spacing_mm)
            write_label(traced[(view, phase)][0], frame.header, folder / f"{patient}_{view}_{phase}_gt.nii.gz")
        row = ef.patient_ef(traced, "simpson_biplane")
        found[patient] = float(round(row["ef"])) if ef.is_measured(row["status"]) else math.nan
        quality = study.info.get("2CH", {}).get("ImageQuality", "")
        (folder / "Info_2CH.cfg").write_text(f"ImageQuality: {quality}\nEF: {found[patient]:.0f}\n"
                                             if math.isfinite(found[patient]) else f"ImageQuality: {quality}\n")
        (folder / "Info_4CH.cfg").write_text("")
    return found
