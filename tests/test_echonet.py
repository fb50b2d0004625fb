"""The EchoNet-Dynamic layout as an input: FileList.csv, Videos/, VolumeTracings.csv read as a cohort
of 4CH loops with their reference EF and traced frames; one predict run gives every video's row and
the cohort's agreement report, ED/ES frame errors included. Fixtures are the phantom's beating loops
written in that layout."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from echoef.errors import UsageError
from echoef.io import echonet, phantom, video

from conftest import echoef_in_process


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("echonet")
    return root, phantom.write_echonet(root, 5, seed=4, n_frames=30, period=14)


def predict(trained, *args):
    return echoef_in_process("predict", *args, "--model", trained / "segmenter.pt", "--calibrator", trained / "calibrator.json")


def test_the_layout_is_read_with_its_references(cohort):
    root, truth = cohort
    videos = echonet.read_cohort(root)
    assert [v.name for v in videos] == list(truth)
    for item in videos:
        ed, es = item.traced_phases()
        assert (ed.frame, es.frame) == (truth[item.name]["ed"], truth[item.name]["es"])
        assert item.ef_ref == truth[item.name]["ef"] and item.fps == 50 and item.path.suffix == ".avi"
    assert [v.split for v in videos] == ["TRAIN", "TRAIN", "TRAIN", "VAL", "TEST"]
    assert [v.name for v in echonet.read_cohort(root, "test")] == [list(truth)[4]]


def test_a_tracing_outlines_the_lv_the_video_shows(cohort):
    """The polygon of the chords' ends against the phantom's own cavity, drawn on the same 112-pixel
    grid: they overlap (Dice), and the outline's area is a half-ellipse's, pi L R / 2, less what the
    first and last chords leave out."""
    root, truth = cohort
    item = echonet.read_cohort(root)[0]
    anatomy = phantom.draw_patient(np.random.default_rng([4, 0]))
    (rows, cols), (row_mm, _) = phantom.GRIDS["4CH"]
    side = min(rows, cols)
    for tracing, weight in zip(item.traced_phases(), (1.0, 0.0)):
        _, label, _ = phantom.render_frame(phantom.anatomy_at(anatomy, weight), "4CH", "ED", np.random.default_rng(0))
        square = label[:side, (cols - side) // 2:(cols - side) // 2 + side] == 1
        cavity = ndimage.zoom(square.astype(float), phantom.ECHONET_SIZE / side, order=1) > 0.5
        mask = tracing.mask(cavity.shape)
        assert 2 * (mask & cavity).sum() / (mask.sum() + cavity.sum()) > 0.9
        length, radius = anatomy["length_mm"]["ED"] * weight + anatomy["length_mm"]["ES"] * (1 - weight), \
            anatomy["radius_mm"][("4CH", "ED")] * weight + anatomy["radius_mm"][("4CH", "ES")] * (1 - weight)
        pixel_mm = truth[item.name]["spacing_mm"][0]
        assert tracing.area_px() == pytest.approx(math.pi * length * radius / 2 / pixel_mm ** 2, rel=0.08)
        assert tracing.area_px() == pytest.approx(mask.sum(), rel=0.05)


def test_a_cohort_is_predicted_in_one_run_with_its_agreement_report(trained, cohort, tmp_path):
    root, truth = cohort
    result = predict(trained, root, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "against the given reference EF: MAE" in result.stdout
    table = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("patient")
    assert list(table.index) == list(truth)
    assert (table["status"] == "ok_ef_only").all() and table["method"].eq("simpson_single_plane_4ch").all()
    assert table["edv_ml"].isna().all()  # a video states no pixel size
    assert list(table["ef_ref"]) == [truth[name]["ef"] for name in truth]
    assert list(table["ed_ref_frame"]) == [truth[name]["ed"] for name in truth]
    for name, row in table.iterrows():
        ed, es = (int(v) for v in row["cine"].split()[2:5:2])
        assert row["ed_error_frames"] == ed - truth[name]["ed"] and row["es_error_frames"] == es - truth[name]["es"]
    report = json.loads((tmp_path / "out" / "agreement.json").read_text())
    errors = table["ef"] - table["ef_ref"]
    assert report["ef"]["n"] == 5 and report["ef"]["mae"] == pytest.approx(errors.abs().mean())
    assert report["ef"]["bias"] == pytest.approx(errors.mean())
    assert report["frames"]["ed_error"]["n"] == 5
    assert report["frames"]["ed_error"]["within_3"] == pytest.approx((table["ed_error_frames"].abs() <= 3).mean())
    assert "| EF (raw) | 5 |" in (tmp_path / "out" / "agreement.md").read_text()
    assert (tmp_path / "out" / "bland_altman.png").stat().st_size > 5000


def test_the_traced_frames_can_be_measured_instead(trained, cohort, tmp_path):
    root, truth = cohort
    result = predict(trained, root, "--traced-frames", "--split", "TEST", "--out", tmp_path / "traced")
    assert result.returncode == 0, result.stderr
    row = pd.read_csv(tmp_path / "traced" / "summary.csv").iloc[0]
    name = list(truth)[4]
    assert row["patient"] == name and row["cine"] == f"4CH ED {truth[name]['ed']} ES {truth[name]['es']} of 30"
    assert row["ed_error_frames"] == 0 and row["es_error_frames"] == 0
    merged = echoef_in_process("merge", tmp_path / "traced")
    assert merged.returncode == 0 and "MAE" in merged.stdout
    assert json.loads((tmp_path / "traced" / "agreement.json").read_text())["ef"]["n"] == 1


def test_a_hostile_file_list_names_nothing_outside_videos(cohort, tmp_path):
    root, truth = cohort
    bad = tmp_path / "bad"
    (bad / "Videos").mkdir(parents=True)
    first = next(iter(truth))
    (bad / "Videos" / f"{first}.avi").write_bytes((root / "Videos" / f"{first}.avi").read_bytes())
    (tmp_path / "outside.avi").write_bytes((root / "Videos" / f"{first}.avi").read_bytes())
    (bad / "FileList.csv").write_text(f"FileName,EF,Split\n{first},nan,TEST\n../outside.avi,50,TEST\n/etc/passwd,50,TEST\n"
                                      ",40,TEST\n")
    (bad / "VolumeTracings.csv").write_text(f"FileName,X1,Y1,X2,Y2,Frame\n{first}.avi,1,2,3,4,inf\n{first}.avi,1,2,3,nan,0\n")
    videos = echonet.read_cohort(bad)
    assert videos[0].path is not None and math.isnan(videos[0].ef_ref) and videos[0].tracings == {}
    assert all(v.path is None and v.problem.reason == "missing_study" for v in videos[1:])
    (bad / "FileList.csv").write_text("Name,EF\nx,1\n")
    with pytest.raises(UsageError, match="FileName"):
        echonet.read_cohort(bad)


def test_echonet_pediatric_outline_points_read_as_the_same_tracings(cohort, tmp_path):
    """EchoNet-Pediatric's VolumeTracings.csv holds each outline as points (FileName, X, Y, Frame), a
    phase its tracer could not trace as the frame "No Systolic"; the same outlines written so read as
    the same tracings, and such a frame as none."""
    root, truth = cohort
    pediatric = tmp_path / "pediatric"
    shutil.copytree(root, pediatric)
    videos = echonet.read_cohort(root)
    rows = [{"FileName": f"{v.name}.avi", "X": x, "Y": y, "Frame": frame}
            for v in videos for frame, tracing in v.tracings.items() for x, y in tracing.outline]
    rows += [{"FileName": f"{videos[1].name}.avi", "X": "", "Y": "", "Frame": "No Systolic"}]
    pd.DataFrame(rows).to_csv(pediatric / "VolumeTracings.csv", index=False)
    again = echonet.read_cohort(pediatric)
    assert [v.name for v in again] == [v.name for v in videos]
    for before, after in zip(videos, again):
        assert sorted(after.tracings) == sorted(before.tracings)
        for frame, tracing in before.tracings.items():
            assert np.allclose(after.tracings[frame].outline, tracing.outline)
            assert after.tracings[frame].area_px() == pytest.approx(tracing.area_px())
        assert [t.frame for t in after.traced_phases()] == [t.frame for t in before.traced_phases()]
    (pediatric / "VolumeTracings.csv").write_text("FileName,A,B,Frame\nx.avi,1,2,3\n")
    with pytest.raises(UsageError, match="X1, Y1, X2, Y2 .* or X, Y"):
        echonet.read_cohort(pediatric)


def test_a_video_written_for_the_fixtures_reads_back(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(6, 20, 24)).astype(np.uint8)
    loop = video.read_video(video.write_video(tmp_path / "v.avi", ndimage.uniform_filter(frames, 5), fps=30, codec="mjpeg"))
    assert loop.frames.shape == (6, 20, 24) and loop.frame_ms == pytest.approx(1000 / 30)
