"""DICOM ultrasound in: single- and multi-frame files, their physical pixel size, and which study and
view each belongs to.

The pixel size comes from the Sequence of Ultrasound Regions (PhysicalDeltaX/Y, in cm) of the 2D
regions that hold the image, and only their pixels are measured (``measured_region``: the picture is
cut to them, and a region at another pixel size, a zoomed picture, is blacked out); else from
PixelSpacing (of the file, or of an enhanced multi-frame file's Pixel Measures functional group); a
file with none is refused (``no_spacing``) unless the user gives one: a guessed pixel size would make
every volume wrong.
Pixels are decoded by pydicom: uncompressed, RLE and, through Pillow, 8-bit JPEG baseline and
extended, and JPEG 2000, in this process. Lossless JPEG and JPEG-LS, which no decoder reads safely
in-process, are decoded by GDCM in a child process held to a time and a memory limit
(``decode_in_child``): GDCM is C++ whose failed assertions end the process, and JPEG-LS decoders (CharLS)
can spin for seconds on damaged data. pydicom is never let to pick GDCM in this process. 12-bit JPEG
extended (which pydicom's GDCM plugin declines too) and other syntaxes are refused with
``unsupported_transfer_syntax`` unless a pydicom plugin (pylibjpeg) reads them.
A compressed frame's own header is read before any decoder sees it (``compressed_frame_problem``):
a decoder sizes its picture by that header, not by the file's.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from ..errors import StudyError
from .imagefile import LUMINANCE, MAX_LOOP_PIXELS, Header, Loop, check_pixels, loop_size_problem

REGION_2D, UNITS_CM = 1, 3  # RegionSpatialFormat 2D; PhysicalUnits centimetre
SAME_SIZE_RTOL = 1e-3  # regions' deltas are written to a few decimals; closer sizes are one picture's
VIEW_IN_NAME = {"2CH": re.compile(r"(^|[^a-z0-9])(2ch|a2c|apical[ _-]?2)([^a-z0-9]|$)", re.I),
                "4CH": re.compile(r"(^|[^a-z0-9])(4ch|a4c|apical[ _-]?4)([^a-z0-9]|$)", re.I)}


@dataclass(frozen=True)
class Region:
    """A 2D region of the picture calibrated in cm: its box of pixels (``top``:``bottom``,
    ``left``:``right``, ends excluded) clipped to the picture, and its (row, col) pixel size in mm."""

    top: int
    bottom: int
    left: int
    right: int
    spacing_mm: tuple[float, float]


def calibrated_regions(dataset, rows: int, cols: int) -> list[Region]:
    """The file's 2D ultrasound regions calibrated in cm that hold pixels of its ``rows`` x ``cols``
    pictures, in the order stated. A region with a damaged value, a non-positive delta, or a box
    outside the picture (or under 2 pixels across) states no pixel size of this picture and is left out."""
    found = []
    try:
        sequence = list(dataset.get("SequenceOfUltrasoundRegions", []) or [])
    except DAMAGED_VALUE_ERRORS:
        return []
    for region in sequence:
        try:
            if (region.get("RegionSpatialFormat") != REGION_2D or region.get("PhysicalUnitsXDirection") != UNITS_CM
                    or region.get("PhysicalUnitsYDirection") != UNITS_CM):
                continue
            delta_x, delta_y = (_positive(abs(float(region.get(tag, 0)))) for tag in ("PhysicalDeltaX", "PhysicalDeltaY"))
            # The region's corners are inclusive pixel indices.
            left, top = max(int(region.get("RegionLocationMinX0", 0)), 0), max(int(region.get("RegionLocationMinY0", 0)), 0)
            right = min(int(region.get("RegionLocationMaxX1", 0)) + 1, cols)
            bottom = min(int(region.get("RegionLocationMaxY1", 0)) + 1, rows)
        except DAMAGED_VALUE_ERRORS:
            continue
        if delta_x is not None and delta_y is not None and right - left >= 2 and bottom - top >= 2:
            found.append(Region(top, bottom, left, right, (10 * delta_y, 10 * delta_x)))
    return found


def same_size(first: tuple[float, float], second: tuple[float, float]) -> bool:
    """Whether two regions' pixel sizes are one (as written to a tag's few decimals)."""
    return bool(np.allclose(first, second, rtol=SAME_SIZE_RTOL, atol=0))


def measured_region(regions: list[Region], rows: int, cols: int) -> tuple[tuple[float, float], np.ndarray] | None:
    """The pixel size to measure with, and the pixels (a ``rows`` x ``cols`` mask) that have it, or
    None where no region is calibrated; StudyError('bad_spacing') where no pixel has one size alone.

    Regions of one pixel size are one picture (tissue and the colour flow over it, two views side
    by side). Regions of different sizes are pictures at different scales (a zoomed one beside or
    inside the whole): a pixel inside regions of two sizes has no size of its own. The size with most
    pixels of its own is measured, on those pixels only, so no pixel is measured at a size not its own."""
    if not regions:
        return None
    sizes: list[tuple[float, float]] = []
    for region in regions:
        if not any(same_size(region.spacing_mm, size) for size in sizes):
            sizes.append(region.spacing_mm)
    covered = np.zeros((len(sizes), rows, cols), dtype=bool)
    for index, size in enumerate(sizes):
        for region in regions:
            if same_size(region.spacing_mm, size):
                covered[index, region.top:region.bottom, region.left:region.right] = True
    alone = covered & (covered.sum(axis=0) == 1)
    chosen = max(range(len(sizes)), key=lambda index: (int(alone[index].sum()), -index))
    if not alone[chosen].any():
        raise StudyError("bad_spacing", "its ultrasound regions state " + " and ".join(f"{row:.4g} x {col:.4g} mm"
                                                                                        for row, col in sizes)
                         + " for the same pixels")
    return sizes[chosen], alone[chosen]


def _positive(value) -> float | None:
    """A tag's value as a positive finite number, else None (a crafted or broken tag: text, NaN, 0)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def pixel_spacing_mm(dataset) -> tuple[float, float] | None:
    """The pixel size a file without a calibrated ultrasound region states: PixelSpacing, else that
    of the enhanced multi-frame functional groups (``functional_group_spacing_mm``), else None. Only
    what the file states as a positive number counts; nothing is assumed."""
    return _spacing_pair(dataset.get("PixelSpacing")) or functional_group_spacing_mm(dataset)


def _spacing_pair(spacing) -> tuple[float, float] | None:
    """A PixelSpacing value (row, col mm) as two positive finite numbers, else None."""
    try:
        values = [_positive(v) for v in spacing] if spacing is not None and len(spacing) == 2 else [None]
    except TypeError:
        values = [None]
    return (values[0], values[1]) if all(v is not None for v in values) else None


def functional_group_spacing_mm(dataset) -> tuple[float, float] | None:
    """PixelSpacing of an enhanced multi-frame file's Pixel Measures: the shared functional group's,
    else the per-frame groups' when every frame states the same one (frames of a loop measured at
    different pixel sizes are no loop to measure), else None."""
    def measured(group) -> tuple[float, float] | None:
        try:
            measures = group.get("PixelMeasuresSequence") or []
            return _spacing_pair(measures[0].get("PixelSpacing")) if len(measures) else None
        except (AttributeError, TypeError, IndexError, ValueError):
            return None

    try:
        shared = dataset.get("SharedFunctionalGroupsSequence") or []
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
        if len(shared) and (spacing := measured(shared[0])):
            return spacing
        spacings = {measured(group) for group in per_frame}
    except (AttributeError, TypeError, ValueError):
        return None
    return spacings.pop() if len(spacings) == 1 else None


def frame_interval_ms(dataset) -> float | None:
    """Time between frames in ms (FrameTime, else CineRate), or None."""
    frame_ms, rate = _positive(dataset.get("FrameTime")), _positive(dataset.get("CineRate"))
    return frame_ms if frame_ms is not None else (1000.0 / rate if rate is not None else None)


JPEG_LS_SYNTAXES = frozenset({JPEGLSLossless, JPEGLSNearLossless})
JPEG_LS_FRAME, JPEG_LS_EXTENSION, JPEG_LS_OVERSIZE = 0xF7, 0xF8, 4  # SOF55; LSE; LSE's oversize-dimension ID
JPEG_START_OF_SCAN = 0xDA
JPEG_SOF_CODES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every other process's frame header


JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"  # the start of the JP2 file format's first box, of 12 bytes
JP2_SIGNATURE_BOX_BYTES = 12
JP2_CODESTREAM_BOX = b"jp2c"


def jp2_box_problem(frame: bytes) -> str | None:
    """Why pydicom's decoder would never finish reading a JPEG 2000 frame stored in the JP2 file format
    (boxes around the codestream, as Pillow and some encoders write it), or None. To find the codestream,
    pydicom (``pixels.utils.get_j2k_parameters``) steps from box to box by each box's length until the
    ``jp2c`` box: a length of 0 (JP2's "to the end of the file", or fewer than 4 bytes left to read one)
    on any other box never moves it on, and the batch hangs there (found by zeroing 64 bytes of a frame).
    This walks the boxes as it does and names the box it would stop at."""
    if not frame.startswith(JP2_SIGNATURE):
        return None
    offset = JP2_SIGNATURE_BOX_BYTES
    while offset < len(frame):
        length = int.from_bytes(frame[offset:offset + 4], "big")
        if frame[offset + 4:offset + 8] == JP2_CODESTREAM_BOX:
            return None
        if length == 0:
            return f"a JP2 box of length 0 at byte {offset}, before its codestream"
        offset += length
    return None


def jpeg_ls_frame_size(frame: bytes) -> tuple[int, int]:
    """(rows, columns) that a JPEG-LS frame's own header states (its SOF55 segment), read without
    decoding; ValueError, with the reason, for a frame whose header cannot say it as T.87 lays it out
    (a start of image, then marker segments up to the first start of scan, one of them SOF55). Also
    refused: a size of 0 (T.87's "given later") and an oversize-dimension LSE segment (T.870's way to
    state more than 65535 pixels a side) in the header or anywhere after it: CharLS would take the
    size from there, and no echo picture needs one. After the header no segment walk is needed: JPEG-LS
    stuffs a 0 bit after every 0xFF of coded data, so there 0xFF then 0xF8 is always a marker."""
    if frame[:2] != b"\xff\xd8":
        raise ValueError("no JPEG start of image")
    at, size = 2, None
    while True:
        if at >= len(frame) or frame[at] != 0xFF:
            raise ValueError(f"no marker at byte {at} of its header")
        while at < len(frame) and frame[at] == 0xFF:  # a marker may follow fill bytes
            at += 1
        if at >= len(frame):
            raise ValueError("its header ends before its scan")
        code, at = frame[at], at + 1
        if code == JPEG_START_OF_SCAN:
            break
        if code in JPEG_SOF_CODES:
            raise ValueError(f"a frame header of another JPEG process (0xFF{code:02X})")
        length = int.from_bytes(frame[at:at + 2], "big")
        if length < 2 or at + length > len(frame):
            raise ValueError(f"a marker segment (0xFF{code:02X}) of length {length} at byte {at}")
        if code == JPEG_LS_FRAME:
            if size is not None or length < 8:
                raise ValueError("a second or short JPEG-LS frame header")
            size = (int.from_bytes(frame[at + 3:at + 5], "big"), int.from_bytes(frame[at + 5:at + 7], "big"))
        if code == JPEG_LS_EXTENSION and length > 2 and frame[at + 2] == JPEG_LS_OVERSIZE:
            raise ValueError("an oversize-dimension segment (LSE) states its picture's size")
        at += length
    if size is None or 0 in size:
        raise ValueError("no JPEG-LS frame header (SOF55) that states its size before its scan")
    marker = frame.find(b"\xff\xf8", at)
    while marker >= 0:
        if frame[marker + 4:marker + 5] == bytes([JPEG_LS_OVERSIZE]):
            raise ValueError("an oversize-dimension segment (LSE) states its picture's size")
        marker = frame.find(b"\xff\xf8", marker + 2)
    return size


def compressed_frame_problem(dataset, rows: int, cols: int) -> tuple[str, str] | None:
    """Why the compressed frames of a file cannot be its Rows x Columns pictures, as (status, detail),
    or None: each JPEG, JPEG 2000 or JPEG-LS frame's own header is read (no pixel is decoded) and must
    state the file's picture size (``bad_geometry`` otherwise). A frame header is the decoder's to
    trust: a crafted one would have Pillow inflate a picture of up to its own limit (179 M pixels), and
    CharLS one of up to 65535 x 65535 (4 GB for a 40 x 30 file), before the file's size could refuse
    it. A JPEG-LS frame whose size cannot be read from its header is ``unreadable_file`` before
    decoding, as CharLS has no limit of its own, and so is a JPEG 2000 frame whose JP2 boxes pydicom
    would walk forever (``jp2_box_problem``); JPEG and JPEG 2000 frames that Pillow does not
    recognise (broken bytes), and RLE, are left to the decoder, which names its own reason.
    The frames checked are the ones the decoder will be given: found as pydicom's decoding run finds
    them (its ``DecodeRunner``'s source and Extended Offset Table, where the file has a usable one),
    not by a reading of our own."""
    from PIL import Image, UnidentifiedImageError
    from pydicom.encaps import generate_frames
    from pydicom.pixels.decoders.base import DecodeRunner

    try:
        syntax = dataset.file_meta.get("TransferSyntaxUID")
        if syntax is None or not syntax.is_encapsulated or "PixelData" not in dataset:
            return None
        runner = DecodeRunner(syntax)
        runner.set_source(dataset)
        runner.validate()
        # As the decoder's iter_decode reads them; every frame, those past the frame count too.
        frames = generate_frames(runner.src, number_of_frames=runner.number_of_frames, extended_offsets=runner.extended_offsets)
        for index, frame in enumerate(frames):
            if syntax in JPEG2000TransferSyntaxes and (problem := jp2_box_problem(frame)):
                return "unreadable_file", f"frame {index} of its JPEG 2000 pixel data: {problem}"
            if syntax in JPEG_LS_SYNTAXES:
                try:
                    height, width = jpeg_ls_frame_size(frame)
                except ValueError as error:
                    return "unreadable_file", f"frame {index} of its JPEG-LS pixel data: {error}"
            else:
                try:
                    with Image.open(BytesIO(frame), formats=("JPEG", "JPEG2000")) as image:
                        width, height = image.size
                except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
                    continue
            if (height, width) != (rows, cols):
                return "bad_geometry", f"frame {index} states {height} x {width} pixels in its own header, the file {rows} x {cols}"
    except (ValueError, TypeError, KeyError, IndexError, EOFError, OSError, AttributeError, StopIteration):
        return None  # no transfer syntax, or broken encapsulation: the decoder says what it found
    return None


def _grey(pixels: np.ndarray, dataset) -> np.ndarray:
    """Grey levels (T, H, W): colour (RGB, or YBR which pydicom gives as RGB) by luminance, so
    burnt-in coloured annotations only add grey outside the sector; a palette-colour image through
    its own colour table first (its stored values are indices into the table, not brightness);
    MONOCHROME1 inverted."""
    if dataset.get("PhotometricInterpretation") == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = np.asarray(apply_color_lut(pixels.astype(np.uint16 if dataset.BitsAllocated > 8 else np.uint8), dataset),
                            dtype=np.float32) @ LUMINANCE
    elif dataset.get("SamplesPerPixel", 1) > 1:
        pixels = pixels @ LUMINANCE
    elif dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return pixels


# Values larger than this are read from the file only when used (the pixels, after the checks), so a
# crafted element of gigabytes is never held for a tag nobody reads.
DEFER_BYTES = 1 << 20
# What a file may hold beside its pictures: header, overlays, thumbnails, private tags.
MAX_BESIDE_PIXELS_BYTES = 64 << 20


def file_size_problem(stored_bytes: int, dataset, count: int, rows: int, cols: int) -> str | None:
    """Why a file whose dataset is ``stored_bytes`` long (its size, or inflated) is too large for the
    pictures its header declares, or None. A file may hold its pixels uncompressed, or compressed
    (smaller), and up to ``MAX_BESIDE_PIXELS_BYTES`` beside them; one far larger (a pixel element of
    gigabytes behind a header of 40 x 30 pixels, which pydicom would read whole and decode as millions
    of frames) is refused before any pixel is read."""
    samples = min(max(int(dataset.get("SamplesPerPixel", 1) or 1), 1), 4)
    sample_bytes = min(max(int(dataset.get("BitsAllocated", 8) or 8) // 8, 1), 8)
    pixel_bytes = count * rows * cols * samples * sample_bytes
    if stored_bytes > 2 * pixel_bytes + MAX_BESIDE_PIXELS_BYTES:
        return (f"{stored_bytes} bytes for {count} picture(s) of {rows} x {cols} ({pixel_bytes} bytes of pixels): "
                "a file far larger than what it declares")
    return None


# A deflated file's dataset may inflate to what the largest loop allowed takes as raw RGB pixels and what
# any file may hold beside them, as a video's file may (``video.MAX_VIDEO_BYTES``).
MAX_INFLATED_BYTES = 3 * MAX_LOOP_PIXELS + MAX_BESIDE_PIXELS_BYTES
INFLATE_CHUNK_BYTES = 1 << 20


def _meta_and_dataset_start(handle) -> pydicom.dataset.FileMetaDataset:
    """A file's meta information, the handle left where its dataset starts; InvalidDicomError (or a
    damaged value's error) for a file without them."""
    read_preamble(handle, False)
    return _read_file_meta_info(handle)


def is_deflated(path: Path) -> bool:
    """Whether a file states the deflated transfer syntax (False where its meta information cannot be
    read: pydicom then names what is wrong)."""
    try:
        with open(path, "rb") as handle:
            return _meta_and_dataset_start(handle).get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except DAMAGED_VALUE_ERRORS:
        return False


def inflated_copy(path: Path, folder: Path) -> Path:
    """A deflated file with its dataset inflated (explicit VR little endian, which the standard deflates
    to make the deflated syntax), written in ``folder``.

    pydicom inflates a deflated dataset whole into memory, whatever it grows to (a file of 400 KB took
    1 GB; deflate reaches 1,000 to 1), and stops with zlib's own error on a cut stream. Here it is
    inflated a chunk at a time to disk and must end within ``MAX_INFLATED_BYTES``, so the copy is read
    as any other file is (large values only when used); StudyError('unreadable_file') otherwise."""
    copy = folder / "inflated.dcm"
    try:
        with open(path, "rb") as handle, open(copy, "wb") as out:
            meta = _meta_and_dataset_start(handle)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            out.write(bytes(128) + b"DICM")
            writer = DicomFileLike(out)
            writer.is_little_endian, writer.is_implicit_VR = True, False
            write_file_meta_info(writer, meta, enforce_standard=False)
            inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
            while not inflater.eof and (chunk := inflater.unconsumed_tail or handle.read(INFLATE_CHUNK_BYTES)):
                piece = inflater.decompress(chunk, INFLATE_CHUNK_BYTES)
                inflated += len(piece)
                if inflated > MAX_INFLATED_BYTES:
                    raise StudyError("unreadable_file", f"{path.name}: its deflated dataset inflates to more than "
                                                        f"{MAX_INFLATED_BYTES} bytes")
                out.write(piece)
    except zlib.error as error:
        raise StudyError("unreadable_file", f"{path.name}: its deflated dataset is damaged ({error})") from error
    if not inflater.eof:
        raise StudyError("unreadable_file", f"{path.name}: its deflated dataset is cut short")
    return copy


@contextmanager
def opened_dataset(path: Path, stop_before_pixels: bool = False) -> Iterator[tuple[pydicom.Dataset, int]]:
    """The DICOM dataset of ``path`` and the bytes it is stored in, while the block runs (values over
    ``DEFER_BYTES`` are read from the file only when used): a deflated file's ``inflated_copy``,
    removed after the block, else the file itself."""
    with ExitStack() as stack:
        source = path
        if is_deflated(path):
            source = inflated_copy(path, Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="echoef-inflate-"))))
        yield pydicom.dcmread(source, defer_size=DEFER_BYTES, stop_before_pixels=stop_before_pixels), source.stat().st_size


# pydicom converts a tag's bytes only when the tag is first read: a damaged value (a US of three bytes,
# text where a number belongs, a VR no standard names) fails wherever that is, as one of these.
DAMAGED_VALUE_ERRORS = (BytesLengthException, InvalidDicomError, ValueError, TypeError, AttributeError, KeyError,
                        IndexError, OverflowError, EOFError, struct.error, NotImplementedError, zlib.error)


def read_dicom(path: Path, spacing_mm: tuple[float, float] | None = None) -> Loop:
    """One DICOM file as a Loop (T frames; T = 1 for a single frame), checked before decoding; a file
    pydicom cannot parse, or a value it cannot convert wherever it is read, is ``unreadable_file``."""
    path = Path(path)
    try:
        with opened_dataset(path) as (dataset, stored_bytes):
            return _read_checked(path, dataset, stored_bytes, spacing_mm)
    except StudyError:  # a ValueError too: already the study's reason
        raise
    except (InvalidDicomError, OSError) as error:
        raise StudyError("unreadable_file", f"{path.name}: not a readable DICOM image ({str(error)[:150]})") from error
    except DAMAGED_VALUE_ERRORS as error:
        raise StudyError("unreadable_file", f"{path.name}: a damaged DICOM value ({type(error).__name__}: "
                                            f"{(str(error).splitlines() or [''])[0][:150]})") from error


def _read_checked(path: Path, dataset, stored_bytes: int, spacing_mm: tuple[float, float] | None) -> Loop:
    rows, cols, count = int(dataset.Rows), int(dataset.Columns), int(dataset.get("NumberOfFrames", 1) or 1)
    if problem := loop_size_problem(count, rows, cols):
        raise StudyError("bad_geometry", f"{path.name}: {problem} is not an echo loop")
    if problem := file_size_problem(stored_bytes, dataset, count, rows, cols):
        raise StudyError("unreadable_file", f"{path.name}: {problem}")
    # Every value that describes the pixels, converted before anything else reads them (and after the
    # file's size is known to be sane: the Extended Offset Table is among them): a damaged one (a VR no
    # standard names in PixelRepresentation, which pydicom consults for any value of ambiguous VR, the
    # regions' among them) is this file's damage (read_dicom: unreadable_file), not a region without a
    # size (no_spacing) nor, as the decoder's NotImplementedError, a missing plugin.
    as_pixel_options(dataset)
    try:
        region = measured_region(calibrated_regions(dataset, rows, cols), rows, cols)
    except StudyError as error:
        raise StudyError(error.reason, f"{path.name}: {error.detail}") from error
    spacing = region[0] if region else pixel_spacing_mm(dataset) or (tuple(map(float, spacing_mm)) if spacing_mm else None)
    if spacing is None:
        raise StudyError("no_spacing", f"{path.name}: no ultrasound region calibrated in cm and no PixelSpacing; "
                                       "give --spacing-mm ROW COL")
    syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
    if problem := compressed_frame_problem(dataset, rows, cols):
        raise StudyError(problem[0], f"{path.name}: {problem[1]}")
    if gdcm_decodes(syntax):
        pixels = decode_in_child(path, dataset, count, rows, cols)
    else:
        try:
            pixels = np.asarray(dataset.pixel_array, dtype=np.float32)
        except (NotImplementedError, RuntimeError) as error:
            raise decoding_failure(path.name, syntax, error) from error
        except (ValueError, AttributeError, KeyError, IndexError, TypeError, StopIteration, EOFError, OverflowError,
                struct.error) as error:  # what pydicom and its decoders raise on broken pixel data, frame tables included
            raise StudyError("unreadable_file", f"{path.name}: pixel data ({type(error).__name__}: "
                                                f"{(str(error).splitlines() or [''])[0][:150]})") from error
    if count == 1:
        pixels = pixels[None]
    try:
        frames = _grey(pixels, dataset)
    except (ValueError, KeyError, AttributeError, IndexError, TypeError) as error:  # a palette without its table
        raise StudyError("unreadable_file", f"{path.name}: colours ({str(error).splitlines()[0][:150]})") from error
    if frames.shape != (count, rows, cols):
        raise StudyError("bad_geometry", f"{path.name}: pixel data of shape {pixels.shape} for {count} x {rows} x {cols}")
    header = Header.plain(spacing)
    if region:
        frames, header = _within(frames, region[1], spacing)
    check_pixels(frames, spacing, path.name)
    return Loop(frames, spacing, header, frame_interval_ms(dataset))


def _within(frames: np.ndarray, measured: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, Header]:
    """The frames cut to the box of the ``measured`` pixels, any other pixel in that box black (as
    outside the sector), and the header that places the cut where it lies in the file's picture."""
    rows, cols = np.flatnonzero(measured.any(axis=1)), np.flatnonzero(measured.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    cut = np.where(measured[top:bottom, left:right], frames[:, top:bottom, left:right], 0).astype(frames.dtype)
    plain = Header.plain(spacing)
    return cut, Header(plain.spacing, (float(left * plain.spacing[0]), float(top * plain.spacing[1])), plain.direction)


def decoding_failure(name: str, syntax, error: Exception) -> StudyError:
    """The study's status when pydicom could not decode its pixels: ``unsupported_transfer_syntax``
    when no decoder here can read the syntax (none installed for it, or each installed one refuses it
    as beyond what it supports, e.g. Pillow and 12-bit JPEG), which a plugin would fix; otherwise
    ``unreadable_file``: a decoder for the syntax tried and the data itself failed (truncated or
    foreign bytes, a frame whose own header claims a decompression bomb's size), which no plugin fixes.
    pydicom gathers each plugin's exception into one RuntimeError, one "plugin: reason" line each;
    its plugins word a limit of their own as "... does not support ..."."""
    lines = str(error).splitlines()
    reasons = [line.strip() for line in lines[1:] if line.strip()] or lines[:1] or [type(error).__name__]
    reason, label = "; ".join(reasons)[:200], getattr(syntax, "name", syntax)
    if not getattr(syntax, "is_transfer_syntax", False):  # a damaged or private UID: no plugin decodes it
        return StudyError("unreadable_file", f"{name}: its transfer syntax {str(syntax)[:64]!r} is none DICOM defines")
    if (isinstance(error, NotImplementedError) or not _decoder_installed(syntax)
            or all("does not support" in line for line in reasons)):
        return StudyError("unsupported_transfer_syntax", f"{name}: pixels in {label} cannot be decoded here ({reason})")
    return StudyError("unreadable_file", f"{name}: pixel data in {label} could not be decoded ({reason})")


# Decoded by GDCM in a child process, even where a user has installed an in-process plugin for them:
# JPEG-LS decoders spin on damaged data (CharLS 2.4.2, pyjpegls 1.5.1's: 9 s on one 48 x 40 frame).
CHILD_SYNTAXES = frozenset({JPEGLossless, JPEGLosslessSV1}) | JPEG_LS_SYNTAXES
CHILD_MEMORY_BYTES = 768 << 20  # Python, numpy, pydicom and GDCM map about 210 MB before any pixel
CHILD_BASE_S = 20.0  # a child's start (about 1 s) and a file's parse, with room for a busy machine
CHILD_PIXELS_PER_S = 2e6  # a 60-frame 600 x 800 lossless loop: 2.8 s end to end here, 10 M pixels/s beside a training
# Where a system refuses a limit (macOS enforces no address-space limit), the parent's wall clock still holds.
CHILD_LIMITS = """
import sys
memory, seconds = int(sys.argv[3]), int(sys.argv[4])
try:
    import resource
except ImportError:
    resource = None
for name, limit in (("RLIMIT_AS", (memory, memory)), ("RLIMIT_CPU", (seconds, seconds + 1))):
    try:
        resource.setrlimit(getattr(resource, name), limit)
    except (AttributeError, ValueError, OSError):
        pass
"""
CHILD_DECODE = """
import numpy, pydicom
from pydicom.pixels import pixel_array
pixels = pixel_array(pydicom.dcmread(sys.argv[1]), decoding_plugin="gdcm")
numpy.save(sys.argv[2], numpy.ascontiguousarray(pixels), allow_pickle=False)
"""


def _gdcm_out_of_this_process() -> None:
    """Take GDCM from every in-process decoder of pydicom, which would try it first where installed."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    for syntax in AllTransferSyntaxes:
        try:
            get_decoder(syntax).remove_plugin("gdcm")
        except (NotImplementedError, ValueError):  # no decoder for the syntax, or no GDCM in it
            continue


_gdcm_out_of_this_process()


def gdcm_decodes(syntax) -> bool:
    """Whether pixel data of this transfer syntax goes to ``decode_in_child``: one of ``CHILD_SYNTAXES``,
    with GDCM installed."""
    return syntax in CHILD_SYNTAXES and importlib.util.find_spec("gdcm") is not None


def decode_in_child(path: Path, dataset, count: int, rows: int, cols: int) -> np.ndarray:
    """The pixels (float32, as ``dataset.pixel_array`` gives them) of ``path``, a file already checked
    as ``_read_checked`` checks it, decoded by GDCM in a child Python (isolated mode) held to
    ``CHILD_MEMORY_BYTES`` plus four times the pictures' bytes and to a time that grows with its pixels;
    ``unreadable_file`` if it fails, is killed, overruns its time, or gives other than the file's
    ``count`` x ``rows`` x ``cols`` pictures."""
    label = getattr(dataset.file_meta.get("TransferSyntaxUID"), "name", "its transfer syntax")
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    picture_bytes = count * rows * cols * samples * max(1, math.ceil(int(dataset.get("BitsAllocated", 8) or 8) / 8))
    seconds = CHILD_BASE_S + count * rows * cols / CHILD_PIXELS_PER_S
    expected = ((count,) if count > 1 else ()) + (rows, cols) + ((samples,) if samples > 1 else ())
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="echoef-decode-") as folder:
        out = Path(folder) / "pixels.npy"
        command = [sys.executable, "-I", "-c", CHILD_LIMITS + CHILD_DECODE, str(path), str(out), str(CHILD_MEMORY_BYTES + 4 * picture_bytes),
                   str(math.ceil(seconds))]
        try:
            result = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=seconds,
                                    env=environment, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as error:
            raise StudyError("unreadable_file", f"{path.name}: GDCM took over {seconds:.0f} s to decode its pixel data "
                                                f"in {label}") from error
        if result.returncode != 0:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            reason = lines[-1][:150] if lines and result.returncode > 0 else f"the decoder ended with signal {-result.returncode}"
            raise StudyError("unreadable_file", f"{path.name}: pixel data in {label} could not be decoded by GDCM ({reason})")
        try:
            if out.stat().st_size > 8 * count * rows * cols * samples + 4096:
                raise ValueError("more bytes than the file's pictures")
            pixels = np.load(out, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:  # nothing written, a truncated file, an object array
            raise StudyError("unreadable_file", f"{path.name}: GDCM gave no pictures of the file's size ({str(error)[:100]})") from error
    if pixels.shape != expected or pixels.dtype.kind not in "uif":
        raise StudyError("bad_geometry", f"{path.name}: GDCM decoded {pixels.dtype} pictures of shape {pixels.shape}, "
                                         f"the file states {expected}")
    return pixels.astype(np.float32)


def _decoder_installed(syntax) -> bool:
    """Whether pydicom has a decoder for the transfer syntax with at least one plugin installed (GDCM,
    taken from every in-process decoder, never counts)."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError, TypeError):
        return False


def view_from_name(path: Path) -> str | None:
    """'2CH' or '4CH' when the file's name says which (2CH, A2C, apical2 ...), else None."""
    found = [view for view, pattern in VIEW_IN_NAME.items() if pattern.search(Path(path).stem)]
    return found[0] if len(found) == 1 else None


def header_facts(path: Path) -> tuple[str, str, int]:
    """(patient id, study instance UID, number of frames) of a DICOM file, from its header only."""
    with opened_dataset(path, stop_before_pixels=True) as (dataset, _):
        return (str(dataset.get("PatientID", "") or "unknown"), str(dataset.get("StudyInstanceUID", "") or path.parent.name),
                int(dataset.get("NumberOfFrames", 1) or 1))
