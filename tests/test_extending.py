"""The three recipes of docs/extending.md, each performed as written on the synthetic cohort."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_model import config, data

from echoef import domain, params
from echoef.errors import StudyError
from echoef.io import imagefile
from echoef.model import network, runtime, training

from conftest import ROOT, echoef_in_process

VENV_BIN = Path(sys.executable).parent


def test_recipe_1_add_an_architecture(monkeypatch):
    """A builder in network.ARCHITECTURES and its name in domain.NETWORK_ARCHITECTURES: the parameter
    takes it, a network of it trains a step, and the paired wrapper takes it too."""
    import segmentation_models_pytorch as smp

    def linknet(network_config, **common):
        return smp.Linknet(**common)

    monkeypatch.setitem(network.ARCHITECTURES, "Linknet", linknet)
    monkeypatch.setattr(domain, "NETWORK_ARCHITECTURES", (*domain.NETWORK_ARCHITECTURES, "Linknet"))
    monkeypatch.setattr(params.Network.__dataclass_fields__["architecture"], "metadata",
                        {"check": params._choice(*domain.NETWORK_ARCHITECTURES)})
    train = config(network={"architecture": "Linknet"})
    for phases in (1, 2):
        runtime.seed_everything(0)
        net = network.build_network(train.network, phases)
        assert net.network.__class__.__name__ == "Linknet"
        _, _, history = training.Trainer(net, data(), data(4), train, "cpu").run()
        assert len(history) == 1


def _read_npy(path: Path, spacing_mm):
    """The recipe's example format: a NumPy frame (H, W) or loop (T, H, W), its pixel size in a
    sidecar JSON ({"spacing_mm": [row, col]})."""
    frames = np.load(path, allow_pickle=False)
    frames = frames[None] if frames.ndim == 2 else frames
    sidecar = path.with_suffix(".json")
    stated = json.loads(sidecar.read_text())["spacing_mm"] if sidecar.is_file() else None
    spacing = tuple(map(float, stated or spacing_mm or ())) or None
    if spacing is None:
        raise StudyError("no_spacing", f"{path.name}: no {sidecar.name} states its pixel size; give --spacing-mm ROW COL")
    imagefile.check_pixels(frames, spacing, path.name)
    return imagefile.Loop(frames.astype(np.float32), spacing, imagefile.Header.plain(spacing), None)


def test_recipe_2_add_an_input_format(monkeypatch, phantom_root, tiny_model, tmp_path):
    """One reading function and one entry in imagefile.READERS: predict reads the new files as frames
    and as a loop, and a file without its pixel size is refused as no_spacing."""
    monkeypatch.setattr(imagefile, "READERS", [*imagefile.READERS, imagefile.Reader("NumPy frame", (".npy",), _read_npy)])
    arguments = []
    for key in ("2CH_ED", "2CH_ES"):
        image, spacing_mm, _ = imagefile.read_image(phantom_root / "database_nifti" / "patient0001" / f"patient0001_{key}.nii.gz")
        np.save(tmp_path / f"{key}.npy", image)
        (tmp_path / f"{key}.json").write_text(json.dumps({"spacing_mm": list(spacing_mm)}))
        arguments += [f"--{key.lower().replace('_', '-')}", tmp_path / f"{key}.npy"]
    result = echoef_in_process("predict", *arguments, "--patient", "npy", "--out", tmp_path / "out",
                               "--model", tiny_model / "segmenter.pt", "--calibrator", tiny_model / "calibrator.json")
    row = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    assert "unsupported_format" not in str(row["status"]) + str(row["detail"]), result.stderr
    assert row["frames"] == "2CH_ED+2CH_ES"
    (tmp_path / "2CH_ED.json").unlink()
    with pytest.raises(StudyError, match="no_spacing"):
        imagefile.read_loop(tmp_path / "2CH_ED.npy")
    assert imagefile.read_loop(tmp_path / "2CH_ED.npy", (0.3, 0.4)).spacing_mm == (0.3, 0.4)


STAGE = '''"""Mean EDV and ESV of the measured patients of an EF table."""

import argparse
from pathlib import Path

import pandas as pd

from echoef.stats import agreement
from echoef.io.atomic import write_json
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ef", type=Path, required=True, help="the EF table")
    parser.add_argument("--out", type=Path, required=True, help="the volumes (JSON)")
    args = parser.parse_args()
    table = pd.read_csv(args.ef)
    write_json(args.out, {"edv_ml": float(table["edv_ml"].mean()), "esv_ml": float(table["esv_ml"].mean()),
                          "n": agreement.summary(table["ef"], table["ef"])["n"]})
    print(f"volumes: {len(table)} patients")


if __name__ == "__main__":
    run(main)
'''


def test_recipe_3_add_a_stage(tmp_path):
    """A thin script, its dvc.yaml entry, `make deps`: DVC lists it with every module it reaches
    (agreement and what agreement imports), and `dvc repro` runs it."""
    for folder in ("echoef", "stages", "conf"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", "Makefile"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "stages" / "volumes.py").write_text(STAGE)
    with open(tmp_path / "dvc.yaml", "a") as handle:
        handle.write("  volumes:\n    cmd: python stages/volumes.py --ef data/ef.csv --out metrics/volumes.json\n"
                     "    deps:\n      - data/params.ok\n      - data/ef.csv\n    metrics:\n      - metrics/volumes.json:\n"
                     "          cache: false\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "params.ok").write_text("{}")
    pd.DataFrame({"ef": [50.0, 60.0], "edv_ml": [100.0, 120.0], "esv_ml": [50.0, 48.0]}).to_csv(tmp_path / "data" / "ef.csv", index=False)
    subprocess.run([sys.executable, "-m", "echoef.app.codedeps", "dvc.yaml"], cwd=tmp_path, check=True, capture_output=True)  # make deps
    stage = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]["volumes"]
    assert {"stages/volumes.py", "echoef/stats/agreement.py", "echoef/stats/calibration.py", "echoef/io/atomic.py"} <= set(stage["deps"])
    assert stage["deps"][0] == "data/params.ok" and "data/ef.csv" in stage["deps"]
    dvc = str(VENV_BIN / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "config", "core.analytics", "false"], cwd=tmp_path, check=True)
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([dvc, "repro", "--single-item", "volumes"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "metrics" / "volumes.json").read_text()) == {"edv_ml": 110.0, "esv_ml": 49.0, "n": 2}
