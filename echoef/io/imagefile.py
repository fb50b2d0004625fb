"""Read and write 2D frame files: NIfTI and MetaImage, or PNG/JPEG/TIFF/BMP with a given pixel size.

Arrays come out (H, W) in canonical orientation: rows along the physical +y axis and columns along
+x, as a viewer that honours the header shows the image (the apex at the top for apical views). A
header whose direction flips or swaps the axes is undone on read and redone on write; an oblique
one is refused. Every array comes with its (row, col) spacing in mm and the ``Header`` it was stored
with, so a label map written back overlays its image exactly in any viewer.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import StudyError
from .atomic import atomic_files
from .untrusted import regular_file

sitk.ProcessObject.SetGlobalWarningDisplay(False)  # unreadable files are reported as a status

HEADER_FORMATS = (".nii.gz", ".nii", ".mhd", ".mha")  # headers that carry the physical pixel size
PLAIN_FORMATS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")  # pixels only: the size must be given
VIDEO_FORMATS = (".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm")  # loops without a size: EF only (video.py)
MAX_PIXELS = 4096 * 4096  # larger "2D echo frames" are corrupt headers, not images
MAX_LOOP_PIXELS = 1 << 29  # a few hundred frames of a large sector; more is a corrupt header
# Where a NIfTI's pixels start (its header and extensions); further in is a crafted header that would
# have the whole gzip stream inflated before the first pixel.
MAX_NIFTI_VOX_OFFSET = 64 << 20
MAX_GZIP_EXTRA_BYTES = 1 << 20  # what a .nii.gz may hold past its declared pixels (padding), inflated to check its checksum
# NIfTI's xyzt_units: the spatial unit (bits 0-2) in mm, the time unit (bits 3-5) in ms. An unknown
# spatial unit (0) is read as mm, as ITK and the NIfTI tools read it (nibabel writes 0 unless told).
NIFTI_SPACE_UNIT_MM = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 0.001}
NIFTI_TIME_UNIT_MS = {8: 1000.0, 16: 1.0, 24: 0.001}
MAX_CHANNELS = 4  # grey, RGB or RGBA: more is no picture of an echo
MAX_LOOP_FRAMES = 10_000  # tens of beats at a high frame rate; each frame is segmented, so more would run for hours
# Echo pixels are a few hundredths to about one millimetre; far outside this a header is in the
# wrong unit (metres, microns) or corrupt, and every volume measured on it would be wrong.
SPACING_RANGE_MM = (0.005, 10.0)
# Echo loops run at 15 to a few hundred frames a second (research scanners at a few thousand); a stated
# time between frames far outside this is a wrong unit or a corrupt header, and the loop's length in
# seconds (review's ``no_beat``) taken from it would be wrong: such a time counts as none stated.
FRAME_MS_RANGE = (0.1, 1000.0)
LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601: colour ultrasound pixels (DICOM, video) to grey
AXIS_TOLERANCE = 1e-3  # direction cosines closer than this to 0 or 1 count as axis-aligned


def loop_size_problem(frames: int, height: int, width: int) -> str | None:
    """Why ``frames`` pictures of ``height`` x ``width`` pixels are no 2D echo frame or loop (None if
    they can be one): checked from a header, before any pixel is read. The frame count is bounded on
    its own too: tiny pictures would otherwise let a loop hold millions of frames within the pixel limit."""
    if min(height, width) < 2 or height * width > MAX_PIXELS:
        return f"pictures of {height} x {width} pixels"
    if not 1 <= frames <= MAX_LOOP_FRAMES or frames * height * width > MAX_LOOP_PIXELS:
        return f"{frames} frames of {height} x {width} pixels (at most {min(MAX_LOOP_FRAMES, MAX_LOOP_PIXELS // (height * width))})"
    return None


@dataclass(frozen=True)
class Orientation:
    """How a stored (H, W) array maps onto the canonical one: a transpose, then flips."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        out = array.T if self.transpose else array
        out = out[::-1] if self.flip_rows else out
        return np.ascontiguousarray(out[:, ::-1] if self.flip_cols else out)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        out = array[:, ::-1] if self.flip_cols else array
        out = out[::-1] if self.flip_rows else out
        return np.ascontiguousarray(out.T if self.transpose else out)


@dataclass(frozen=True)
class Header:
    """A frame file's geometry as stored, in ITK's order: spacing (x, y[, z]) and origin in mm, and
    the direction cosines row by row (column k is the physical direction of index axis k)."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def plain(cls, spacing_mm: tuple[float, float]) -> Header:
        """The header of a canonical array with (row, col) ``spacing_mm``, at the origin."""
        return cls((float(spacing_mm[1]), float(spacing_mm[0])), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))

    def with_spacing_mm(self, spacing_mm: tuple[float, float]) -> Header:
        """The same header with the canonical (row, col) pixel size ``spacing_mm`` (for files that
        state none, the size the user gives)."""
        row, col = (float(v) for v in spacing_mm)
        in_plane = (row, col) if self.orientation().transpose else (col, row)
        return Header(in_plane + self.spacing[2:], self.origin, self.direction)

    @property
    def dimension(self) -> int:
        return len(self.spacing)

    def orientation(self) -> Orientation:
        """The flips and transpose that make the stored array canonical; StudyError('bad_geometry')
        for an oblique image plane or in-plane rotation, which no array flip can undo."""
        n = self.dimension
        matrix = np.asarray(self.direction, dtype=float).reshape(n, n)
        if n == 3 and not (np.allclose(matrix[2, :2], 0, atol=AXIS_TOLERANCE)
                           and np.allclose(matrix[:2, 2], 0, atol=AXIS_TOLERANCE)):
            raise StudyError("bad_geometry", f"direction {self.direction}: the image plane is oblique")
        plane = matrix[:2, :2]
        if np.allclose(np.abs(plane), np.eye(2), atol=AXIS_TOLERANCE):
            return Orientation(False, bool(plane[1, 1] < 0), bool(plane[0, 0] < 0))
        if np.allclose(np.abs(plane), np.eye(2)[::-1], atol=AXIS_TOLERANCE):
            # Index axis x (array columns) runs along physical y: transposed, rows come from it.
            return Orientation(True, bool(plane[1, 0] < 0), bool(plane[0, 1] < 0))
        raise StudyError("bad_geometry", f"direction {self.direction} is rotated in plane; only flipped or "
                                          "transposed axes can be read")

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """(row, col) spacing of the canonical array."""
        x, y = float(self.spacing[0]), float(self.spacing[1])
        return (x, y) if self.orientation().transpose else (y, x)

    def corner_mm(self, shape: tuple[int, int]) -> np.ndarray:
        """Physical (x, y) of the canonical array's first pixel, for an array of canonical ``shape``:
        two files cover the same grid when their shapes, spacings and corners agree."""
        o = self.orientation()
        row, col = (shape[0] - 1 if o.flip_rows else 0), (shape[1] - 1 if o.flip_cols else 0)
        if o.transpose:
            row, col = col, row  # the stored (row, col) of that pixel
        n = self.dimension
        matrix = np.asarray(self.direction, dtype=float).reshape(n, n)
        index_mm = np.array([col, row, 0][:n], dtype=float) * np.asarray(self.spacing, dtype=float)
        return (np.asarray(self.origin, dtype=float) + matrix @ index_mm)[:2]


def file_format(path: Path) -> str:
    """The lower-case extension that names the format ('.nii.gz' counts as one)."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _check_gzip_complete(path: Path, needed_bytes: int) -> None:
    """StudyError('unreadable_file') unless a .nii.gz inflates to the bytes its header declares
    (``needed_bytes``: its pixel offset and pixels) and its stream's checksum holds. SimpleITK
    zero-fills a truncated .nii.gz without complaint, and neither it nor an inflation that stops at
    the declared bytes sees damage inside a stored block (it inflates, into other pixels): only the
    checksum at the stream's end does. So the stream is inflated to its end, and at most
    ``MAX_GZIP_EXTRA_BYTES`` past the declared bytes: a small file that inflates to gigabytes (a
    gzip bomb) costs no more than the image it claims to be."""
    read = 0
    try:
        with gzip.open(path) as stream:
            while read < needed_bytes:
                chunk = stream.read(min(1 << 22, needed_bytes - read))
                if not chunk:
                    raise EOFError(f"{read} of the {needed_bytes} bytes the header declares")
                read += len(chunk)
            if len(stream.read(MAX_GZIP_EXTRA_BYTES + 1)) > MAX_GZIP_EXTRA_BYTES:  # to its end: the checksum is checked there
                raise StudyError("unreadable_file", f"{path.name}: its gzip stream holds more than {MAX_GZIP_EXTRA_BYTES} "
                                                    f"bytes past the {needed_bytes} its header declares")
    except (OSError, EOFError, zlib.error) as error:
        raise StudyError("unreadable_file", f"{path.name}: truncated or corrupt gzip ({error})") from error


def _check_nifti_data(path: Path, pixel_count: int) -> None:
    """A NIfTI file's pixels must start after its header and be all there, else
    StudyError('unreadable_file'). ITK reads from a vox_offset that points into the header (its bytes
    taken as pixels) and zero-fills the pixels a file cut short lacks, a plain .nii as a .nii.gz,
    without an error. The offset must be a whole number of bytes past the header and its extension
    flag (352 bytes, 544 for NIfTI-2) and at most ``MAX_NIFTI_VOX_OFFSET``; the file must hold the
    pixels the header declares, of its datatype's size, from there (a .nii.gz: ``_check_gzip_complete``, inflating no further)."""
    stored = _nifti_header(path)
    # The format's header size (its class's), not the stored field, which a crafted file may set to anything.
    offset, first = float(stored["vox_offset"]), type(stored).sizeof_hdr + 4
    if not (math.isfinite(offset) and offset == int(offset) and first <= offset <= MAX_NIFTI_VOX_OFFSET):
        shown = f"{offset:.0f}" if math.isfinite(offset) and offset == int(offset) else f"{offset}"
        raise StudyError("unreadable_file", f"{path.name}: its pixels would start {shown} bytes in; in a NIfTI file they "
                                            f"start after its {first}-byte header, and at most {MAX_NIFTI_VOX_OFFSET} bytes in here")
    try:  # by the datatype, as ITK reads: a bitpix that understates it left half a frame zero-filled
        pixel_bytes = stored.get_data_dtype().itemsize
    except Exception as error:  # noqa: BLE001 - nibabel's errors for a datatype code it does not know
        raise StudyError("unreadable_file", f"{path.name}: NIfTI datatype ({str(error)[:150]})") from error
    needed_bytes = int(offset) + pixel_count * pixel_bytes
    if file_format(path) == ".nii.gz":
        _check_gzip_complete(path, needed_bytes)
    elif (stored_bytes := path.stat().st_size) < needed_bytes:
        raise StudyError("unreadable_file", f"{path.name}: {stored_bytes} bytes where its header declares {needed_bytes} "
                                            "(a file cut short)")


def _check_nifti_transform(path: Path) -> None:
    """StudyError('bad_geometry') unless the transform a NIfTI header gives ITK is finite, checked before
    ITK parses it: the sform's rows where sform_code is set, the quaternion and its offset where
    qform_code is set. An sform row of (1, 0, inf, 0) sent ITK's reader into a loop that did not end
    (found by fuzzing the header's fields); NaN in it gave NaN axes. A pixdim that is not finite ITK
    reads without harm, and it is refused as a pixel size (``_stated_spacing``: ``bad_spacing``)."""
    stored = _nifti_header(path)
    fields = []
    if int(stored["sform_code"]) != 0:
        fields += ["srow_x", "srow_y", "srow_z"]
    if int(stored["qform_code"]) != 0:
        fields += ["quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"]
    for name in fields:
        if not np.isfinite(np.asarray(stored[name], dtype=float)).all():
            raise StudyError("bad_geometry", f"{path.name}: the header's {name} is not a finite number")


def _check_nifti_version(path: Path) -> None:
    """StudyError('unsupported_format') for a NIfTI-2 file, with the fix: ITK (as SimpleITK builds it)
    reads NIfTI-1 only and names no format for a NIfTI-2 header."""
    import nibabel

    if isinstance(_nifti_header(path), nibabel.Nifti2Header):
        raise StudyError("unsupported_format", f"{path.name}: a NIfTI-2 header, which is not read; save it as NIfTI-1 "
                                               "(nibabel: nibabel.save(nibabel.Nifti1Image.from_image(nibabel.load(path)), out))")


def _nifti_header(path: Path):
    """A NIfTI file's header exactly as stored (nibabel, unchecked: its checks would "fix" a zero
    pixel size to 1 mm, as ITK does)."""
    import nibabel

    try:
        with nibabel.openers.ImageOpener(str(path)) as handle:
            start = handle.read(4)
        nifti2 = 540 in (int.from_bytes(start, "little"), int.from_bytes(start, "big"))
        with nibabel.openers.ImageOpener(str(path)) as handle:
            return (nibabel.Nifti2Header if nifti2 else nibabel.Nifti1Header).from_fileobj(handle, check=False)
    except Exception as error:  # noqa: BLE001 - nibabel's many header errors: the file is unreadable, whichever
        raise StudyError("unreadable_file", f"{path.name}: NIfTI header ({str(error)[:150]})") from error


def _stated_spacing(path: Path, reader_spacing: tuple[float, ...]) -> bool:
    """Whether the file itself states the pixel size that ``reader_spacing`` (ITK's) gives.

    ITK reports 1 mm where a header states none (a NIfTI pixdim of 0 or NaN, a MetaImage without
    ElementSpacing) as if the file had said so; so NIfTI's pixdim is read as stored (nibabel) and
    must be positive, finite and what ITK reports, and a MetaImage's ElementSpacing (else its
    ElementSize, as ITK takes them) must be stated and be what ITK reports.
    """
    fmt = file_format(path)
    if fmt in (".nii", ".nii.gz"):
        stored = _nifti_header(path)
        to_mm = NIFTI_SPACE_UNIT_MM.get(int(stored["xyzt_units"]) & 0x07)
        if to_mm is None:
            raise StudyError("bad_spacing", f"{path.name}: its spatial unit code {int(stored['xyzt_units']) & 0x07} is "
                                            "none NIfTI defines (metre, mm, micron or unknown)")
        pixdim = np.asarray(stored["pixdim"][1:3], dtype=float) * to_mm
        if not (np.isfinite(pixdim).all() and (pixdim > 0).all()):
            return False
        if not np.allclose(pixdim, np.asarray(reader_spacing[:2], dtype=float), rtol=1e-4, atol=0):
            raise StudyError("bad_spacing", f"{path.name}: pixdim states {_mm(pixdim)} mm but the header's "
                                            f"transform gives {_mm(reader_spacing[:2])} mm")
        if int(stored["sform_code"]) > 0:
            # ITK takes the spacing from pixdim and only the direction from the sform; a viewer places
            # the pixels by the sform. Where their sizes differ the header states two pixel sizes.
            sform_mm = np.linalg.norm(np.asarray(stored.get_sform(), dtype=float)[:3, :2], axis=0) * to_mm
            if not np.allclose(sform_mm, pixdim, rtol=1e-4, atol=0):
                raise StudyError("bad_spacing", f"{path.name}: pixdim states {_mm(pixdim)} mm but its sform places pixels "
                                                f"{_mm(sform_mm)} mm apart")
        return True
    fields = _metaimage_fields(path)
    key = next((key for key in ("ElementSpacing", "ElementSize") if key in fields), None)  # ITK's order
    if key is None:
        return False
    try:
        stated = [float(value) for value in fields[key].split()[: len(reader_spacing)]]
    except ValueError as error:
        raise StudyError("bad_spacing", f"{path.name}: {key} {fields[key][:40]!r} is not numbers") from error
    # ITK reports 1 mm where it stopped parsing before the spacing (an Offset of too few values does
    # that), as if the file had said so: what the header states must be what ITK reads.
    if len(stated) < 2 or not np.allclose(stated[:2], np.asarray(reader_spacing[:2], dtype=float), rtol=1e-4, atol=0):
        raise StudyError("bad_spacing", f"{path.name}: {key} states {fields[key][:40]!r} but ITK reads "
                                        f"{tuple(reader_spacing[:2])} mm from the header")
    return True


def _mm(values) -> str:
    """Sizes for a message: '0.3 x 0.5'."""
    return " x ".join(f"{float(value):.6g}" for value in values)


def _nifti_pixels_finite(path: Path) -> bool:
    """Whether every pixel of a NIfTI file is a finite number once scaled (ITK silently reads NaN and
    infinite pixels as 0); only floating-point data or a scaling can hold such values."""
    import nibabel

    header = _nifti_header(path)
    slope, intercept = float(header["scl_slope"]), float(header["scl_inter"])
    scaled = slope not in (0.0, 1.0) and not np.isnan(slope)
    if header.get_data_dtype().kind != "f" and not scaled and np.isfinite(intercept):
        return True
    try:
        with np.errstate(all="ignore"):
            return bool(np.isfinite(np.asanyarray(nibabel.load(str(path)).dataobj)).all())
    except Exception as error:  # noqa: BLE001 - as in _nifti_header
        raise StudyError("unreadable_file", f"{path.name}: NIfTI pixels ({str(error)[:150]})") from error


# MetaIO's other names for one field, and the fields that place the pixels in space.
METAIMAGE_SYNONYMS = {"Origin": "Offset", "Position": "Offset", "Orientation": "TransformMatrix",
                      "Rotation": "TransformMatrix", "BinaryDataByteOrderMSB": "ElementByteOrderMSB"}
METAIMAGE_GEOMETRY = {"NDims", "DimSize", "Offset", "TransformMatrix", "CenterOfRotation", "AnatomicalOrientation"}
METAIMAGE_BOOLEANS = {"BinaryData", "CompressedData", "ElementByteOrderMSB"}


def _metaimage_head(path: Path) -> str:
    """A MetaImage header's text: its lines up to ElementDataFile (a .mha's pixels follow it)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16).decode("latin-1")
    lines = []
    for line in head.splitlines():
        lines.append(line)
        if line.partition("=")[0].strip() == "ElementDataFile":
            break
    return "\n".join(lines)


def _metaimage_fields(path: Path) -> dict[str, str]:
    """A MetaImage header's ``key = value`` fields, stripped, as text."""
    fields = dict(line.partition("=")[::2] for line in _metaimage_head(path).splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in fields.items()}


def _check_metaimage_header(path: Path) -> None:
    """StudyError unless a MetaImage header states each field once (or twice alike; synonyms count as
    one field), its NDims is 2-4 and its DimSize that many positive whole numbers, checked before ITK
    parses it: ITK's MetaIO sizes its arrays for at most 10 axes and trusts NDims, so a crafted one
    (-1, 83, 10**11) corrupts its memory and the whole process dies (segmentation fault or abort), not
    the one study."""
    head = _metaimage_head(path)
    if "\x00" in head:
        raise StudyError("unreadable_file", f"{path.name}: NUL bytes inside its header (a damaged file)")
    stated: dict[str, set[str]] = {}
    written: dict[str, set[str]] = {}  # the names each field was stated under, for the message
    for name, equals, value in (line.partition("=") for line in head.splitlines()):
        if equals:
            key = METAIMAGE_SYNONYMS.get(name.strip(), name.strip())
            stated.setdefault(key, set()).add(" ".join(value.split()))
            written.setdefault(key, set()).add(name.strip())
    if twice := sorted(key for key, values in stated.items() if len(values) > 1):
        # Which one ITK takes is ITK's choice (the last ElementSpacing; TransformMatrix over Orientation),
        # and another reader's may differ: a header that states a field two ways states neither.
        reason = ("bad_spacing" if {"ElementSpacing", "ElementSize"} & set(twice) else
                  "bad_geometry" if METAIMAGE_GEOMETRY & set(twice) else "unreadable_file")
        names = ", ".join("/".join(sorted(written[key])) for key in twice)
        raise StudyError(reason, f"{path.name}: its header states {names[:80]} twice, differently")
    for key in METAIMAGE_BOOLEANS & set(stated):
        # MetaIO reads a value starting with T, t or 1 as True: "CompressedData = 1" inflated raw pixels
        # (garbage) where the size check had taken them as raw. Only the words leave no doubt.
        if next(iter(stated[key])).lower() not in ("true", "false"):
            raise StudyError("unreadable_file", f"{path.name}: {'/'.join(sorted(written[key]))} "
                                                f"{next(iter(stated[key]))[:20]!r} is neither True nor False")
    stated = {key: stated.get(key, set()) for key in ("NDims", "DimSize")}
    axes, sizes = next(iter(stated["NDims"]), ""), next(iter(stated["DimSize"]), "").split()
    if not (axes.isdigit() and 2 <= int(axes) <= 4):
        raise StudyError("bad_geometry", f"{path.name}: NDims {axes[:20]!r}: a 2D image or a 2D loop has 2 to 4 axes")
    if len(sizes) != int(axes) or not all(size.isdigit() and int(size) > 0 for size in sizes):
        raise StudyError("bad_geometry", f"{path.name}: DimSize {' '.join(sizes)[:40]!r} is not {axes} sizes")


def _check_metaimage_data(path: Path, data_file: Path | None, needed_bytes: int) -> None:
    """A MetaImage's pixel data must be the ``needed_bytes`` its header declares, else
    StudyError('unreadable_file'). ITK does not check: a compressed stream that is cut, foreign or
    flipped, or one that follows the header (LOCAL) without its CompressedDataSize, is read as
    whatever memory held, with only a line on stderr; uncompressed data longer than declared (a header
    that lost its CompressedData line reads the stream itself as pixels) is read in part, silently.
    So a compressed stream must inflate to exactly those bytes (``_check_inflates_to``) and
    uncompressed data be exactly that long, from where ITK starts reading (``_metaimage_data_start``)
    to the file's end."""
    fields = _metaimage_fields(path)
    compressed = fields.get("CompressedData", "").lower() == "true"
    header_size = _metaimage_header_size(fields, path.name)
    if compressed and header_size not in (None, 0):
        raise StudyError("unreadable_file", f"{path.name}: HeaderSize {header_size} with compressed pixels "
                                            "(no writer places a stream so; which bytes ITK would inflate is unclear)")
    stated = fields.get("CompressedDataSize")
    if compressed and stated is not None and not re.fullmatch(r"\d{1,18}", stated):
        # MetaIO reads the number its text starts with ("9>11" as 9 bytes of stream): inflated from
        # there, the pixels are whatever memory held.
        raise StudyError("unreadable_file", f"{path.name}: CompressedDataSize {stated[:20]!r} is not a byte count")
    if compressed and data_file is None and stated is None:
        raise StudyError("unreadable_file", f"{path.name}: compressed pixels after the header need its "
                                            "CompressedDataSize, which it does not state")
    try:
        with open(path if data_file is None else data_file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = _metaimage_data_start(handle, path.name, data_file is None, header_size, needed_bytes, size)
            handle.seek(start)
            if compressed:
                _check_inflates_to(handle, needed_bytes, int(stated) if stated is not None else None, path.name)
            elif size - start != needed_bytes:
                raise StudyError("unreadable_file", f"{path.name}: {size - start} bytes of pixels where the header declares "
                                                    f"{needed_bytes} (a damaged header, or another file's data)")
    except OSError as error:
        raise StudyError("unreadable_file", f"{path.name}: its pixels cannot be read ({error})") from error


def _metaimage_header_size(fields: dict[str, str], name: str) -> int | None:
    """A MetaImage's HeaderSize: None where it states none, else a whole number of bytes, -1 (the
    pixels are the data file's last bytes) or more; anything else StudyError('unreadable_file')."""
    value = fields.get("HeaderSize")
    if value is None:
        return None
    if not re.fullmatch(r"-?\d{1,18}", value) or int(value) < -1:
        raise StudyError("unreadable_file", f"{name}: HeaderSize {value[:20]!r} is not a byte count")
    return int(value)


def _metaimage_data_start(handle, name: str, local: bool, header_size: int | None, needed_bytes: int, size: int) -> int:
    """The offset at which ITK's MetaIO reads a MetaImage's pixels: after the ElementDataFile line of a
    .mha (LOCAL) or at the start of a data file of its own, unless HeaderSize says otherwise. ITK takes
    a positive HeaderSize as an offset from the file's start, for a .mha too, and -1 as "the last
    bytes": a HeaderSize inside a .mha's header reads its text as pixels, so it is refused."""
    first = 0
    if local:
        head = handle.read(1 << 16)
        line_end = head.find(b"\n", head.find(b"ElementDataFile"))
        if line_end < 0:
            raise StudyError("unreadable_file", f"{name}: no pixels after its ElementDataFile line")
        first = line_end + 1  # the pixels start on the line after it
    start = first if not header_size else (size - needed_bytes if header_size == -1 else header_size)
    if start < first:
        raise StudyError("unreadable_file", f"{name}: HeaderSize {header_size} places the pixels inside the header "
                                            "(its text would be read as pixels)" if start >= 0 else
                                            f"{name}: fewer bytes than the {needed_bytes} of pixels the header declares")
    return start


def _check_inflates_to(handle, needed_bytes: int, stream_bytes: int | None, name: str) -> None:
    """The zlib or gzip stream at ``handle`` (of ``stream_bytes``, or to the file's end) must inflate to
    exactly ``needed_bytes`` and end there, where zlib checks its checksum: a flipped byte inflates to
    other pixels of the right length. One byte more than needed is asked for, never more, so a small
    stream that would inflate to gigabytes costs no more than the image it claims to be."""
    inflater, inflated, given = zlib.decompressobj(zlib.MAX_WBITS | 32), 0, 0  # zlib or gzip, as MetaIO reads
    try:
        while not inflater.eof and inflated <= needed_bytes:
            pending = inflater.unconsumed_tail or handle.read(1 << 20 if stream_bytes is None
                                                              else min(1 << 20, stream_bytes - given))
            if not pending:
                break
            given += 0 if inflater.unconsumed_tail else len(pending)
            inflated += len(inflater.decompress(pending, needed_bytes + 1 - inflated))
    except zlib.error as error:
        raise StudyError("unreadable_file", f"{name}: corrupt compressed pixels ({error})") from error
    if inflated > needed_bytes:
        raise StudyError("unreadable_file", f"{name}: compressed pixels inflate to more than the {needed_bytes} bytes "
                                            "the header declares")
    if inflated < needed_bytes or not inflater.eof:
        raise StudyError("unreadable_file", f"{name}: compressed pixels inflate to {inflated} of the {needed_bytes} "
                                            "bytes the header declares (truncated or corrupt)")


SILENT_WHEN_CUT = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}  # ITK reads these cut short without an error


def _check_plain_complete(path: Path) -> None:
    """A JPEG or BMP file must decode whole. ITK reads one cut short as grey fill or leftover memory
    (libjpeg only warns "Premature end of JPEG file"), so Pillow, which refuses a truncated file,
    decodes it once first. PNG and TIFF are left to ITK, which refuses them cut short itself."""
    from PIL import Image

    kind = SILENT_WHEN_CUT.get(file_format(path))
    if kind is None:
        return
    try:
        with Image.open(path, formats=(kind,)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise StudyError("unreadable_file", f"{path.name}: truncated or corrupt {kind} ({str(error)[:120]})") from error


def _check_tiff_pages(path: Path) -> None:
    """StudyError('bad_geometry') for a TIFF whose pages are not all one size, checked from their headers
    before ITK reads it: ITK reads a multi-page TIFF as a loop of its first page's size, so a larger
    later page came back as part of itself (a 96 x 80 page read as 48 x 40 of its pixels). A file
    whose page headers Pillow cannot read is StudyError('unreadable_file'), never handed to ITK: a
    page without its dimensions made ITK's reader crash the whole process (a segmentation fault,
    found by fuzzing a multi-page TIFF)."""
    from PIL import Image

    try:
        with Image.open(path, formats=("TIFF",)) as image:
            first = image.size
            for page in range(1, MAX_LOOP_FRAMES + 1):
                try:
                    image.seek(page)  # reads the page's header, not its pixels
                except EOFError:
                    return
                if image.size != first:
                    raise StudyError("bad_geometry", f"{path.name}: page {page} is {image.size[1]} x {image.size[0]} "
                                                     f"pixels in a loop of {first[1]} x {first[0]}")
    except StudyError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow's many errors on a damaged page header (TypeError, KeyError, ...)
        raise StudyError("unreadable_file", f"{path.name}: a damaged TIFF page header ({type(error).__name__}: "
                                            f"{str(error)[:120]})") from error


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY_ALPHA = 4  # IHDR colour type
TIFF_WHITE_IS_ZERO, TIFF_PALETTE = 0, 3  # PhotometricInterpretation (tag 262)
TIFF_PHOTOMETRIC, TIFF_BITS_PER_SAMPLE, TIFF_SAMPLES_PER_PIXEL = 262, 258, 277
PILLOW_EIGHT_BIT_MODES = frozenset({"1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr"})


def _itk_misread_layouts(path: Path) -> set[str]:
    """The pixel layouts of a PNG or TIFF file that ITK does not read as stored (empty when it does;
    a TIFF whose page headers Pillow cannot read was refused before, by ``_check_tiff_pages``): ITK
    fails on a grey + alpha PNG, and reads a TIFF's grey + alpha samples as one image of both
    interleaved, a palette TIFF's indices as grey levels and a white-is-zero TIFF inverted, each
    without an error. Any page counts."""
    from PIL import Image

    if file_format(path) == ".png":
        with open(path, "rb") as handle:
            head = handle.read(26)
        grey_alpha = len(head) == 26 and head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and head[25] == PNG_GREY_ALPHA
        return {f"{head[24]}-bit grey and alpha"} if grey_alpha else set()
    layouts = set()
    try:
        with Image.open(path, formats=("TIFF",)) as image:
            for page in range(MAX_LOOP_FRAMES):
                image.seek(page)  # its header only
                tags = image.tag_v2
                bits = max(np.atleast_1d(tags.get(TIFF_BITS_PER_SAMPLE, 1)))
                if tags.get(TIFF_SAMPLES_PER_PIXEL, 1) == 2:
                    layouts.add(f"{bits}-bit grey and alpha")
                if tags.get(TIFF_PHOTOMETRIC) == TIFF_PALETTE:
                    layouts.add(f"{bits}-bit palette")
                if tags.get(TIFF_PHOTOMETRIC) == TIFF_WHITE_IS_ZERO:
                    layouts.add(f"{bits}-bit white-is-zero grey")
    except EOFError:
        pass
    except Exception:  # noqa: BLE001 - Pillow's many errors on a damaged header (TypeError, KeyError, ...): ITK names it
        return set()
    return layouts


def _read_pillow(path: Path, layouts: set[str]) -> np.ndarray:
    """The frames (T, H, W, RGBA) of a PNG or TIFF in ``layouts`` ITK misreads (``_itk_misread_layouts``),
    decoded by Pillow as a viewer shows them: 8 bits or fewer a sample, as Pillow decodes exactly;
    more is refused (``several_channels``), Pillow itself narrowing a 16-bit grey + alpha PNG to 8 bits.
    The frame count and size are checked before any page is decoded."""
    from PIL import Image

    if wide := sorted(layout for layout in layouts if int(layout.split("-")[0]) > 8):
        raise StudyError("several_channels", f"{path.name}: pixels stored as {', '.join(wide)}, which are not read "
                                             "as stored; give a grey-scale image")
    try:
        if file_format(path) == ".png":
            with Image.open(path, formats=("PNG",)) as image:
                image.verify()  # every chunk's checksum: Pillow decodes IDAT without checking it, damaged into other pixels
        with Image.open(path, formats=("PNG", "TIFF")) as image:
            pages = getattr(image, "n_frames", 1)
            problem = loop_size_problem(pages, image.size[1], image.size[0])
            if problem is not None:
                raise StudyError("bad_geometry", f"{path.name}: {problem}")
            frames = []
            for page in range(pages):
                image.seek(page)
                if image.mode not in PILLOW_EIGHT_BIT_MODES:  # converting would clip, say, a 16-bit page beside them
                    raise StudyError("unsupported_format", f"{path.name}: page {page} stored as {image.mode} beside pages "
                                                           "that are read by Pillow in 8 bits; store every page alike")
                frames.append(np.asarray(image.convert("RGBA")))
    except StudyError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow's many errors on damaged pixels or tags (KeyError for a lost palette, ...)
        raise StudyError("unreadable_file", f"{path.name}: {type(error).__name__} {str(error)[:150]}") from error
    return np.stack(frames)


def _pixel_bytes(reader: sitk.ImageFileReader) -> int:
    """Bytes of one pixel of the image a reader's header describes (every channel)."""
    kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = int(kind.split("-bit")[0].split()[-1])
    return bits // 8 * (2 if kind.startswith("complex") else 1) * reader.GetNumberOfComponents()


def metaimage_data_file(path: Path) -> Path | None:
    """The file a MetaImage header names for its pixels, None when they follow the header (LOCAL);
    StudyError('unreadable_file') unless it is a regular file in the header's own folder, named
    relative to it: a crafted header must not read any other file of the machine (drawn into a
    shareable overlay), nor block the batch on a FIFO or a device."""
    name = _metaimage_fields(path).get("ElementDataFile")
    if name is None:
        raise StudyError("unreadable_file", f"{path.name}: a MetaImage header that names no ElementDataFile")
    if name == "LOCAL":
        return None
    relative = Path(name)
    if (not name or relative.is_absolute() or ".." in relative.parts or name.split()[0] == "LIST" or "%" in name
            or "\\" in name or ":" in name):
        raise StudyError("unreadable_file", f"{path.name}: its ElementDataFile {name[:80]!r} is not a file beside it "
                                            "(only a name relative to the header's folder is read)")
    data = path.parent / relative
    try:
        is_regular = stat.S_ISREG(os.stat(data).st_mode)
    except OSError as error:
        raise StudyError("unreadable_file", f"{path.name}: its data file {name[:80]} is missing ({error.strerror})") from error
    if not is_regular:
        raise StudyError("unreadable_file", f"{path.name}: its data file {name[:80]} is not a regular file")
    return data


def _grey(array: np.ndarray, path: Path) -> np.ndarray:
    """One grey channel from (H, W, C) pixels: a grey image stored as RGB(A) is read as grey (alpha
    ignored); colour (a Doppler overlay, a coloured map) is refused rather than mixed into grey."""
    colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    if not (colour == colour[..., :1]).all():
        raise StudyError("several_channels", f"{path.name}: {array.shape[-1]} colour channels that differ; "
                                             "give a grey-scale image")
    return colour[..., 0]


@dataclass
class Loop:
    """A view as stored in one file: its frames (T, H, W) in canonical orientation (T = 1 for a
    single frame), their (row, col) spacing in mm, the stored header (to write label maps over
    them), the time between frames in ms where the file states it, and whether the spacing is one
    the file (or the user) states: False for a video's nominal one, good for the EF ratio only."""

    frames: np.ndarray
    spacing_mm: tuple[float, float]
    header: Header
    frame_ms: float | None = None
    spacing_stated: bool = True


def is_dicom(path: Path) -> bool:
    """A DICOM file: named .dcm, or any file with the DICM preamble (exports often have no extension)."""
    if file_format(path) == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def check_pixels(array: np.ndarray, spacing: tuple[float, float], name: str) -> None:
    """StudyError unless the pixels are finite grey levels and the spacing a plausible pixel size."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise StudyError("bad_pixels", f"{name}: pixel type {array.dtype} is not a grey level")
    if not np.isfinite(array).all() or (array.dtype.kind == "f" and np.abs(array).max() > np.finfo(np.float32).max):
        raise StudyError("bad_pixels", f"{name}: pixels that are not finite single-precision numbers")
    if not all(np.isfinite(spacing)) or not SPACING_RANGE_MM[0] <= min(spacing) <= max(spacing) <= SPACING_RANGE_MM[1]:
        raise StudyError("bad_spacing", f"{name}: spacing {spacing} mm is outside {SPACING_RANGE_MM[0]}-{SPACING_RANGE_MM[1]} mm")


@dataclass(frozen=True)
class Reader:
    """One input format: the file extensions it reads (lower case, ``.nii.gz`` as one), its reading
    function taking (path, spacing_mm or None) and returning a ``Loop``, and optionally a check of a
    file's first bytes for files whose name does not tell (DICOM exports often have no extension)."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path, tuple[float, float] | None], Loop]
    sniff: Callable[[Path], bool] | None = None


def reader_for(path: Path) -> Reader | None:
    """The registered reader of ``path``: the first whose first-bytes check accepts it, else the one
    of its extension, else None."""
    for reader in READERS:
        if reader.sniff is not None and reader.sniff(path):
            return reader
    return next((reader for reader in READERS if file_format(path) in reader.suffixes), None)


def read_loop(path: Path, spacing_mm: tuple[float, float] | None = None) -> Loop:
    """Read one view's file with its format's reader (``READERS``): a 2D frame, or a cine loop (a 3D
    NIfTI or MetaImage whose third axis is time, as the CAMUS ``_sequence`` files; a multi-frame DICOM).

    Every reader checks the header before any pixel is read, so a corrupt size cannot exhaust memory.
    ``spacing_mm`` (row, col) is the pixel size of files that carry none (PNG, JPEG, TIFF, BMP, or a
    header that states none); without it they are refused (``no_spacing``), as is anything else
    that would make a volume wrong without a warning. A header's own pixel size is always used; a
    stated time between frames only where it is a plausible one (``stated_frame_ms``).
    """
    path = Path(path)
    try:
        regular_file(path)  # a folder, a FIFO or a device: reading it would fail, or block the batch
    except OSError as error:
        raise StudyError("missing_frame", f"{path.name} not found") from error
    except ValueError as error:
        raise StudyError("unreadable_file", str(error)) from error
    reader = reader_for(path)
    if reader is None:
        known = ", ".join(suffix for reader in READERS for suffix in reader.suffixes)
        raise StudyError("unsupported_format", f"{path.name}: read are {known} (and DICOM of any name)")
    loop = reader.read(path, spacing_mm)
    return replace(loop, frame_ms=stated_frame_ms(loop.frame_ms))


def stated_frame_ms(frame_ms: float | None) -> float | None:
    """A loop's time between frames (ms) as its file states it, where that is a plausible one
    (``FRAME_MS_RANGE``, finite), else None: every reader's, registered ones' too, passes here."""
    try:
        value = float(frame_ms)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if FRAME_MS_RANGE[0] <= value <= FRAME_MS_RANGE[1] else None


def read_itk(path: Path, spacing_mm: tuple[float, float] | None = None) -> Loop:
    """A NIfTI, MetaImage, PNG, JPEG, TIFF or BMP file through SimpleITK (``read_loop`` describes what
    is checked)."""
    fmt = file_format(path)
    if fmt in PLAIN_FORMATS and spacing_mm is None:
        raise StudyError("no_spacing", f"{path.name}: a {fmt} file has no physical pixel size; give --spacing-mm ROW COL")
    if fmt in (".mhd", ".mha"):
        _check_metaimage_header(path)
        data_file = metaimage_data_file(path)  # before ITK opens whatever the header names
    if fmt in (".nii", ".nii.gz"):
        _check_nifti_version(path)
        _check_nifti_transform(path)
    if fmt in (".tif", ".tiff"):
        _check_tiff_pages(path)
    if fmt in (".png", ".tif", ".tiff") and (layouts := _itk_misread_layouts(path)):
        header = Header.plain(spacing_mm)
        return Loop(_canonical_grey(_read_pillow(path, layouts), header, path), header.spacing_mm, header)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    frame_ms = None
    try:
        reader.ReadImageInformation()
        size = reader.GetSize()
        # (x, y, 1, t) is NIfTI's own 2D + time (time is its fourth axis): read as the loop (x, y, t).
        time_fourth = len(size) == 4 and size[2] == 1
        kept = 3 if time_fourth else len(size)
        problem = "" if kept not in (2, 3) else loop_size_problem(int(np.prod(size[2:])), size[1], size[0])
        if problem is not None:
            raise StudyError("bad_geometry", f"{path.name}: expected a 2D image or a 2D loop, the header says size {size}"
                                             + (f": {problem}" if problem else ""))
        if (channels := reader.GetNumberOfComponents()) > MAX_CHANNELS:
            # Each channel multiplies the pixels the header makes ITK allocate; grey, RGB or RGBA is an image.
            raise StudyError("several_channels", f"{path.name}: {channels} channels per pixel; give a grey-scale image")
        if fmt in (".mhd", ".mha"):
            _check_metaimage_data(path, data_file, int(np.prod(size)) * _pixel_bytes(reader))
        _check_plain_complete(path)
        if fmt in (".nii", ".nii.gz"):
            _check_nifti_data(path, int(np.prod(size)))
        direction = np.asarray(reader.GetDirection(), dtype=float).reshape(len(size), len(size))[:kept, :kept]
        header = Header(tuple(map(float, reader.GetSpacing()[:kept])), tuple(map(float, reader.GetOrigin()[:kept])),
                        tuple(map(float, direction.ravel())))
        if time_fourth and fmt in (".nii", ".nii.gz"):
            frame_ms = _nifti_frame_ms(path)
        header.orientation()  # a direction that is no flip or transpose is refused before any pixel is read
        if fmt in PLAIN_FORMATS or not _stated_spacing(path, header.spacing):
            if spacing_mm is None:
                raise StudyError("no_spacing", f"{path.name}: the header states no pixel size; give --spacing-mm ROW COL")
            header = header.with_spacing_mm(spacing_mm)
        array = sitk.GetArrayFromImage(reader.Execute())
        if fmt in (".nii", ".nii.gz") and not _nifti_pixels_finite(path):
            raise StudyError("bad_pixels", f"{path.name}: pixels that are not finite numbers (NaN or infinite)")
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1][:200]
        # ITK itself refuses a zero spacing in the header; name it as the spacing problem it is.
        reason = "bad_spacing" if "spacing" in message.lower() else "unreadable_file"
        raise StudyError(reason, f"{path.name}: {message}") from error
    if len(size) == 2:
        array = array[None]  # (T, H, W[, channels]) whatever the file
    elif time_fourth:
        array = array[:, 0]  # (T, 1, H, W[, channels]): the one slice of each time point
    return Loop(_canonical_grey(array, header, path), header.spacing_mm, header, frame_ms)


def _canonical_grey(array: np.ndarray, header: Header, path: Path) -> np.ndarray:
    """Stored frames (T, H, W[, channels]) as checked grey frames (T, H, W) in canonical orientation."""
    if array.ndim == 4:
        array = np.stack([_grey(frame, path) for frame in array])
    check_pixels(array, header.spacing_mm, path.name)
    orientation = header.orientation()
    return np.stack([orientation.to_canonical(frame) for frame in array])


def _nifti_frame_ms(path: Path) -> float | None:
    """The time between frames (ms) of a NIfTI loop whose fourth axis is time: pixdim[4] in the
    header's time unit (s, ms or us), or None where it states no positive, finite one in such a unit."""
    stored = _nifti_header(path)
    scale = NIFTI_TIME_UNIT_MS.get(int(stored["xyzt_units"]) & 0x38)
    step = float(stored["pixdim"][4])
    return step * scale if scale and math.isfinite(step) and step > 0 else None


def read_single(path: Path, spacing_mm: tuple[float, float] | None = None) -> Loop:
    """A file of one 2D frame as a Loop of one; as ``read_loop``, and StudyError('bad_geometry') for a
    loop of several frames."""
    loop = read_loop(path, spacing_mm)
    if len(loop.frames) != 1:
        raise StudyError("bad_geometry", f"{Path(path).name}: expected a 2D image, found a loop of {len(loop.frames)} frames")
    return loop


def read_image(path: Path, spacing_mm: tuple[float, float] | None = None) -> tuple[np.ndarray, tuple[float, float], Header]:
    """Read a 2D frame: (canonical array (H, W), its (row, col) spacing in mm, the stored header);
    as ``read_single``."""
    loop = read_single(path, spacing_mm)
    return loop.frames[0], loop.spacing_mm, loop.header


def label_path_for(image_path: Path, out_dir: Path, stem: str) -> Path:
    """Where a label map for ``image_path`` goes: ``out_dir/stem`` in the image's format, or NIfTI
    for formats that cannot carry the geometry."""
    fmt = file_format(image_path)
    return Path(out_dir) / f"{stem}{fmt if fmt in HEADER_FORMATS else '.nii.gz'}"


def write_label(label: np.ndarray, header: Header, path: Path) -> None:
    """Write a canonical label map (H, W) with ``header``'s geometry in the format of ``path``
    (NIfTI or MetaImage), atomically: a crash leaves the previous file or none."""
    _write_canonical(np.asarray(label, dtype=np.uint8), header, path)


def write_image(image: np.ndarray, header: Header, path: Path) -> None:
    """Write a canonical grey image (H, W) as 8-bit grey levels (rounded, clipped to 0-255) with
    ``header``'s geometry, as ``write_label`` writes label maps."""
    _write_canonical(np.clip(np.round(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8), header, path)


def _write_canonical(array: np.ndarray, header: Header, path: Path) -> None:
    array = header.orientation().from_canonical(array)
    image = sitk.GetImageFromArray(array[None] if header.dimension == 3 else array)
    image.SetSpacing(header.spacing)
    image.SetOrigin(header.origin)
    image.SetDirection(header.direction)
    with atomic_files(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=file_format(path) == ".nii.gz")


def write_label_picture(label: np.ndarray, path: Path) -> None:
    """Write a canonical label map (H, W) as a PNG of its label values (0-3), with no geometry: for
    pictures whose pixel size nobody stated (a video's), atomically."""
    with atomic_files(path) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(np.asarray(label, dtype=np.uint8)), str(tmp))


# The formats read, one entry each (nnU-Net's LIST_OF_IO_CLASSES is the model): predict, ef and ingest
# all read through read_loop, so a format added here is read everywhere. docs/extending.md: how to add one.
def _read_dicom(path: Path, spacing_mm: tuple[float, float] | None) -> Loop:
    from .dicom import read_dicom  # pydicom is imported only where DICOM is read

    return read_dicom(path, spacing_mm)


def _read_video(path: Path, spacing_mm: tuple[float, float] | None) -> Loop:
    from .video import read_video  # FFmpeg is loaded only where a video is read

    return read_video(path, spacing_mm)


READERS: list[Reader] = [
    Reader("DICOM", (".dcm",), _read_dicom, sniff=is_dicom),
    Reader("ITK", HEADER_FORMATS + PLAIN_FORMATS, read_itk),
    Reader("video", VIDEO_FORMATS, _read_video),
]
