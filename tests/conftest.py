import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from hypothesis import settings

# Property tests draw the same examples on every run: a red CI run can be reproduced.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
CAMUS = SHARED / "camus"
CAMUS_2019 = SHARED / "camus-2019-sample"

# Only where the shared data is absent may its tests skip; .ci/run makes that absence a failure.
needs_shared = pytest.mark.skipif(not CAMUS.is_dir(), reason="../shared/data/camus is absent")


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

    from echoef import calibration, model as M
    from echoef.io import write_json

    config = {"encoder": "resnet18", "encoder_weights": None, "encoder_depth": 3, "decoder_channels": [16, 8, 4],
              "input_size": 32, "phases_per_input": 1}
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_model")
    M.save_checkpoint(out / "segmenter.pt", [M.build_unet(config).state_dict()], config, {})
    calibrator = calibration.fit([30.0, 50, 70], [32.0, 51, 69], "linear", (5, 95), "val")
    write_json(out / "calibrator.json", {**calibrator, "ef_method": "simpson_biplane"})
    return out
