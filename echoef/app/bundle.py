"""A trained run packed to travel: ``echoef export --out DIR`` writes the networks' weights in a safe
format (safetensors), what built them, the calibrator with its prediction interval, and a model card
whose numbers are the run's own metric files. ``echoef predict --model DIR`` takes it."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import yaml

from ..errors import UsageError
from ..io.atomic import atomic_folder, read_json
from ..model import novelty
from ..reporting.report import fmt
from ..stats import calibration

LICENCE = ("CAMUS data: CC BY-NC-SA 4.0, non-commercial research use only. Cite: S. Leclerc et al., \"Deep Learning for "
           "Segmentation using an Open Large-Scale Dataset in 2D Echocardiography\", IEEE TMI 38(9):2198-2210, 2019, "
           "doi:10.1109/TMI.2019.2900516. Networks trained on it inherit its terms.")


def dataset_name(profile: str | None) -> str:
    """The dataset a profile trains on, as a reader elsewhere knows it (a card travels to other labs,
    where the folder it was read from means nothing)."""
    if profile == "synthetic":
        return "the synthetic cohort of EchoEF (ellipsoid phantoms; profile synthetic)"
    if str(profile).startswith("camus"):
        return f"CAMUS (Leclerc et al., IEEE TMI 2019), its development split (profile {profile})"
    return f"a CAMUS-layout dataset (profile {profile})"


def model_card(params: dict, train_log: dict, ef: dict, calibrator: dict, coverage: float | None,
               novelty_reference: dict | None = None) -> str:
    """MODEL_CARD.md: what the networks are, what they saw, how they did (the run's own metrics
    with their intervals), what they are for, and the data's licence."""
    network = params["train"]["network"]
    synthetic = params.get("profile") == "synthetic"
    interval = calibrator.get("interval", {})
    lines = ["# EchoEF model card", ""]
    if synthetic:
        lines += ["**Trained on the synthetic cohort only (ellipsoid phantoms). Its EF on real echocardiograms means "
                  "nothing; it exists to test the software.**", ""]
    lines += [
        "## The networks", "",
        f"- {network['members']} {network.get('architecture', 'Unet')} network(s), "
        f"encoder {network['encoder']} (depth {network['encoder_depth']}, no pretrained "
        f"weights), {network['input_size']}-pixel grid, frames per input {network['phases_per_input']}; mean softmax of the members.",
        "- Input: 2D apical 2CH and 4CH frames at ED and ES with their physical pixel size; labels LV cavity, myocardium, left atrium.",
        "- EF: Simpson's biplane method of discs on the LV masks (a port of the CAMUS reference algorithm), then the calibrator.",
        "", "## Training", "",
        f"- Data: {dataset_name(params.get('profile'))}; {len(train_log.get('train_patients', []))} "
        f"training and {len(train_log.get('val_patients', []))} validation patients.",
        f"- On {train_log.get('device')} in {train_log.get('precision')}, {fmt((train_log.get('train_seconds') or math.nan) / 60, 0)} min "
        f"({(train_log.get('environment') or {}).get('gpu') or ((train_log.get('environment') or {}).get('cpu') or {}).get('model')}).",
        f"- Calibrator: {calibrator['method']} on the {calibrator.get('fit_set')} patients (n = {calibrator.get('n')}).",
        "", "## Results on the run's test list (development figures)", "",
        f"- EF MAE after calibration {fmt(ef['mae'])} points [95% CI {fmt(ef['mae_low'])}, {fmt(ef['mae_high'])}], "
        f"before {fmt(ef['mae_uncalibrated'])}; bias {fmt(ef['bias'])}, limits of agreement {fmt(ef['loa_low'])} to "
        f"{fmt(ef['loa_high'])}; r {fmt(ef['r'], 3)} [{fmt(ef['r_low'], 3)}, {fmt(ef['r_high'], 3)}]; "
        f"{ef['n']} patients measured, {ef['n_failed']} failed.",
    ]
    if interval.get("half_width") is not None:
        lines.append(f"- Prediction interval: calibrated EF ± {fmt(interval['half_width'])} points, "
                     f"{100 * interval['level']:.0f}% split-conformal on {interval['n']} validation patients"
                     + (f"; coverage on the test list {fmt(coverage)}" if coverage is not None else "") + ".")
    if novelty_reference is not None:
        lines.append(f"- Unlike the training data (review flag `unlike_training`): flags {novelty.rate_text(novelty_reference)}.")
    lines += ["", "## Intended use", "",
              "Research on echocardiographic EF measurement. Not a medical device: not for diagnosis or treatment "
              "decisions. Check every EF against its overlays (the masks and the Simpson construction) and flags.",
              "", "## Licence", "", LICENCE, ""]
    return "\n".join(lines)


def export(out: Path, model: Path, calibrator: Path, train_log: Path, params: Path, metrics: Path, full: Path,
           novelty_path: Path | None = None) -> Path:
    """Write the bundle folder ``out`` from a finished run's files (``full``: its complete statistics,
    for the interval's coverage; ``novelty_path``: its unlike-training reference, when it has one)."""
    from ..model.network import load_checkpoint, save_bundle

    missing = [str(p) for p in (model, calibrator, train_log, params, metrics) if not Path(p).is_file()]
    if missing:
        raise UsageError(f"no finished run to export ({', '.join(missing)} missing); run dvc repro first")
    _, state = load_checkpoint(model)  # refuses what the model file should not hold
    run_params = yaml.safe_load(Path(params).read_text())
    state["trained_on"] = {"profile": run_params.get("profile"), "dataset": dataset_name(run_params.get("profile")),
                           "synthetic": run_params.get("profile") == "synthetic"}
    final = Path(out)
    coverage = read_json(full)["test"].get("interval", {}).get("coverage") if Path(full).is_file() else None
    try:
        checked = calibration.validate(read_json(calibrator))
    except ValueError as error:
        raise UsageError(f"--calibrator {calibrator}: refused: {str(error).splitlines()[0][:200]}") from error
    reference = None
    if novelty_path is not None and Path(novelty_path).is_file():
        try:
            reference = novelty.validate(read_json(novelty_path))
        except ValueError as error:
            raise UsageError(f"--novelty {novelty_path}: refused: {str(error).splitlines()[0][:200]}") from error
    card = model_card(run_params, read_json(train_log), read_json(metrics), checked, coverage, reference)
    with atomic_folder(final) as out:  # a bundle is written whole or not at all
        save_bundle(out, state)
        shutil.copy2(calibrator, out / "calibrator.json")
        if reference is not None:
            shutil.copy2(novelty_path, out / "novelty.json")
        (out / "MODEL_CARD.md").write_text(card)
    return final
