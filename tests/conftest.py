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


def pytest_collection_modifyitems(items):
    """The longest file first: under `make test` (xdist, one worker per file, no reordering) the end-to-end
    file, the critical path at about two thirds of the suite on one core, starts at once on one worker while
    the other takes every other file; started last, it set the suite's length (docs/experiment-log.md, "The
    test suite on two cores")."""
    items.sort(key=lambda item: item.module.__name__ != "test_pipeline")


def echoef_in_process(*args) -> subprocess.CompletedProcess:
    """The `echoef` command line run in this process (its imports already paid for): exit status,
    stdout and stderr, as ``subprocess.run`` would give them."""
    from echoef.app import cli

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
    from echoef.io import imagefile

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
    from echoef.io import phantom

    root = tmp_path_factory.mktemp("phantom")
    phantom.write_cohort(root, 12, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An untrained one-network U-Net on a 32-pixel grid and a linear calibrator: the cheapest model
    ``predict`` loads (its masks are noise, which is what robustness tests want)."""
    import torch

    from echoef import params
    from echoef.io.atomic import write_json
    from echoef.model import network
    from echoef.stats import calibration

    config = params.build(params.Network, {"architecture": "Unet", "encoder": "resnet18", "encoder_weights": None, "encoder_depth": 3,
                                           "decoder_channels": [16, 8, 4], "input_size": 32, "phases_per_input": 1, "members": 1})
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_model")
    network.save_checkpoint(out / "segmenter.pt", [network.build_network(config, 1).state_dict()], config, {})
    calibrator = calibration.fit([30.0, 50, 70], [32.0, 51, 69], "linear", (5, 95), "val")
    write_json(out / "calibrator.json", {**calibrator, "ef_method": "simpson_biplane"})
    return out


def write_dicom(path: Path, frames, region_spacing_mm=None, pixel_spacing_mm=None, patient="P001", study_uid="1.2.826.0.1.1",
                rgb=False, frame_ms=None, regions=()) -> Path:
    """An ultrasound DICOM file of one frame (H, W) or a loop (T, H, W) of 8-bit pixels, its pixel size
    in an ultrasound region over the whole picture (cm, as scanners write it) and/or in PixelSpacing,
    or in neither; ``regions`` (x0, y0, x1, y1 inclusive, (row, col) mm) are 2D regions of their own."""
    import hashlib

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(frames, dtype=np.uint8)
    count = pixels.shape[0] if pixels.ndim == 3 else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1" if count > 1 else "1.2.840.10008.5.1.4.1.1.6.1"
    # UIDs from the file's name and pixels, not random ones: the same file byte for byte on every run,
    # so that a property test that damages it at byte N damages the same value each time.
    facts = [path.name, patient, study_uid, str(pixels.shape), hashlib.sha256(pixels.tobytes()).hexdigest()]
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["instance", *facts])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.StudyInstanceUID, ds.Modality = patient, study_uid, "US"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", *facts])
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if rgb:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if count > 1:
        ds.NumberOfFrames = count
        if frame_ms:
            ds.FrameTime = frame_ms
    if region_spacing_mm is not None:
        regions = [(0, 0, int(ds.Columns) - 1, int(ds.Rows) - 1, region_spacing_mm), *regions]
    if regions:
        ds.SequenceOfUltrasoundRegions = []
    for x0, y0, x1, y1, spacing_mm in regions:
        region = Dataset()
        region.RegionSpatialFormat, region.RegionDataType = 1, 1
        region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
        region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3
        region.PhysicalDeltaX, region.PhysicalDeltaY = spacing_mm[1] / 10, spacing_mm[0] / 10
        ds.SequenceOfUltrasoundRegions.append(region)
    if pixel_spacing_mm is not None:
        ds.PixelSpacing = [pixel_spacing_mm[0], pixel_spacing_mm[1]]
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path



def encapsulated_dicom(path, frame: bytes, syntax, bits_stored=8, frames=None, rows=32, cols=32):
    """A ``rows`` x ``cols`` DICOM whose pixel data is ``frame`` (or the list ``frames``, one fragment
    each) encapsulated under ``syntax``."""
    import numpy as np
    import pydicom
    from pydicom.encaps import encapsulate

    frames = [frame] if frames is None else frames
    path = write_dicom(path, np.zeros((len(frames), rows, cols)), region_spacing_mm=(0.3, 0.3))
    dataset = pydicom.dcmread(path)
    dataset.PixelData = encapsulate(frames)
    dataset["PixelData"].VR, dataset["PixelData"].is_undefined_length = "OB", True
    dataset.file_meta.TransferSyntaxUID = syntax
    if bits_stored > 8:
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, bits_stored, bits_stored - 1
    dataset.save_as(path, enforce_file_format=True)
    return path


# For a child process's script: its peak memory (kB) since it started. Not ru_maxrss, which Linux keeps
# across exec: a child of the test process starts at the test process's size and may never pass it.
PEAK_KB = ("def peak_kb():\n"
           "    return int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1])\n")


def deflated_copy(source: Path, target: Path, trailing_zero_bytes: int = 0) -> Path:
    """The DICOM file ``source`` (explicit VR little endian) in the deflated transfer syntax, with a
    private OB element of ``trailing_zero_bytes`` zeros after its pixels when asked (a deflate bomb:
    a few hundred kB that inflate to that many bytes), streamed, never held in memory."""
    import struct
    import zlib

    from pydicom.filebase import DicomFileLike
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    with open(source, "rb") as handle:
        read_preamble(handle, False)
        meta, body = _read_file_meta_info(handle), handle.read()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(target, "wb") as out:
        out.write(bytes(128) + b"DICM")
        writer = DicomFileLike(out)
        writer.is_little_endian, writer.is_implicit_VR = True, False
        write_file_meta_info(writer, meta, enforce_standard=False)
        out.write(compressor.compress(body))
        if trailing_zero_bytes:
            out.write(compressor.compress(struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, trailing_zero_bytes)))
            zeros = bytes(1 << 24)
            for start in range(0, trailing_zero_bytes, len(zeros)):
                out.write(compressor.compress(zeros[: min(len(zeros), trailing_zero_bytes - start)]))
        out.write(compressor.flush())
    return target


TINY = train_config({
    "seed": 0,
    "network": {"architecture": "Unet", "encoder": "resnet18", "encoder_weights": None, "encoder_depth": 3, "decoder_channels": [64, 32, 16],
                "input_size": 64, "phases_per_input": 1, "members": 2},
    "optimisation": {"epochs": 4, "batch_size": 8, "lr": 0.003, "weight_decay": 0.0001, "dice_weight": 1.0, "ce_weight": 1.0,
                     "ema_decay": 0.9, "ef_weight": 0.0, "es_weight": 0.0},
    "augment": {"rotation_deg": 5, "scale": 0.05, "gamma": 0.1, "blur_sigma_px": 1.0, "noise_std": 0.02},
    "runtime": {"device": "cpu", "threads": 0, "processes": 1, "parallel_members": 1, "precision": "fp32"}})
SIZE = TINY.network.input_size


@pytest.fixture(scope="session")
def trained(phantom_root, tmp_path_factory):
    """A two-member U-Net ensemble trained briefly on 10 synthetic patients, and a linear calibrator file."""
    import json

    import numpy as np

    from echoef.io import camus
    from echoef.model import dataset, network, training
    from echoef.stats import calibration

    folders = camus.find_patients(phantom_root)
    frames = [f for p in folders[:10] for f in camus.read_study(p).frames.values()]
    images, labels, _ = dataset.grid_tensors(frames, SIZE)
    members = training.train_members((images[:32], labels[:32]), (images[32:], labels[32:]), TINY, "cpu")
    out = tmp_path_factory.mktemp("model")
    network.save_checkpoint(out / "segmenter.pt", [m["state_dict"] for m in members], TINY.network, {})
    calibrator = calibration.fit(np.array([30.0, 50, 70]), np.array([32.0, 51, 69]), "linear", (5, 95), "val")
    (out / "calibrator.json").write_text(json.dumps({**calibrator, "ef_method": "simpson_biplane"}))
    return out
