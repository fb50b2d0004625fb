"""Frame files: orientation from the direction cosines, pixel size only from a header (or the user),
grey levels only, label maps written back over their image exactly, and output file modes."""

import gzip
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings, strategies as st

from echoef.errors import StudyError
from echoef.io import atomic, camus, framefile, imagefile
from echoef.measure import ef

from conftest import ROOT, stored_with_direction

# Axis-aligned directions (ITK, row by row) and what they do to the stored array.
FLIP_X = (-1.0, 0.0, 0.0, 1.0)
FLIP_Y = (1.0, 0.0, 0.0, -1.0)
SWAP = (0.0, 1.0, 1.0, 0.0)
SWAP_FLIP = (0.0, -1.0, 1.0, 0.0)  # a 90-degree turn


def physical_array(array, spacing, origin, direction):
    """An independent reading: every stored pixel placed by SimpleITK's own index-to-physical
    mapping, then laid out by increasing physical y (rows) and x (columns)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    at = {}
    for (row, col), value in np.ndenumerate(array):
        x, y = image.TransformIndexToPhysicalPoint((col, row))
        at[(round(y, 6), round(x, 6))] = value
    ys, xs = sorted({y for y, _ in at}), sorted({x for _, x in at})
    return np.array([[at[(y, x)] for x in xs] for y in ys])


@pytest.mark.parametrize("direction", [FLIP_X, FLIP_Y, SWAP, SWAP_FLIP, (-1.0, 0.0, 0.0, -1.0)])
def test_axis_aligned_directions_are_read_as_a_viewer_shows_them(tmp_path, direction):
    array = np.arange(6 * 9, dtype=np.uint8).reshape(6, 9)
    spacing, origin = (0.3, 0.7), (12.5, -40.0)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(tmp_path / "f.nii.gz"))
    canonical, spacing_mm, header = imagefile.read_image(tmp_path / "f.nii.gz")
    assert np.array_equal(canonical, physical_array(array, spacing, origin, direction))
    swapped = direction in (SWAP, SWAP_FLIP)
    assert spacing_mm == pytest.approx((0.3, 0.7) if swapped else (0.7, 0.3))
    # Written back, a label map has the input's exact header and lies over the same pixels.
    imagefile.write_label(canonical % 4, header, tmp_path / "l.nii.gz")
    written = sitk.ReadImage(str(tmp_path / "l.nii.gz"))
    assert written.GetOrigin() == pytest.approx(origin) and written.GetSpacing() == pytest.approx(spacing)
    assert written.GetDirection() == pytest.approx(direction) and written.GetSize() == image.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(written), array % 4)


def test_an_oblique_direction_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((6, 9), np.uint8))
    c, s = np.cos(0.5), np.sin(0.5)
    image.SetDirection((c, -s, s, c))
    sitk.WriteImage(image, str(tmp_path / "f.nii.gz"))
    with pytest.raises(StudyError, match="bad_geometry: direction .* rotated in plane"):
        imagefile.read_image(tmp_path / "f.nii.gz")


@pytest.mark.parametrize("direction", [FLIP_Y, SWAP_FLIP])
def test_ef_is_the_same_whatever_direction_stores_the_patient(phantom_root, tmp_path, direction):
    source = camus.find_patients(phantom_root)[0]
    stored_with_direction(source, tmp_path / source.name, direction, (5.0, -7.5))
    original, flipped = camus.read_study(source), camus.read_study(tmp_path / source.name)
    for key, frame in original.frames.items():
        assert np.array_equal(flipped.frames[key].image, frame.image) and np.array_equal(flipped.frames[key].label, frame.label)
        assert flipped.frames[key].spacing_mm == pytest.approx(frame.spacing_mm)
    assert ef.patient_ef(ef.label_maps(flipped.frames), "simpson_biplane") == ef.patient_ef(ef.label_maps(original.frames), "simpson_biplane")


def test_pipeline_label_maps_keep_the_source_geometry(phantom_root, tmp_path):
    source = camus.find_patients(phantom_root)[0]
    stored_with_direction(source, tmp_path / "p" / source.name, SWAP_FLIP, (5.0, -7.5))
    frames = camus.read_study(tmp_path / "p" / source.name).frames
    framefile.save(tmp_path / "f.npz", {k: camus.Frame(None, f.label, f.spacing_mm, f.header) for k, f in frames.items()})
    loaded = framefile.load(tmp_path / "f.npz")
    for key, frame in loaded.items():
        assert frame.header == frames[key].header and frame.image is None
        path = tmp_path / f"{key[0]}_{key[1]}.nii.gz"
        imagefile.write_label(frame.label, frame.header, path)
        written, image = sitk.ReadImage(str(path)), sitk.ReadImage(str(camus.frame_path(tmp_path / "p" / source.name, *key, "2023")))
        assert written.GetOrigin() == image.GetOrigin() and written.GetDirection() == image.GetDirection()
        assert written.GetSpacing() == image.GetSpacing() and written.GetSize() == image.GetSize()


def test_a_header_without_pixel_size_and_plain_formats_need_one(tmp_path):
    array = np.zeros((20, 30), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "f.png"))
    with pytest.raises(StudyError, match="no_spacing: f.png: a .png file has no physical pixel size; give --spacing-mm"):
        imagefile.read_image(tmp_path / "f.png")
    image, spacing_mm, header = imagefile.read_image(tmp_path / "f.png", spacing_mm=(0.4, 0.2))
    assert image.shape == (20, 30) and spacing_mm == (0.4, 0.2) and header.spacing == (0.2, 0.4)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "f.mhd"))
    header_text = (tmp_path / "f.mhd").read_text()
    (tmp_path / "f.mhd").write_text("\n".join(line for line in header_text.splitlines() if not line.startswith("ElementSpacing")))
    with pytest.raises(StudyError, match="no_spacing: f.mhd: the header states no pixel size; give --spacing-mm"):
        imagefile.read_image(tmp_path / "f.mhd")
    assert imagefile.read_image(tmp_path / "f.mhd", spacing_mm=(0.4, 0.2))[1] == (0.4, 0.2)
    # A header's own pixel size wins over the one given for files without.
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "g.nii.gz"))
    assert imagefile.read_image(tmp_path / "g.nii.gz", spacing_mm=(0.4, 0.2))[1] == (1.0, 1.0)


def test_colour_images_are_refused_and_grey_ones_in_rgba_are_read(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (12, 1045), dtype=np.uint8)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / "grey.png"))
    image, _, _ = imagefile.read_image(tmp_path / "grey.png", spacing_mm=(0.3, 0.3))
    assert np.array_equal(image, grey)  # not a (1045, 4) array
    rgba[3, 4, 0] = 7
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / "colour.png"))
    with pytest.raises(StudyError, match="several_channels"):
        imagefile.read_image(tmp_path / "colour.png", spacing_mm=(0.3, 0.3))


@pytest.mark.parametrize("channels, refused", [(4, False), (5, True), (100_000, True)])
def test_a_header_whose_channels_multiply_its_pixels_is_refused_before_any_is_read(tmp_path, monkeypatch, channels, refused):
    """A 2048 x 2048 MetaImage of grey pixels held in ``channels`` channels, its data a short
    compressed stream: 100,000 channels of bytes would have ITK allocate 419 GB. Beyond RGBA it is
    refused from the header, before ITK reads (``Execute``) anything."""
    import zlib

    data = zlib.compress(bytes(2048 * 2048 * 4))
    header = ("ObjectType = Image\nNDims = 2\nDimSize = 2048 2048\nElementSpacing = 0.3 0.3\n"
              f"ElementNumberOfChannels = {channels}\nElementType = MET_UCHAR\nCompressedData = True\n"
              f"CompressedDataSize = {len(data)}\nElementDataFile = LOCAL\n")
    (tmp_path / "f.mha").write_bytes(header.encode() + data)
    executed = []
    execute = sitk.ImageFileReader.Execute
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", lambda reader: executed.append(1) or execute(reader))
    if refused:
        with pytest.raises(StudyError, match=f"several_channels: f.mha: {channels} channels per pixel"):
            imagefile.read_loop(tmp_path / "f.mha")
        assert executed == []
    else:
        assert imagefile.read_loop(tmp_path / "f.mha").frames.shape == (1, 2048, 2048) and executed == [1]


PIXELS_16BIT = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 7


def _compressed_metaimage(folder, name: str, stream: bytes, stated_size: int | None, local: bool = True):
    """A 64 x 48 MET_USHORT MetaImage whose pixels are ``stream``, after its header (LOCAL) or in a
    file beside it; ``stated_size`` its CompressedDataSize (as written), or None for a header without one."""
    head = ("ObjectType = Image\nNDims = 2\nDimSize = 64 48\nElementSpacing = 0.3 0.3\nElementType = MET_USHORT\n"
            "CompressedData = True\n" + ("" if stated_size is None else f"CompressedDataSize = {stated_size}\n"))
    path = folder / name
    if local:
        path.write_bytes((head + "ElementDataFile = LOCAL\n").encode() + stream)
    else:
        (folder / f"{name}.zraw").write_bytes(stream)
        path.write_text(head + f"ElementDataFile = {name}.zraw\n")
    return path


@pytest.mark.parametrize("stream, stated, local, reason", [
    (zlib.compress(PIXELS_16BIT.tobytes()), "all", True, None),
    (gzip.compress(PIXELS_16BIT.tobytes()), "all", True, None),  # MetaIO inflates gzip too
    (zlib.compress(PIXELS_16BIT.tobytes()), None, False, None),  # a data file of its own needs no size
    (zlib.compress(PIXELS_16BIT.tobytes() + bytes(100_000_000)), "all", True, "more than the 6144 bytes"),  # not inflated
    (zlib.compress(PIXELS_16BIT.tobytes()), None, True, "does not state"),  # ITK reads garbage without the size
    (zlib.compress(PIXELS_16BIT.tobytes())[:-40], "all", True, "inflate to"),
    (zlib.compress(PIXELS_16BIT.tobytes())[:-40], None, False, "inflate to"),
    (zlib.compress(PIXELS_16BIT.tobytes()[:1000]), "all", True, "inflate to 1000 of the 6144 bytes"),
    (b"not zlib at all" * 10, "all", True, "corrupt"),
    (zlib.compress(PIXELS_16BIT.tobytes()), "9>11", True, "CompressedDataSize '9>11' is not a byte count"),  # ITK read 9 bytes
    (zlib.compress(PIXELS_16BIT.tobytes()), "-5", False, "is not a byte count"),
], ids=["zlib", "gzip", "data-file", "bomb", "no-size", "cut", "cut-data-file", "short", "foreign", "size-text",
        "size-negative"])
def test_compressed_metaimage_pixels_are_the_stream_or_refused(tmp_path, stream, stated, local, reason):
    """ITK reads a compressed MetaImage whose stream is cut or foreign as uninitialised memory, with
    no error: such a file is refused (``unreadable_file``), as is one whose stream holds more than its
    header declares (100 MB of zeros more, refused after one byte more) or whose CompressedDataSize is
    no byte count (MetaIO reads the number its text starts with); a complete one is read exactly."""
    path = _compressed_metaimage(tmp_path, "f.mha" if local else "f.mhd", stream, len(stream) if stated == "all" else stated, local)
    if reason is None:
        np.testing.assert_array_equal(imagefile.read_loop(path).frames[0], PIXELS_16BIT)
    else:
        with pytest.raises(StudyError, match=f"unreadable_file: f.mh.: .*{reason}"):
            imagefile.read_loop(path)


@pytest.mark.parametrize("header_size, padding, local, reason", [
    (None, 0, True, None), (0, 0, True, None), (-1, 0, True, None),
    (400, None, True, None),  # pixels at byte 400 of the .mha, after padding: where ITK reads them
    (10, 0, True, "inside the header"), (120, 0, True, "inside the header"),  # ITK read the header's text as pixels
    (-2, 0, True, "not a byte count"), (-1, 0, False, None), (100, 100, False, None),
    (0, 100, False, "bytes of pixels where the header declares"), (50, 100, False, "bytes of pixels where"),
    (-1, -100, False, "fewer bytes"),
], ids=["none", "zero", "last-bytes", "after-padding", "in-header", "in-header-2", "negative", "file-last-bytes",
        "file-skip", "file-unskipped", "file-half-skipped", "file-short"])
def test_metaimage_pixels_are_read_where_headersize_places_them_or_refused(tmp_path, header_size, padding, local, reason):
    """HeaderSize moves where ITK reads uncompressed pixels: from the file's start for a positive one,
    a .mha's too (so 10 read its header's text as pixels), the last bytes for -1. A file is read as its
    own pixels, or refused where the declared pixels are not exactly what lies from there to the end."""
    pixels = (np.arange(48 * 64) % 200 + 7).astype(np.uint8).reshape(48, 64)
    head = ("ObjectType = Image\nNDims = 2\nDimSize = 64 48\nElementSpacing = 0.3 0.3\nElementType = MET_UCHAR\n"
            + ("" if header_size is None else f"HeaderSize = {header_size}\n"))
    if local:
        head = (head + "ElementDataFile = LOCAL\n").encode()
        fill = bytes(header_size - len(head)) if padding is None else b""
        (tmp_path / "f.mha").write_bytes(head + fill + pixels.tobytes())
        path = tmp_path / "f.mha"
    else:
        data = pixels.tobytes()
        (tmp_path / "f.raw").write_bytes(b"X" * padding + data if padding >= 0 else data[:padding])
        (tmp_path / "f.mhd").write_text(head + "ElementDataFile = f.raw\n")
        path = tmp_path / "f.mhd"
    if reason is None:
        np.testing.assert_array_equal(imagefile.read_loop(path).frames[0], pixels)
    else:
        with pytest.raises(StudyError, match=f"unreadable_file: f.mh.: .*{reason}"):
            imagefile.read_loop(path)


def _metaimage_read_or_refused(tmp_path, fields: str, refusal: str | None):
    """A 48 x 40 MET_UCHAR .mha of a known ramp whose header holds ``fields``: read, its pixels checked
    to be the ramp, and returned; or, where ``refusal`` (a pattern) is given, refused with it (None)."""
    pixels = (np.arange(48 * 40) % 200 + 7).astype(np.uint8).reshape(48, 40)
    head = f"ObjectType = Image\nNDims = 2\nDimSize = 40 48\nElementType = MET_UCHAR\n{fields}\nElementDataFile = LOCAL\n"
    (tmp_path / "f.mha").write_bytes(head.encode() + pixels.tobytes())
    if refusal is not None:
        with pytest.raises(StudyError, match=refusal):
            imagefile.read_loop(tmp_path / "f.mha")
        return None
    loop = imagefile.read_loop(tmp_path / "f.mha")
    assert np.array_equal(loop.frames[0], pixels)
    return loop


@pytest.mark.parametrize("fields, spacing_mm, refusal", [
    ("ElementSpacing = 0.3 0.5", (0.5, 0.3), None),
    ("ElementSpacing = 0.3 0.5\nElementSpacing = 0.3  0.5", (0.5, 0.3), None),  # twice alike: one statement
    ("ElementSpacing = 0.3 0.5\nElementSize = 0.6 0.6", (0.5, 0.3), None),  # two fields: spacing, and each pixel's extent
    ("ElementSpacing = 0.3 0.5\nElementSpacing = 5 5", None, "bad_spacing: f.mha: its header states ElementSpacing twice"),
    ("ElementSize = 0.3 0.5\nElementSize = 5 5", None, "bad_spacing: f.mha: its header states ElementSize twice"),
    ("ElementSpacing = 0.3 0.5\nOffset = 0 0\nOrigin = 5 5", None, "bad_geometry: f.mha: its header states Offset/Origin twice"),
    ("ElementSpacing = 0.3 0.5\nOrientation = 0 1 1 0\nTransformMatrix = 1 0 0 1", None,
     "bad_geometry: f.mha: its header states Orientation/TransformMatrix twice"),
    ("ElementSpacing = 0.3 0.5\nElementType = MET_USHORT", None, "unreadable_file: f.mha: its header states ElementType twice"),
], ids=["once", "twice-alike", "spacing-and-size", "spacing-twice", "size-twice", "offset-origin", "orientation-matrix",
        "element-type"])
def test_a_metaimage_field_stated_twice_differently_is_refused(tmp_path, fields, spacing_mm, refusal):
    """ITK takes the last ElementSpacing of a header that states two (the second above, 5 mm, was
    measured) and a TransformMatrix over an Orientation wherever each stands; another reader may take
    the other. A field (or its synonym) stated two ways is refused by its kind; stated twice alike it
    is one statement."""
    loop = _metaimage_read_or_refused(tmp_path, fields, None if refusal is None else f"^{refusal}, differently$")
    assert refusal is not None or loop.spacing_mm == spacing_mm


@pytest.mark.parametrize("fields, spacing_mm, refusal", [
    ("Offset = 0 0\nElementSpacing = 0.3 0.5", (0.5, 0.3), None),
    ("ElementSize = 0.3 0.5", (0.5, 0.3), None),
    ("ElementSpacing = 0.3 0.5 0.7", (0.5, 0.3), None),  # more values than axes: ITK takes the first
    ("Offset = 1\nElementSpacing = 0.3 0.5", None, "bad_spacing: .*ElementSpacing states '0.3 0.5' but ITK reads \\(1.0, 1.0\\)"),
    ("ElementSpacing = 0.3", None, "unreadable_file: "),  # ITK's parse stops there: it finds no pixels
    ("ElementSpacing = 0.3 abc", None, "bad_spacing: .*ElementSpacing '0.3 abc' is not numbers"),
    ("CompressedData = 1", None, "unreadable_file: .*CompressedData '1' is neither True nor False"),
    ("CompressedData = t\nElementSpacing = 0.3 0.5", None, "unreadable_file: .*CompressedData 't' is neither"),
    ("BinaryDataByteOrderMSB = x\nElementSpacing = 0.3 0.5", None, "unreadable_file: .*BinaryDataByteOrderMSB 'x' is neither"),
    ("CompressedData = FALSE\nElementSpacing = 0.3 0.5", (0.5, 0.3), None),
], ids=["offset-before", "size-only", "extra-values", "short-offset", "one-value", "not-numbers", "compressed-1",
        "compressed-t", "byte-order-x", "false-upper"])
def test_a_metaimage_is_measured_at_the_spacing_it_states_as_itk_reads_it(tmp_path, fields, spacing_mm, refusal):
    """Found by fuzzing MetaImage headers: an Offset of one value for a 2D image stops ITK's parse, and
    it reports 1 mm for the ElementSpacing that follows, which was measured as stated; "CompressedData
    = 1" is True to MetaIO, which inflated raw pixels into other pixels, while the size check took
    them as raw. The spacing ITK reads must be the one stated, and a flag must be True or False."""
    loop = _metaimage_read_or_refused(tmp_path, fields, None if refusal is None else f"^{refusal}")
    assert refusal is not None or loop.spacing_mm == pytest.approx(spacing_mm)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("vox_offset, cut, padding, reason", [
    (None, 0, 0, None), (None, 0, 1000, None),  # bytes after the pixels: the pixels are all there
    ("header", 0, 0, "would start"), (100.0, 0, 0, "would start"), (0.0, 0, 0, "would start"),
    (-352.0, 0, 0, "would start"), (float("nan"), 0, 0, "would start"), (1e9, 0, 0, "would start"),
    (None, 100, 0, "cut short|truncated"), (None, 1, 0, "cut short|truncated"),
    ("past", 0, 0, "cut short|truncated"),  # 48 bytes past where the pixels are: the file ends before its last 48
], ids=["whole", "trailing", "in-header", "100", "zero", "negative", "nan", "far", "cut-100", "cut-1", "past"])
def test_nifti_pixels_are_after_the_header_and_all_there_or_refused(tmp_path, suffix, vox_offset, cut, padding, reason):
    """ITK reads a NIfTI whose vox_offset points into its header (its bytes as pixels: 87% of a 64 x 48
    frame's values wrong at offsets 0, 100, 348 or NaN), and zero-fills what a plain .nii cut short or an
    offset past its pixels lacks, without an error. Such a file is refused; a whole one, with bytes after
    its pixels or not, is read as its pixels."""
    import struct

    import nibabel

    pixels = (np.arange(48 * 64) % 200 + 7).astype(np.uint8).reshape(64, 48)
    image = nibabel.Nifti1Image(pixels[:, :, None], np.diag([0.3, 0.3, 1.0, 1.0]))  # ITK reads no NIfTI-2
    image.header.set_xyzt_units("mm")
    nibabel.save(image, tmp_path / "whole.nii")
    data = bytearray((tmp_path / "whole.nii").read_bytes())
    assert struct.unpack("<f", data[108:112])[0] == 352  # vox_offset: after the 348-byte header and 4 flag bytes
    if vox_offset is not None:
        data[108:112] = struct.pack("<f", {"header": 348, "past": 352 + 48}.get(vox_offset, vox_offset))
    data = bytes(data[: len(data) - cut]) + bytes(padding)
    path = tmp_path / f"f{suffix}"
    path.write_bytes(gzip.compress(data) if suffix == ".nii.gz" else data)
    whole = imagefile.read_loop(tmp_path / "whole.nii").frames[0]  # as a viewer shows it: flipped from the array
    assert np.array_equal(np.sort(whole, axis=None), np.sort(pixels, axis=None))
    if reason is None:
        np.testing.assert_array_equal(imagefile.read_loop(path).frames[0], whole)
    else:
        with pytest.raises(StudyError, match=f"unreadable_file: f{suffix}: .*({reason})"):
            imagefile.read_loop(path)


def test_a_nifti_whose_bitpix_understates_its_datatype_is_measured_by_the_datatype(tmp_path):
    """ITK reads by the datatype: a 16-bit file whose bitpix says 8, cut to little more than half its
    pixels, was read with half the frame zero-filled. The bytes needed are counted by the datatype."""
    import struct

    import nibabel

    pixels = (np.arange(48 * 64) * 13 % 60000).astype(np.uint16).reshape(64, 48)
    image = nibabel.Nifti1Image(pixels[:, :, None], np.diag([0.3, 0.3, 1.0, 1.0]))
    image.header.set_xyzt_units("mm")
    nibabel.save(image, tmp_path / "whole.nii")
    data = bytearray((tmp_path / "whole.nii").read_bytes())
    data[72:74] = struct.pack("<h", 8)  # bitpix
    (tmp_path / "bitpix.nii").write_bytes(data)
    whole = imagefile.read_loop(tmp_path / "whole.nii").frames[0]
    np.testing.assert_array_equal(imagefile.read_loop(tmp_path / "bitpix.nii").frames[0], whole)  # whole: read
    (tmp_path / "cut.nii").write_bytes(data[: 352 + pixels.size + 10])
    with pytest.raises(StudyError, match=f"unreadable_file: cut.nii: {352 + pixels.size + 10} bytes where its header "
                                         f"declares {352 + 2 * pixels.size}"):
        imagefile.read_loop(tmp_path / "cut.nii")


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, 200), flip=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.integers(1, 255))))
def test_a_damaged_compressed_metaimage_is_never_read_as_other_pixels(tmp_path_factory, cut, flip):
    """Any cut or flipped byte of the stream: the file is read as its own pixels or refused, never read
    as anything else. Inflating the declared bytes alone read 216 of 11,846 single flipped bits as
    other pixels; the stream's own checksum, at its end, catches them."""
    stream = bytearray(zlib.compress(PIXELS_16BIT.tobytes()))
    if flip:
        stream[flip[0] % len(stream)] ^= flip[1]
    stream = bytes(stream[: len(stream) - cut])
    path = _compressed_metaimage(tmp_path_factory.mktemp("mha"), "f.mha", stream, len(stream))
    try:
        frames = imagefile.read_loop(path).frames
    except StudyError as error:
        assert str(error).startswith(("unreadable_file", "bad_")), error
        return
    np.testing.assert_array_equal(frames[0], PIXELS_16BIT)


@settings(max_examples=40, deadline=None)
@given(fmt=st.sampled_from(imagefile.PLAIN_FORMATS), kept=st.floats(0.05, 0.999))
def test_a_picture_file_cut_short_is_refused_never_read_as_other_pixels(tmp_path_factory, fmt, kept):
    """ITK reads a JPEG or BMP cut short without an error (grey fill, leftover memory: before, 6% to
    100% of a 200 x 240 frame's pixels wrong); every picture format cut anywhere is refused, and the
    whole file still reads as its pixels."""
    folder = tmp_path_factory.mktemp("cut")
    pixels = np.random.default_rng(0).integers(0, 255, (200, 240)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(folder / f"whole{fmt}"))
    whole = imagefile.read_loop(folder / f"whole{fmt}", (0.3, 0.3)).frames
    data = (folder / f"whole{fmt}").read_bytes()
    (folder / f"cut{fmt}").write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(StudyError, match="unreadable_file"):
        imagefile.read_loop(folder / f"cut{fmt}", (0.3, 0.3))
    if fmt not in (".jpg", ".jpeg"):  # lossy: its pixels are the decoder's, not exactly those written
        np.testing.assert_array_equal(whole[0], pixels)


def test_metaimage_label_maps_are_written_whole_or_not_at_all(tmp_path):
    header = imagefile.Header((0.3, 0.2, 1.0), (1.0, 2.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    label = np.zeros((10, 12), np.uint8)
    label[2:5, 3:9] = 1
    imagefile.write_label(label, header, tmp_path / "out" / "p_gt.mhd")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p_gt.mhd", "p_gt.raw"]
    read, spacing_mm, read_header = camus.read_label(tmp_path / "out" / "p_gt.mhd")
    assert np.array_equal(read, label) and spacing_mm == (0.2, 0.3) and read_header == header


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    code = "\n".join([
        f"import os, numpy, pandas; os.umask({umask}); from echoef.io import atomic, imagefile",
        f"atomic.write_json('{tmp_path}/a.json', {{}}); atomic.write_csv('{tmp_path}/b.csv', pandas.DataFrame({{'x': [1]}}))",
        f"atomic.write_npz('{tmp_path}/c.npz', x=numpy.zeros(2))",
        f"imagefile.write_label(numpy.zeros((4, 4)), imagefile.Header.plain((1.0, 1.0)), '{tmp_path}/d.mhd')",
        f"with atomic.atomic_folder('{tmp_path}/e') as folder:",
        "    atomic.write_text(folder / 't.txt', 'x')"])
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    for name in ("a.json", "b.csv", "c.npz", "d.mhd", "d.raw", "e/t.txt"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == mode, name
    assert os.stat(tmp_path / "e").st_mode & 0o777 == mode | ((mode & 0o444) >> 2), "a folder: readable means enterable"


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    atomic.write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(RuntimeError, match="crash"):
        with atomic.atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic.atomic_files(tmp_path / "x.mhd") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert atomic.read_json(tmp_path / "m.json") == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_a_folder_is_replaced_whole_or_left_as_it_was(tmp_path):
    with atomic.atomic_folder(tmp_path / "record") as folder:
        atomic.write_text(folder / "a.txt", "first")
        atomic.write_text(folder / "b.txt", "first")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic.atomic_folder(tmp_path / "record") as folder:
            atomic.write_text(folder / "a.txt", "second")
            raise RuntimeError("crash mid-folder")
    assert {p.name: p.read_text() for p in (tmp_path / "record").iterdir() if p.name != atomic.OWNER_MARK} == \
        {"a.txt": "first", "b.txt": "first"}
    with atomic.atomic_folder(tmp_path / "record") as folder:
        atomic.write_text(folder / "a.txt", "second")
    assert {p.name: p.read_text() for p in (tmp_path / "record").iterdir() if p.name != atomic.OWNER_MARK} == {"a.txt": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record"]  # no temporary or old folder left


@pytest.mark.parametrize("code, pixdim_row, pixdim_col, spacing_mm", [
    (2, 0.3, 0.25, (0.3, 0.25)),  # mm
    (1, 0.0003, 0.00025, (0.3, 0.25)),  # metres: 0.0003 m is 0.3 mm, not a pixel of 0.0003 mm
    (3, 300.0, 250.0, (0.3, 0.25)),  # microns
    (0, 0.3, 0.25, (0.3, 0.25)),  # unknown: mm, as ITK and the NIfTI tools read it
    (2 | 16, 0.3, 0.25, (0.3, 0.25)),  # mm, with a time unit beside it
    (5, 0.3, 0.25, None), (7 | 8, 0.3, 0.25, None),  # no unit NIfTI defines
])
def test_a_nifti_pixel_size_is_read_in_the_unit_its_header_states(tmp_path, code, pixdim_row, pixdim_col, spacing_mm):
    """pixdim is in the header's spatial unit (xyzt_units): a file in metres or microns states the same
    0.3 x 0.25 mm pixels as one in mm (it was refused as ``bad_spacing``, pixdim taken as mm); a code
    that is no unit is refused, not guessed."""
    import nibabel

    pixels = np.arange(12 * 10, dtype=np.uint8).reshape(10, 12)  # rows x columns as shown
    image = nibabel.Nifti1Image(pixels.T.copy(), np.diag([pixdim_col, pixdim_row, 1, 1]))
    image.header["xyzt_units"] = code
    nibabel.save(image, tmp_path / "f.nii.gz")
    if spacing_mm is None:
        with pytest.raises(StudyError, match="bad_spacing: f.nii.gz: its spatial unit code"):
            imagefile.read_loop(tmp_path / "f.nii.gz")
    else:
        assert imagefile.read_loop(tmp_path / "f.nii.gz").spacing_mm == pytest.approx(spacing_mm, rel=1e-5)


@pytest.mark.parametrize("pixdim_row, sform_code, qform_code, spacing_mm", [
    (0.25, 2, 0, (0.25, 0.3)),  # pixdim and sform agree
    (1.0, 2, 0, None), (1.0, 1, 1, None),  # the sform places rows 0.25 mm apart, pixdim says 1 mm: ITK measured 1 mm
    (1.0, 0, 1, (1.0, 0.3)),  # no sform: the quaternion's pixel size is pixdim itself
])
def test_a_nifti_whose_sform_and_pixdim_state_different_pixel_sizes_is_refused(tmp_path, pixdim_row, sform_code, qform_code,
                                                                               spacing_mm):
    """Found by fuzzing NIfTI headers: ITK takes the spacing from pixdim and only the direction from the
    sform, so a pixdim changed under an sform of 0.3 x 0.25 mm was measured at its own size while
    the sform (what a viewer places the pixels by) states another."""
    import nibabel

    pixels = np.arange(12 * 10, dtype=np.uint8).reshape(10, 12)
    image = nibabel.Nifti1Image(pixels.T.copy(), np.diag([0.3, 0.25, 1, 1]))
    image.header.set_xyzt_units("mm")
    image.header.set_sform(np.diag([0.3, 0.25, 1, 1]), code=sform_code)
    image.header.set_qform(np.diag([0.3, 0.25, 1, 1]), code=qform_code)
    nibabel.save(image, tmp_path / "f.nii")
    stored = bytearray((tmp_path / "f.nii").read_bytes())
    stored[84:88] = np.asarray([pixdim_row], "<f4").tobytes()  # pixdim[2], as stored: nibabel would redo it from the affine
    (tmp_path / "f.nii").write_bytes(bytes(stored))
    if spacing_mm is None:
        with pytest.raises(StudyError, match=r"^bad_spacing: f.nii: pixdim states 0.3 x 1 mm but its sform places pixels 0.3 x 0.25 mm apart$"):
            imagefile.read_loop(tmp_path / "f.nii")
    else:
        assert imagefile.read_loop(tmp_path / "f.nii").spacing_mm == pytest.approx(spacing_mm, rel=1e-5)


@pytest.mark.parametrize("later, refused", [((48, 40), False), ((96, 80), True), ((24, 20), True), ((40, 48), True)])
def test_a_tiff_loop_of_pages_of_another_size_is_refused(tmp_path, later, refused):
    """ITK reads a multi-page TIFF as a loop of its first page's size: a later page of 96 x 80 came
    back as a 48 x 40 frame of its own pixels, measured as if it were the picture. Pages must be one
    size (their headers read by Pillow before ITK reads any pixel)."""
    from PIL import Image

    first = Image.fromarray((np.arange(48 * 40) % 200 + 7).astype(np.uint8).reshape(48, 40))
    page = Image.fromarray((np.arange(later[0] * later[1]) % 100 + 50).astype(np.uint8).reshape(later))
    first.save(tmp_path / "loop.tif", save_all=True, append_images=[page, first])
    if refused:
        with pytest.raises(StudyError, match=rf"^bad_geometry: loop.tif: page 1 is {later[0]} x {later[1]} pixels "
                                             r"in a loop of 48 x 40$"):
            imagefile.read_loop(tmp_path / "loop.tif", (0.3, 0.3))
    else:
        loop = imagefile.read_loop(tmp_path / "loop.tif", (0.3, 0.3))
        assert loop.frames.shape == (3, 48, 40) and np.array_equal(loop.frames[1], np.asarray(page))


@pytest.mark.parametrize("unit, step, frame_ms", [("msec", 20.0, 20.0), ("sec", 0.04, 40.0), ("usec", 33000.0, 33.0),
                                                  ("unknown", 20.0, None), ("msec", 0.0, None), ("msec", float("nan"), None)])
def test_a_nifti_loop_with_time_on_its_fourth_axis_is_the_same_loop(tmp_path, unit, step, frame_ms):
    """NIfTI's own 2D + time is (x, y, 1, t), time being its fourth axis (what converters such as
    dcm2niix write); CAMUS stores (x, y, t). Both are the same loop, frame for frame, with the same
    geometry; the fourth axis's pixdim in the header's time unit is the frame time, where it is one."""
    import nibabel

    pixels = np.random.default_rng(0).integers(0, 255, (40, 30, 7)).astype(np.uint8)
    affine = np.diag([-0.3, 0.45, 1.0, 1.0])  # x flipped, anisotropic: the orientation and spacing carry over
    nibabel.save(nibabel.Nifti1Image(pixels, affine), tmp_path / "camus.nii.gz")
    four = nibabel.Nifti1Image(pixels[:, :, None, :], affine)
    four.header.set_xyzt_units("mm", unit)
    four.header["pixdim"][4] = step
    nibabel.save(four, tmp_path / "standard.nii.gz")
    three, standard = (imagefile.read_loop(tmp_path / name) for name in ("camus.nii.gz", "standard.nii.gz"))
    assert standard.frames.shape == (7, 30, 40) and np.array_equal(standard.frames, three.frames)
    assert standard.spacing_mm == three.spacing_mm == pytest.approx((0.45, 0.3))
    assert standard.header == three.header and three.frame_ms is None
    assert standard.frame_ms == (pytest.approx(frame_ms) if frame_ms else None)
    # Several slices at each time point are a volume, not a 2D loop.
    nibabel.save(nibabel.Nifti1Image(np.stack([pixels, pixels], 2), affine), tmp_path / "volume.nii.gz")
    with pytest.raises(StudyError, match="bad_geometry"):
        imagefile.read_loop(tmp_path / "volume.nii.gz")


def _png_grey_alpha_16(path, grey):
    """A 16-bit grey + alpha PNG written chunk by chunk (Pillow writes none)."""
    height, width = grey.shape
    samples = np.stack([grey.astype(">u2") * 257, np.full(grey.shape, 65535, ">u2")], axis=-1)
    rows = b"".join(b"\x00" + samples[row].tobytes() for row in range(height))

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    path.write_bytes(imagefile.PNG_SIGNATURE + chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 4, 0, 0, 0]))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _write_layout(path, layout, pages):
    """Grey frames (T, H, W) stored as ``layout``; returns what the file states each pixel is."""
    from PIL import Image

    alpha = np.full(pages.shape[1:], 200, np.uint8)  # not opaque: alpha is ignored, never mixed into grey
    if layout == "grey and alpha":
        images = [Image.fromarray(np.stack([page, alpha], axis=-1), "LA") for page in pages]
    elif layout == "palette":
        images = [Image.fromarray(page).convert("P") for page in pages]  # a grey palette: every level its own entry
    elif layout == "white is zero":  # Pillow stores 255 - grey and reads it back inverted
        images = [Image.fromarray(page) for page in pages]
    if path.suffix == ".png":
        images[0].save(path)
    else:
        extra = {"tiffinfo": {imagefile.TIFF_PHOTOMETRIC: imagefile.TIFF_WHITE_IS_ZERO}} if layout == "white is zero" else {}
        images[0].save(path, save_all=True, append_images=images[1:], **extra)
    return pages


@pytest.mark.parametrize("name, layout, frames", [
    ("f.png", "grey and alpha", 1), ("f.tif", "grey and alpha", 3), ("f.tif", "palette", 2), ("f.tif", "white is zero", 2)])
def test_png_and_tiff_layouts_itk_misreads_are_read_as_stored(tmp_path, name, layout, frames):
    """ITK failed on a grey + alpha PNG ('Unknown PixelType'), and read without an error a TIFF's grey
    + alpha samples as one image of both interleaved (2% of pixels right), a palette TIFF's indices as
    grey levels and a white-is-zero TIFF inverted. Each is read as the grey levels the file states:
    the written array, an independent reading (the stored bytes of the last are 255 - grey)."""
    pages = np.random.default_rng(1).integers(0, 256, (frames, 30, 40)).astype(np.uint8)
    expected = _write_layout(tmp_path / name, layout, pages)
    loop = imagefile.read_loop(tmp_path / name, (0.3, 0.4))
    assert loop.frames.dtype == np.uint8 and np.array_equal(loop.frames, expected)
    assert loop.spacing_mm == (0.3, 0.4) and loop.header == imagefile.Header.plain((0.3, 0.4))


def test_layouts_read_in_more_bits_than_pillow_keeps_are_refused(tmp_path):
    """Pillow narrows a 16-bit grey + alpha PNG to 8 bits and does not invert a 16-bit white-is-zero
    TIFF: such a file is refused with the fix, not measured on other grey levels."""
    from PIL import Image

    grey = np.random.default_rng(2).integers(0, 256, (30, 40)).astype(np.uint8)
    _png_grey_alpha_16(tmp_path / "f.png", grey)
    with pytest.raises(StudyError, match=r"^several_channels: f.png: pixels stored as 16-bit grey and alpha, which are "
                                         r"not read as stored; give a grey-scale image$"):
        imagefile.read_loop(tmp_path / "f.png", (0.3, 0.3))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "f.tif", tiffinfo={imagefile.TIFF_PHOTOMETRIC: imagefile.TIFF_WHITE_IS_ZERO})
    with pytest.raises(StudyError, match=r"^several_channels: f.tif: pixels stored as 16-bit white-is-zero grey"):
        imagefile.read_loop(tmp_path / "f.tif", (0.3, 0.3))


def test_a_coloured_palette_tiff_is_refused_as_colour(tmp_path):
    """A palette of colours (a Doppler map saved as a palette TIFF) is colour, refused as from RGB."""
    from PIL import Image

    image = Image.fromarray(np.zeros((30, 40), np.uint8)).convert("P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.putpixel((5, 5), 1)
    image.save(tmp_path / "f.tif")
    with pytest.raises(StudyError, match=r"^several_channels: f.tif: 4 colour channels that differ"):
        imagefile.read_loop(tmp_path / "f.tif", (0.3, 0.3))


def test_a_nifti2_file_is_refused_with_the_line_that_converts_it(tmp_path):
    """SimpleITK named no reader for a NIfTI-2 header ('Unable to determine ImageIO reader'). It is
    refused as a format with the fix, and the file the fix writes reads as its NIfTI-1 twin."""
    import nibabel

    pixels = np.random.default_rng(3).integers(0, 255, (40, 30, 5)).astype(np.uint8)
    affine = np.diag([-0.3, 0.45, 1.0, 1.0])
    nibabel.save(nibabel.Nifti2Image(pixels, affine), tmp_path / "two.nii.gz")
    nibabel.save(nibabel.Nifti1Image(pixels, affine), tmp_path / "one.nii.gz")
    with pytest.raises(StudyError, match=r"^unsupported_format: two.nii.gz: a NIfTI-2 header, which is not read; "
                                         r"save it as NIfTI-1 \(nibabel: "):
        imagefile.read_loop(tmp_path / "two.nii.gz")
    path, out = tmp_path / "two.nii.gz", tmp_path / "converted.nii.gz"
    nibabel.save(nibabel.Nifti1Image.from_image(nibabel.load(path)), out)  # the line the message gives
    converted, twin = imagefile.read_loop(out), imagefile.read_loop(tmp_path / "one.nii.gz")
    assert np.array_equal(converted.frames, twin.frames) and converted.header == twin.header
    assert converted.spacing_mm == pytest.approx((0.45, 0.3))


def test_a_grey_and_alpha_png_damaged_in_its_pixels_is_refused_by_their_checksum(tmp_path):
    """Pillow decodes a PNG's pixel chunks without checking their checksums (a fuzz of the layouts it
    decodes read 231 of 237 damaged grey + alpha PNGs as other pixels); every chunk's checksum is
    checked first, as libpng does for the PNGs ITK reads."""
    from PIL import Image

    grey = np.random.default_rng(5).integers(0, 256, (30, 40)).astype(np.uint8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], axis=-1), "LA").save(tmp_path / "f.png")
    stored = bytearray((tmp_path / "f.png").read_bytes())
    at = stored.index(b"IDAT") + 1600
    stored[at:at + 64] = bytes(64)  # near the end of the pixel stream
    (tmp_path / "f.png").write_bytes(bytes(stored))
    with Image.open(tmp_path / "f.png") as image:  # Pillow alone: other pixels, no error
        assert not np.array_equal(np.asarray(image.convert("RGBA"))[..., 0], grey)
    with pytest.raises(StudyError, match=r"^unreadable_file: f.png: SyntaxError broken PNG file"):
        imagefile.read_loop(tmp_path / "f.png", (0.3, 0.3))


def test_a_tiff_of_a_16_bit_page_beside_a_palette_page_is_refused_not_clipped(tmp_path):
    """Pillow decodes the layouts ITK misreads in 8 bits; converting a 16-bit page beside them would
    clip its grey levels at 255, so pages stored otherwise are refused with the fix."""
    from PIL import Image

    grey = np.random.default_rng(6).integers(0, 256, (30, 40)).astype(np.uint8)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "f.tif", save_all=True,
                                                       append_images=[Image.fromarray(grey).convert("P")])
    with pytest.raises(StudyError, match=r"^unsupported_format: f.tif: page 0 stored as I;16 beside pages that are read "
                                         r"by Pillow in 8 bits; store every page alike$"):
        imagefile.read_loop(tmp_path / "f.tif", (0.3, 0.3))
