"""Cine loops as videos (AVI, MP4): read as grey by luminance with their frame rate, measured as EF only
without a pixel size (volumes empty, label maps as pictures), with volumes when --spacing-mm gives one."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from echoef.errors import StudyError
from echoef.io import camus, imagefile, phantom, video

from conftest import PEAK_KB, echoef_in_process

write_video = video.write_video


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_loops")
    phantom.write_cohort(root, 12, seed=3)
    return root, phantom.write_loops(root, 12, seed=3)


@pytest.mark.parametrize("suffix,codec", [(".mp4", "mpeg4"), (".avi", "mjpeg")])
def test_a_video_is_read_as_grey_frames_with_its_frame_rate(loops, tmp_path, suffix, codec):
    folder = camus.find_patients(loops[0])[11]
    source = imagefile.read_loop(folder / f"{folder.name}_4CH_sequence.nii.gz")
    path = write_video(tmp_path / f"a4c{suffix}", source.frames, fps=50, codec=codec)
    loop = imagefile.read_loop(path)
    height, width = (s // 2 * 2 for s in source.frames.shape[1:])
    assert loop.frames.shape == (len(source.frames), height, width)
    original = source.frames[:, :height, :width].astype(np.float32)
    assert np.abs(loop.frames - original).mean() < 8  # a lossy codec: speckle blurred, grey levels kept
    assert abs(loop.frames.mean() - original.mean()) < 1.5 and np.corrcoef(loop.frames.ravel(), original.ravel())[0, 1] > 0.9
    assert loop.frame_ms == pytest.approx(20.0)
    assert not loop.spacing_stated and loop.spacing_mm == (video.NOMINAL_DEPTH_MM / width,) * 2
    given = imagefile.read_loop(path, (0.58, 0.58))
    assert given.spacing_stated and given.spacing_mm == (0.58, 0.58)


def test_a_video_without_a_pixel_size_gives_ef_only(trained, loops, tmp_path):
    """The same beating 4CH loop as NIfTI (its pixel size stated) and as MP4 (none): the video's row
    has the EF, no volumes, status ok_ef_only, a review flag, and its label maps as pictures; with
    --spacing-mm it has volumes again."""
    folder = camus.find_patients(loops[0])[11]
    nifti = folder / f"{folder.name}_4CH_sequence.nii.gz"
    source = imagefile.read_loop(nifti)
    mp4 = write_video(tmp_path / "a4c.mp4", source.frames)
    model = ["--model", trained / "segmenter.pt", "--calibrator", trained / "calibrator.json"]
    echoef_in_process("predict", "--4ch", nifti, "--patient", "nifti", "--out", tmp_path / "out", *model)
    from_nifti = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    result = echoef_in_process("predict", "--4ch", mp4, "--patient", "video", "--out", tmp_path / "out", *model)
    assert "Traceback" not in result.stderr
    from_video = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    assert from_nifti["status"] == "ok_single_plane" and from_nifti["edv_ml"] > 0
    assert from_video["status"] == "ok_ef_only" and from_video["method"] == "simpson_single_plane_4ch"
    assert math.isnan(from_video["edv_ml"]) and math.isnan(from_video["esv_ml"])
    assert "no_pixel_size" in from_video["review"]
    assert abs(from_video["ef"] - from_nifti["ef"]) <= 5  # same loop: codec loss, another scale for the discs
    assert sorted(p.suffix for p in (tmp_path / "out" / "video").glob("video_4CH_*_gt.*")) == [".png", ".png"]
    echoef_in_process("predict", "--4ch", mp4, "--patient", "given", "--spacing-mm", "0.58", "0.58", "--out", tmp_path / "out", *model)
    given = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    assert given["status"] == "ok_single_plane" and given["edv_ml"] > 0
    assert given["cine"].startswith("4CH ED")


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"RIFF\x10\x00\x00\x00AVI LIST" + bytes(200), "truncated"])
def test_a_broken_video_is_unreadable_not_a_crash(loops, tmp_path, content):
    path = tmp_path / "a4c.mp4"
    if content == "truncated":
        folder = camus.find_patients(loops[0])[0]
        write_video(path, imagefile.read_loop(folder / f"{folder.name}_4CH_sequence.nii.gz").frames)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(StudyError, match="unreadable_file"):
        imagefile.read_loop(path)


def test_an_ef_only_row_keeps_its_flags():
    from echoef.app.predict import as_ef_only

    row = {"ef": 55.0, "edv_ml": 3.0, "esv_ml": 1.35, "status": "implausible:volume_under_5_ml"}
    assert as_ef_only(row)["status"] == "ok_ef_only" and math.isnan(as_ef_only(row)["edv_ml"])
    assert as_ef_only({**row, "status": "ok_single_plane_touches_border:4CH_ED"})["status"] == "ok_ef_only_touches_border:4CH_ED"
    assert as_ef_only({**row, "ef": -3.0, "status": "implausible:esv_not_below_edv"})["status"] == "implausible:esv_not_below_edv"


def _spliced_mjpeg(path, sizes, frames_each=3):
    """An AVI whose stream header states the first picture size while later pictures carry others
    (MJPEG pictures each state their own): what splicing two exports, or crafting one, gives."""
    from fractions import Fraction

    import av

    rng = np.random.default_rng(0)
    packets = []
    for height, width in sizes:
        encoder = av.CodecContext.create("mjpeg", "w")
        encoder.width, encoder.height, encoder.pix_fmt, encoder.time_base = width, height, "yuvj420p", Fraction(1, 25)
        for index in range(frames_each):
            picture = av.VideoFrame.from_ndarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), format="rgb24")
            picture = picture.reformat(format="yuvj420p")
            picture.pts = index
            packets += list(encoder.encode(picture))
        packets += list(encoder.encode(None))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.height, stream.width = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for index, packet in enumerate(packets):
            packet.stream, packet.pts, packet.dts = stream, index, index
            container.mux(packet)
    return path


@pytest.mark.parametrize("later", [(48, 64), (96, 128)])
def test_a_picture_size_that_changes_mid_loop_is_refused(tmp_path, later):
    """Every decoded picture is held to the loop's size before it is converted: the header's size
    check cannot be passed by a small header over larger pictures (a memory bomb), and a loop of
    mixed sizes is a named bad geometry, not a crash in stacking the frames."""
    path = _spliced_mjpeg(tmp_path / "a4c.avi", [(64, 80), later])
    with pytest.raises(StudyError, match=rf"bad_geometry.*frame 3 is {later[0]} x {later[1]} pixels in a loop of 64 x 80"):
        imagefile.read_loop(path)
    assert imagefile.read_loop(_spliced_mjpeg(tmp_path / "same.avi", [(64, 80), (64, 80)])).frames.shape == (6, 64, 80)


def test_a_picture_larger_than_any_frame_may_be_is_never_decoded(tmp_path):
    """An MJPEG AVI whose header and first pictures are 64 x 80 and whose fourth picture, a JPEG of one
    grey (a few hundred kB), states 8,000 x 8,000 pixels. FFmpeg allocated it at that size before its
    size could be checked (the process grew by 150 MB for it; 40,000 x 40,000 would be gigabytes).
    Read in a child process, it is refused, and the process grows by less than 40 MB."""
    import io
    import subprocess
    import sys
    from fractions import Fraction

    import av
    from PIL import Image

    small = _spliced_mjpeg(tmp_path / "small.avi", [(64, 80)])
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000), 90).save(buffer, "JPEG", quality=5)
    with av.open(str(small)) as source, av.open(str(tmp_path / "a4c.avi"), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.height, stream.width, stream.pix_fmt = 64, 80, "yuvj420p"
        packets = [bytes(packet) for packet in source.demux(video=0) if packet.size]
        for index, data in enumerate(packets + [buffer.getvalue()]):
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, index, index, Fraction(1, 25)
            container.mux(packet)
    script = (PEAK_KB + "import sys\n"
              "from echoef.io import imagefile; from echoef.errors import StudyError\n"
              "print(imagefile.read_loop(sys.argv[1]).frames.shape)\n"
              "before = peak_kb()\n"
              "try: print(imagefile.read_loop(sys.argv[2]).frames.shape)\n"
              "except StudyError as error: print(error.reason)\n"
              "print(peak_kb() - before)\n")
    result = subprocess.run([sys.executable, "-c", script, str(small), str(tmp_path / "a4c.avi")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-800:]
    shape, reason, grew_kb = result.stdout.split("\n")[:3]
    assert shape == "(3, 64, 80)" and reason in {"unreadable_file", "bad_geometry"} and int(grew_kb) < 40 << 10, result.stdout


def test_a_video_named_like_an_ffmpeg_url_is_read_as_the_file_it_is(tmp_path, monkeypatch):
    """FFmpeg takes a name for a URL: read by a path relative to the working folder (``predict
    --videos .``), a video called ``file:decoy.avi`` or ``cache:decoy.avi`` was read as ``decoy.avi``,
    and one called ``concat:decoy.avi|decoy.avi`` as that file twice over, a loop of 18 frames no
    file holds. Each is read as its own frames."""
    rng = np.random.default_rng(0)
    own, decoy = rng.integers(0, 255, (6, 32, 48)), rng.integers(0, 255, (9, 40, 40))
    write_video(tmp_path / "decoy.avi", decoy, codec="mjpeg")
    monkeypatch.chdir(tmp_path)
    for name in ("file:decoy.avi", "cache:decoy.avi", "concat:decoy.avi|decoy.avi"):
        write_video(tmp_path / name, own, codec="mjpeg")
        assert imagefile.read_loop(Path(name)).frames.shape == (6, 32, 48), name


@pytest.mark.parametrize("aspect, expected_mm", [
    (None, (150 / 96, 150 / 96)),  # square where the stream states none
    ("2/1", (150 / 128, 300 / 128)),  # stored squeezed: shown 128 wide, twice as wide per pixel
    ("1/2", (150 / 96, 75 / 96)),
    ("1/100", (150 / 96, 150 / 96)),  # no display of an echo loop: taken as none
])
def test_a_video_stream_that_states_non_square_pixels_is_measured_as_shown(tmp_path, aspect, expected_mm):
    """A stream's sample aspect ratio says how wide its pixels are shown: a 96 x 64 picture with 2:1
    pixels is shown 96 x 128, so its nominal pixel size is twice as wide as tall and the displayed
    picture, not the stored one, is 150 mm on its longer side. Square pixels there would measure the
    loop squeezed."""
    from fractions import Fraction

    frames = np.random.default_rng(0).integers(0, 255, (4, 96, 64))
    path = write_video(tmp_path / "a.mp4", frames, pixel_aspect=Fraction(aspect) if aspect else None)
    loop = imagefile.read_loop(path)
    assert loop.spacing_mm == pytest.approx(expected_mm) and not loop.spacing_stated
    assert imagefile.read_loop(path, (0.3, 0.2)).spacing_mm == (0.3, 0.2)  # a size the user gives is the size


def test_a_video_larger_than_any_loop_can_be_is_refused_before_ffmpeg_scans_it(tmp_path):
    """A 5-frame AVI followed by 2 GB of zeros (a sparse file): FFmpeg scanned the padding for frames,
    22 s for 2 GB, so a crafted file of terabytes held the batch for hours. Larger than raw RGB pixels
    of the largest loop allowed, it is refused from its size; the video itself still reads."""
    path = write_video(tmp_path / "a4c.avi", np.random.default_rng(0).integers(0, 255, (5, 48, 40)), codec="mjpeg")
    assert imagefile.read_loop(path).frames.shape == (5, 48, 40)
    with open(path, "r+b") as handle:
        handle.truncate(2 << 30)
    with pytest.raises(StudyError, match="unreadable_file: a4c.avi: 2147483648 bytes, more than a loop"):
        imagefile.read_loop(path)
