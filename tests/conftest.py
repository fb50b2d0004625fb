"""Shared builders of the test suite: the synthetic cohort, tiny models and configurations, the command
line run in-process, and the real CAMUS samples."""

import contextlib
import io
import subprocess
from pathlib import Path

import pytest
import SimpleITK as sitk
from hypothesis import settings

# Property tests draw the same examples on every run: a red CI run can be reproduced.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CAMUS = SHARED / "camus"
CAMUS_2019 = SHARED / "camus-2019-sample"

# Only where the shared data is absent may its tests skip; .ci/run makes that absence a failure.
needs_shared = pytest.mark.skipif(not CAMUS.is_dir(), reason="../shared/data/camus is absent")


def echoef_in_process(*args) -> subprocess.CompletedProcess:
    """The `echoef` command line run in this process (its imports already paid for): exit status,
    stdout and stderr, as ``subprocess.run`` would give them."""
    from echoef import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in args])
    return subprocess.CompletedProcess(["echoef", *map(str, args)], status, out.getvalue(), err.getvalue())


def train_config(base: dict, **groups):
    """A validated ``params.Train`` from a nested dict, with whole groups' keys overridden:
    ``train_config(BASE, network={"members": 2})``."""
    from echoef import params

    mapping = {key: {**value, **groups.get(key, {})} if isinstance(value, dict) else groups.get(key, value)
               for key, value in base.items()}
    return params.build(params.Train, mapping, "train.")


def stored_with_direction(source: Path, target: Path, direction: tuple, origin: tuple) -> None:
    """A copy of a patient folder whose every image file stores the same physical image with another
    direction and origin (the stored array flipped or transposed to match)."""
    from echoef import imagefile

    target.mkdir(parents=True)
    for file in source.iterdir():
        if not file.name.endswith(".nii.gz"):
            (target / file.name).write_bytes(file.read_bytes())
            continue
        array, spacing_mm, _ = imagefile.read_image(file)
        header = imagefile.Header((1.0, 1.0), origin, direction).with_spacing_mm(spacing_mm)
        image = sitk.GetImageFromArray(header.orientation().from_canonical(array))
        image.SetSpacing(header.spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        sitk.WriteImage(image, str(target / file.name))


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    from echoef import phantom

    root = tmp_path_factory.mktemp("phantom")
    phantom.write_cohort(root, 12, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An untrained one-network U-Net on a 32-pixel grid and a linear calibrator: the cheapest model
    ``predict`` loads (its masks are noise, which is what robustness tests want)."""
    import torch

    from echoef import calibration, network, params
    from echoef.io import write_json

    config = params.build(params.Network, {"encoder": "resnet18", "encoder_weights": None, "encoder_depth": 3,
                                           "decoder_channels": [16, 8, 4], "input_size": 32, "phases_per_input": 1, "members": 1})
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_model")
    network.save_checkpoint(out / "segmenter.pt", [network.build_unet(config, 1).state_dict()], config, {})
    calibrator = calibration.fit([30.0, 50, 70], [32.0, 51, 69], "linear", (5, 95), "val")
    write_json(out / "calibrator.json", {**calibrator, "ef_method": "simpson_biplane"})
    return out
