"""Cine loops in video containers (AVI, MP4, MOV, MKV, WebM) through PyAV, FFmpeg's Python binding.

A video holds pictures, not measurements: no pixel size, no geometry. Its frames are read as grey by
luminance (ITU-R BT.601, as colour DICOM), its frame rate kept. Without ``--spacing-mm`` the loop is
measured as EF only: Simpson's volume ratio does not depend on the scale of the pixels, so the
frames are measured on a nominal pixel size that makes the picture ``NOMINAL_DEPTH_MM`` tall or wide
(Simpson's constants are in millimetres: a realistic scale keeps them meaningful), in the shape the
stream's sample aspect ratio gives its pixels (square where it states none), and flagged
``spacing_stated = False``, so that no volume, and no label map with that size, is ever reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import StudyError
from .imagefile import LUMINANCE, MAX_LOOP_PIXELS, MAX_PIXELS, Header, Loop, check_pixels, loop_size_problem

# The depth of an adult apical view's sector (about 15 cm): the nominal extent of a picture whose pixel
# size is not known, for measuring the EF ratio only.
NOMINAL_DEPTH_MM = 150.0
# The largest video a loop within the pixel limit can be: every pixel stored as raw RGB, and room for the
# container. A larger file is refused before FFmpeg opens it: FFmpeg scans a file's padding for frames
# (22 s for 2 GB of zeros after a 5-frame AVI), so a crafted one would hold the batch for hours.
MAX_VIDEO_BYTES = 3 * MAX_LOOP_PIXELS + (64 << 20)


def nominal_spacing_mm(shape: tuple[int, int], pixel_aspect: float = 1.0) -> tuple[float, float]:
    """(row, col) pixel size that makes a picture of ``shape`` (H, W) NOMINAL_DEPTH_MM on its longer
    side as displayed, each pixel ``pixel_aspect`` times as wide as it is tall (the stream's sample
    aspect ratio: a picture stored squeezed is measured as shown, not as stored)."""
    height_mm = NOMINAL_DEPTH_MM / max(shape[0], shape[1] * pixel_aspect)
    return (height_mm, height_mm * pixel_aspect)


def pixel_aspect(stream) -> float:
    """A video stream's sample aspect ratio (pixel width / height): 1 where it states none, or none
    usable (0, or beyond 1:10-10:1, which no display of an echo loop uses)."""
    ratio = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    value = float(ratio) if ratio else 0.0
    return value if 0.1 <= value <= 10 else 1.0


def read_video(path: Path, spacing_mm: tuple[float, float] | None = None) -> Loop:
    """A video's frames (T, H, W) as grey levels, the time between them, and the pixel size
    ``spacing_mm`` if given, else a nominal one with ``spacing_stated`` False (EF only). The picture
    size is checked before any frame is decoded, and each decoded picture's size (it must be the
    stream's) and the frame count before the picture is converted."""
    import av  # FFmpeg is loaded only where a video is read

    path = Path(path)
    if (size := path.stat().st_size) > MAX_VIDEO_BYTES:
        raise StudyError("unreadable_file", f"{path.name}: {size} bytes, more than a loop of at most "
                                            f"{MAX_LOOP_PIXELS} raw RGB pixels can take ({MAX_VIDEO_BYTES})")
    frames = []
    try:
        # FFmpeg reads a name as a URL ("file:x.avi" and "cache:x.avi" read x.avi, "concat:a.avi|b.avi" two
        # files as one loop); it is handed the open file, so that only the file named is read.
        with open(path, "rb") as handle, av.open(handle) as container:
            stream = next((s for s in container.streams if s.type == "video"), None)
            if stream is None:
                raise StudyError("unreadable_file", f"{path.name}: no video stream")
            if stream.codec_context is None:
                raise StudyError("unreadable_file", f"{path.name}: no decoder for its video stream")
            height, width = int(stream.codec_context.height), int(stream.codec_context.width)
            if problem := loop_size_problem(1, height, width):
                raise StudyError("bad_geometry", f"{path.name}: {problem} are not an echo loop")
            # FFmpeg allocates each picture at the size the picture itself states (a JPEG frame of an AVI
            # may state 40,000 x 40,000 behind a header of 48 x 40: gigabytes before the size below can
            # be checked); it refuses to decode one of more pixels than any frame may have.
            stream.codec_context.options = {"max_pixels": str(MAX_PIXELS)}
            rate, aspect = stream.average_rate or stream.guessed_rate, pixel_aspect(stream)
            for frame in container.decode(stream):
                # Each picture carries its own size, which need not be the stream header's: a spliced or
                # crafted stream can change it mid-loop. Checked before the picture is converted.
                if (frame.height, frame.width) != (height, width):
                    raise StudyError("bad_geometry", f"{path.name}: frame {len(frames)} is {frame.height} x {frame.width} "
                                                     f"pixels in a loop of {height} x {width}")
                if problem := loop_size_problem(len(frames) + 1, height, width):
                    raise StudyError("bad_geometry", f"{path.name}: {problem} is not an echo loop")
                frames.append((frame.to_ndarray(format="rgb24") @ LUMINANCE).astype(np.float32))
    except StudyError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        raise StudyError("unreadable_file", f"{path.name}: not a readable video ({str(error).splitlines()[0][:150]})") from error
    if not frames:
        raise StudyError("unreadable_file", f"{path.name}: a video without a frame")
    loop = np.stack(frames)
    stated = spacing_mm is not None
    spacing = tuple(float(v) for v in spacing_mm) if stated else nominal_spacing_mm(loop.shape[1:], aspect)
    check_pixels(loop, spacing, path.name)
    frame_ms = 1000.0 / float(rate) if rate else None
    return Loop(loop, spacing, Header.plain(spacing), frame_ms, spacing_stated=stated)


def write_video(path: Path, frames: np.ndarray, fps: float = 25, codec: str = "mpeg4", pixel_aspect=None) -> Path:
    """A video of grey frames (T, H, W), as a scanner's export would be: RGB pictures, a lossy codec
    (``mpeg4`` for MP4, ``mjpeg`` for AVI as EchoNet-Dynamic's), and the sample aspect ratio
    ``pixel_aspect`` (a Fraction) if given. Sizes are cut to even numbers (4:2:0 chroma needs them).
    For the synthetic fixtures and the tests; no measurement is written."""
    from fractions import Fraction

    import av

    frames = np.asarray(frames, dtype=np.uint8)
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}
        if pixel_aspect is not None:
            stream.codec_context.sample_aspect_ratio = pixel_aspect
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(np.repeat(frame[..., None], 3, axis=-1), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
