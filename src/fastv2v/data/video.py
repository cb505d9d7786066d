"""Video I/O: stream frames in from a video, a folder of images or one image, and out again.

Reading (:func:`open_frames`) yields uint8 RGB frames (HxWx3) or label maps (HxW IDs) one at
a time, so a long video never sits in memory. Writing (:func:`open_writer`) picks the output
kind from the path and writes through :func:`fastv2v.atomic.atomic_path`, so the requested
path only ever holds a complete result. Anything the user can fix (a missing file, a corrupt
video, an unwritable folder) becomes a one-sentence :class:`~fastv2v.errors.UserError`.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from fastv2v.atomic import atomic_path
from fastv2v.data.labels import read_label_map
from fastv2v.errors import UserError

#: Image suffixes read as frames (folders) or as a single-frame input.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Output suffixes written as H.264 video.
VIDEO_OUTPUT_SUFFIXES = frozenset({".mp4", ".mov", ".mkv"})
#: Frame rate given to folders and images, which carry none of their own.
DEFAULT_FPS = Fraction(25)

_AVError = (av.error.FFmpegError, OSError)
_FRAME_NAME = re.compile(r"\d{6}\.png")  # names this module writes in frame folders


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What a source holds, known before the first frame is consumed.

    ``fps`` is exact (30000/1001 stays 30000/1001). ``frames`` is the expected count: the
    container's own count when it has one (mp4, mov, avi), an estimate from the duration
    otherwise (mkv, webm), ``None`` when neither exists; a truncated file yields fewer.
    ``height``/``width`` are the size of the frames yielded (after the video's rotation tag).
    ``time_base`` is a video's timestamp unit (None for folders and images, which have no
    timestamps); :func:`open_writer` takes it to keep each frame's time exactly.
    """

    path: Path
    kind: str  # 'video' | 'folder' | 'image'
    height: int
    width: int
    fps: Fraction
    frames: int | None
    has_audio: bool
    time_base: Fraction | None = None


class FrameSource:
    """An iterable of frames with ``.info``; close it (or use ``with``) to release the file.

    Iterating again starts again from the first frame. ``frames_lost`` is set when an
    iteration ends: frames the container promised but that did not decode (a truncated file).
    """

    info: VideoInfo
    frames_lost: int = 0
    #: presentation time (seconds) of the frame last yielded, None where the source has none
    frame_time: float | None = None
    #: the same, exact, for :meth:`FrameWriter.write` (a variable frame rate is kept, not flattened)
    frame_seconds: Fraction | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying file; idempotent."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return f"<{type(self).__name__} {i.kind} {str(i.path)!r} {i.width}x{i.height} @ {i.fps} fps>"


def open_frames(
    path: str | os.PathLike,
    *,
    labels: bool = False,
    fps: Fraction | int | str | None = None,
    num_classes: int | None = None,
) -> FrameSource:
    """Open a video file, a folder of images (natural order) or one image as a frame stream.

    ``labels=True`` reads label maps (HxW class IDs, see :mod:`fastv2v.data.labels`) instead
    of RGB; those must be lossless images, so a video is refused. ``fps`` sets the rate of
    folders and images (default 25); a video always reports its own rate. ``num_classes``
    makes every label map be checked for IDs the model does not know.
    Errors a user can fix are raised here, before any compute starts.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; check the path.")
    rate = DEFAULT_FPS if fps is None else parse_fps(fps)
    if path.is_dir():
        return _ImageSource(path, _list_images(path), "folder", rate, labels, num_classes)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _ImageSource(path, [path], "image", rate, labels, num_classes)
    if labels:
        raise UserError(
            f"{path} is not an image; label maps must be lossless images, "
            "so give a PNG or a folder of PNGs."
        )
    return _VideoSource(path)


def parse_fps(value: Fraction | int | float | str) -> Fraction:
    """A frame rate as an exact Fraction: ``"30000/1001"``, ``"25"``, ``29.97`` or ``"29.97"``.

    Decimal NTSC rates (23.976, 29.97, 59.94, ...) are snapped to their exact N*1000/1001
    value, because that is what the decimal abbreviates and what encoders and players expect.
    """
    try:
        rate = Fraction(value) if not isinstance(value, str) else Fraction(value.strip())
    except (ValueError, ZeroDivisionError, TypeError):
        raise UserError(f"Invalid frame rate {value!r}; give a number like 25 or a ratio like 30000/1001.") from None
    if rate <= 0:
        raise UserError(f"Invalid frame rate {value!r}; it must be positive.")
    if rate.denominator not in (1, 1001):
        ntsc = Fraction(round(rate * 1001 / 1000) * 1000, 1001)
        if abs(rate - ntsc) < Fraction(1, 200):
            return ntsc
        rate = rate.limit_denominator(1001)
    return rate


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _list_images(folder: Path) -> list[Path]:
    """Image files of a folder in natural order; hidden files (``.*``) are skipped.

    JPEGs are listed for label folders too, so that the reader explains why they are refused.
    """
    suffixes = IMAGE_SUFFIXES
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()]
    except OSError as exc:
        raise UserError(f"{folder} could not be listed ({exc.strerror}); check its permissions.") from None
    files = sorted((p for p in entries if p.suffix.lower() in suffixes), key=lambda p: natural_key(p.name))
    if not files:
        wanted = "/".join(sorted(s.lstrip(".") for s in suffixes))
        what = "is empty" if not entries else f"holds no image files ({wanted})"
        raise UserError(f"{folder} {what}; point to a folder of frames or to a video file.")
    return files


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as an HxWx3 uint8 RGB array (alpha dropped, greyscale expanded).

    A single-channel image deeper than 8 bits is refused: it is almost always a 16-bit label
    map or depth map, and squeezing it into RGB would silently destroy it.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I") or img.mode == "F":
                raise UserError(
                    f"{path} is a {img.mode} single-channel image, not an 8-bit picture; "
                    "read it as labels or convert it to 8-bit RGB."
                )
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.asarray(rgb)
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path} could not be read as an image ({exc}); replace or remove the file.") from None


class _ImageSource(FrameSource):
    """Frames from image files, decoded one at a time as the iteration reaches them.

    The first file is decoded at open time (and kept), so a colour image given as labels,
    or a corrupt first frame, is reported before any model work starts.
    """

    def __init__(self, path, files, kind, fps, labels, num_classes):
        self._files = files
        self._labels = labels
        self._num_classes = num_classes
        self._first = self._read(files[0])
        height, width = self._first.shape[:2]
        self.info = VideoInfo(path, kind, height, width, fps, len(files), False)

    def _read(self, file: Path) -> np.ndarray:
        return read_label_map(file, num_classes=self._num_classes) if self._labels else read_image(file)

    def __iter__(self) -> Iterator[np.ndarray]:
        shape = (self.info.height, self.info.width)
        for i, file in enumerate(self._files):
            frame = self._first if i == 0 else self._read(file)
            if frame.shape[:2] != shape:
                raise UserError(
                    f"{file} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                    f"{shape[1]}x{shape[0]}; all frames of a folder must have one size."
                )
            yield frame
        self.frames_lost = 0


class _VideoSource(FrameSource):
    """Frames decoded by FFmpeg (PyAV), threaded, with truncation tolerated and counted.

    The first frame is decoded when the source is opened, so a file with no decodable
    frames is reported before any model work starts.
    """

    def __init__(self, path: Path):
        self._path = path
        self._container = None
        self._pending = None
        self._pending = self._start()  # (container, stream, first frame, remaining frames)
        container, stream, first, _ = self._pending
        self._rotation = _quarter_turns(first)
        h, w = (first.height, first.width) if self._rotation % 2 == 0 else (first.width, first.height)
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate or DEFAULT_FPS
        fps = Fraction(fps.numerator, fps.denominator)
        self._exact_count = stream.frames > 0
        frames = stream.frames if self._exact_count else _estimate_frames(container, stream, fps)
        time_base = Fraction(stream.time_base) if stream.time_base else None
        self.info = VideoInfo(path, "video", h, w, fps, frames, len(container.streams.audio) > 0, time_base)

    def _start(self):
        path = self._path
        try:
            container = av.open(str(path), metadata_errors="replace")  # garbled tags must not stop the frames
        except _AVError as exc:
            if isinstance(exc, PermissionError):
                raise UserError(f"{path} cannot be read (permission denied); check its permissions.") from None
            raise UserError(
                f"{path} could not be read as a video (not a video, or damaged/truncated); "
                "check that it is a complete video file."
            ) from None
        self._container = container
        if not container.streams.video:
            self.close()
            raise UserError(
                f"{path} has no video stream (not a video, or truncated before its index); "
                "give a complete video file."
            )
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = self._decode(container, stream)
        first = next(frames, None)
        if first is None:
            self.close()
            raise UserError(f"{path} contains no decodable video frames; check that the file is a complete video.")
        return container, stream, first, frames

    def _decode(self, container, stream) -> Iterator[av.VideoFrame]:
        """Decoded frames; a corrupt packet is skipped, a demux error ends the stream quietly."""
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except _AVError:
                    continue
                yield from frames
        except _AVError:
            return

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._pending is None:  # a second pass: reopen the file from its start
            self.close()
            self._pending = self._start()
        container, stream, first, rest = self._pending
        self._pending = None
        h, w, turns = self.info.height, self.info.width, self._rotation
        decoded = 0
        for frame in itertools.chain([first], rest):
            if turns % 2:
                fh, fw = w, h
            else:
                fh, fw = h, w
            if (frame.height, frame.width) != (fh, fw):  # mid-stream size change: keep one size
                frame = frame.reformat(width=fw, height=fh)
            rgb = frame.to_ndarray(format="rgb24")
            if turns:
                rgb = np.ascontiguousarray(np.rot90(rgb, turns))
            decoded += 1
            pts, tb = frame.pts, self.info.time_base
            self.frame_seconds = Fraction(pts) * tb if pts is not None and tb is not None else None
            self.frame_time = float(self.frame_seconds) if self.frame_seconds is not None else None
            yield rgb
        expected = self.info.frames or 0
        lost = max(0, expected - decoded)
        # A duration-based estimate can be off by one frame; only the container's count is exact.
        self.frames_lost = lost if self._exact_count or lost > 1 else 0
        self.close()

    def close(self) -> None:
        self._pending = None  # a later iteration reopens the file
        if self._container is not None:
            self._container.close()
            self._container = None


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that the display-matrix tag asks for (phone videos)."""
    try:
        rotation = frame.rotation or 0
    except (AttributeError, ValueError):
        return 0
    return int(round(rotation / 90)) % 4


def _estimate_frames(container, stream, fps: Fraction) -> int | None:
    if stream.duration and stream.time_base:
        seconds = stream.duration * stream.time_base
    elif container.duration:
        seconds = Fraction(container.duration, av.time_base)
    else:
        return None
    return max(1, round(seconds * fps))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class FrameWriter:
    """Context manager that writes frames to a temporary sibling and renames it when done.

    ``with open_writer(...) as w: w.write(frame)``: on a clean exit the output appears at the
    path complete; on any exception (KeyboardInterrupt included) the temporary output is
    deleted and nothing appears. ``close()`` commits, ``abort()`` discards.
    """

    kind: str  # 'video' | 'image' | 'folder'

    def __init__(self, path: Path):
        self.path = path
        self.frames_written = 0
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._done = False
        try:
            self._open(self._tmp)
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            self._done = True
            if isinstance(exc, _AVError):
                raise _unwritable(path, exc) from None
            raise

    def write(self, frame: np.ndarray, time: Fraction | None = None) -> None:
        """Append one frame: HxWx3 uint8 RGB (a folder or PNG also takes HxW integer labels).

        ``time``: the input frame's presentation time in seconds (``FrameSource.frame_seconds``);
        a video output then keeps the input's timing, variable frame rate included. Without it
        frames are spaced evenly at ``fps``. Folders and images have no timestamps.
        """
        if self._done:
            raise ValueError(f"writer for {self.path} is closed")
        frame = np.asarray(frame)
        self._check(frame)
        try:
            self._write(frame, time)
        except _AVError as exc:
            raise UserError(f"Writing {self.path} failed ({exc}); check free disk space and permissions.") from None
        self.frames_written += 1

    def close(self) -> None:
        """Finish the output and move it into place; an empty output is an error, not a file."""
        if self._done:
            return
        try:
            if self.frames_written == 0:
                raise UserError(f"No frames were written to {self.path}; check that the input has frames.")
            try:
                self._finish()
            except _AVError as exc:
                raise UserError(f"Writing {self.path} failed ({exc}); check free disk space and permissions.") from None
        except BaseException as exc:
            self.abort(exc)
            raise
        self._done = True
        try:
            self._atomic.__exit__(None, None, None)
        except OSError as exc:  # the rename failed: the temporary output must not linger
            if self._tmp.is_dir():
                shutil.rmtree(self._tmp, ignore_errors=True)
            else:
                self._tmp.unlink(missing_ok=True)
            raise UserError(
                f"{self.path} could not be put in place ({exc.strerror}); check the folder's permissions."
            ) from None

    def abort(self, exc: BaseException | None = None) -> None:
        """Discard everything written so far; nothing is left at the path or beside it."""
        if self._done:
            return
        self._done = True
        try:
            self._discard()
        finally:
            exc = exc or _Aborted()
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)

    # Subclass hooks: create the temporary output, validate, append, complete, release.
    def _open(self, tmp: Path) -> None:
        raise NotImplementedError

    def _check(self, frame: np.ndarray) -> None:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame.dtype} {frame.shape}")
        if frame.shape[0] < 1 or frame.shape[1] < 1:
            raise ValueError(f"empty frame {frame.shape}")

    def _write(self, frame: np.ndarray, time: Fraction | None) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def _discard(self) -> None:
        pass


class _Aborted(Exception):
    """Stands in for the cause when abort() is called without one."""


def open_writer(
    path: str | os.PathLike,
    *,
    fps: Fraction | int | str,
    audio_from: str | os.PathLike | None = None,
    lossless: bool = False,
    crf: int = 18,
    preset: str = "medium",
    time_base: Fraction | None = None,
) -> FrameWriter:
    """Open an output for frames; its kind follows the path.

    * ``.mp4/.mov/.mkv``: H.264 at exactly ``fps`` (or at each frame's ``time``). Lossy (default): libx264, ``crf``,
      yuv420p, tagged BT.709 limited range, so it plays everywhere; yuv420p needs even sizes,
      so an odd height/width is padded by one replicated row/column at the bottom/right
      (the file is then one pixel larger than the frames). ``lossless=True``: libx264rgb at
      qp 0, which stores RGB bit-exactly at any size, but only FFmpeg-based players (VLC, mpv)
      show it, not browsers or QuickTime.
    * ``.png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp``: one image; exactly one frame must be written.
    * no suffix, or an existing folder: a folder of PNGs ``000000.png, 000001.png, ...``, the
      lossless choice; an existing folder is replaced, but only if it is empty or holds only
      such frames, so a mistyped path cannot wipe unrelated files.

    ``audio_from`` names a video whose first audio stream is copied into a video output,
    aligned to its first video frame and cut at the end of the written frames: packets are
    copied as they are when the container takes the codec, otherwise transcoded to AAC.
    Images and folders carry no audio. Unwritable locations are reported here, at open time.

    ``time_base``: the input's timestamp unit (``VideoInfo.time_base``), given when frames are
    written with their input times, so those times are stored exactly (see ``write``).
    """
    path = Path(path)
    rate = parse_fps(fps)
    kind = check_output(path)
    if kind == "video":
        audio = _AudioSource.open(Path(audio_from)) if audio_from is not None else None
        return _VideoWriter(path, rate, audio, lossless, crf, preset, time_base)
    if kind == "image":
        return _ImageWriter(path)
    return _FolderWriter(path)


def check_output(path: str | os.PathLike) -> str:
    """The kind of output ``path`` asks for (``video``, ``image`` or ``folder``), after refusing in
    one sentence a path that cannot take it; callers run it before any model work, so a bad
    output path never costs a finished translation."""
    from fastv2v.atomic import check_name_length

    path = Path(path)
    check_name_length(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        kind = "folder"
    elif suffix in VIDEO_OUTPUT_SUFFIXES:
        kind = "video"
    elif suffix in IMAGE_SUFFIXES:
        kind = "image"
    elif suffix == "":
        kind = "folder"
        if path.exists():
            raise UserError(
                f"{path} is an existing file, but an output without a video or image extension is a folder of "
                "PNG frames; remove the file, or name the output .mp4 for a video."
            )
    else:
        raise UserError(
            f"{path} has an unsupported extension {path.suffix!r}; use .mp4/.mov/.mkv for video, "
            ".png/.jpg for one image, or a name without extension for a folder of PNG frames."
        )
    parent = path.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{parent} is a file, not a folder, so {path} cannot be written there; choose another output path.")
    if not parent.is_dir():
        raise UserError(
            f"The folder {parent} for output {path} does not exist; create it or choose another output path."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{path} cannot be written (no write permission in {parent}); choose another output folder.")
    if path.exists() and not path.is_dir() and not os.access(path, os.W_OK):
        raise UserError(f"{path} exists and is read-only; remove it or choose another output path.")
    if kind == "folder" and path.is_dir():
        strays = [p.name for p in path.iterdir() if not _FRAME_NAME.fullmatch(p.name)]
        if strays:
            raise UserError(
                f"{path} is an existing folder holding other files (e.g. {strays[0]}); "
                "choose a new or empty folder for the output frames."
            )
    return kind


def _unwritable(path: Path, exc: BaseException) -> UserError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return UserError(
        f"{path} cannot be written ({reason}); check the folder exists and is writable, or choose another path."
    )


def _imwrite(path: Path, frame: np.ndarray) -> None:
    """Write an RGB frame (or 8/16-bit labels) with OpenCV, which is fast at PNG."""
    if frame.ndim == 3:
        frame = frame[..., ::-1]  # OpenCV wants BGR
    ok = cv2.imwrite(str(path), frame)
    if not ok:
        raise OSError(f"OpenCV could not write {path.name}")


def _as_label_pixels(frame: np.ndarray) -> np.ndarray | None:
    """HxW integer labels as uint8/uint16 for a lossless PNG, or None for an RGB frame."""
    if frame.ndim != 2:
        return None
    if not np.issubdtype(frame.dtype, np.integer):
        raise ValueError(f"a label frame must hold integers, got {frame.dtype}")
    if frame.size and (frame.min() < 0 or frame.max() > 65535):
        raise ValueError("label IDs must lie in 0-65535 to be stored in a PNG")
    return frame.astype(np.uint8 if frame.size == 0 or frame.max() < 256 else np.uint16, copy=False)


class _FolderWriter(FrameWriter):
    kind = "folder"

    def _open(self, tmp: Path) -> None:
        tmp.mkdir()
        self._shape = None

    def _check(self, frame: np.ndarray) -> None:
        if frame.ndim != 2:
            super()._check(frame)
        if self._shape is not None and frame.shape != self._shape:
            raise ValueError(f"frame shape {frame.shape} differs from the first frame {self._shape}")
        self._shape = frame.shape

    def _write(self, frame: np.ndarray, time: Fraction | None) -> None:
        labels = _as_label_pixels(frame)
        _imwrite(self._tmp / f"{self.frames_written:06d}.png", frame if labels is None else labels)


class _ImageWriter(FrameWriter):
    kind = "image"

    def _open(self, tmp: Path) -> None:
        tmp.touch()  # proves the location is writable before any compute

    def _check(self, frame: np.ndarray) -> None:
        if frame.ndim != 2:
            super()._check(frame)
        if self.frames_written:
            raise UserError(
                f"{self.path} is a single image but the input has more than one frame; "
                "give a video (.mp4) or a folder path as the output."
            )

    def _write(self, frame: np.ndarray, time: Fraction | None) -> None:
        labels = _as_label_pixels(frame)
        deep_ok = self._tmp.suffix.lower() in (".png", ".tif", ".tiff")
        if labels is not None and labels.dtype == np.uint16 and not deep_ok:
            raise ValueError(f"16-bit labels need a .png output, not {self.path.suffix}")
        _imwrite(self._tmp, frame if labels is None else labels)


class _VideoWriter(FrameWriter):
    kind = "video"
    #: audio packets of a damaged input that could not be copied (out-of-order times); set on close
    audio_packets_dropped = 0

    def __init__(self, path, fps, audio, lossless, crf, preset, time_base=None):
        self._fps = fps
        self._in_base = Fraction(time_base) if time_base else None
        self._first_time = None  # input time of the first frame: output time zero
        self._seconds: list[Fraction] = []  # output times of the last two frames written
        self._audio = audio
        self._lossless = lossless
        self._crf = crf
        self._preset = preset
        self._stream = None
        try:
            super().__init__(path)
        except BaseException:
            if audio is not None:
                audio.close()
            raise

    def _open(self, tmp: Path) -> None:
        options = {"movflags": "+faststart"} if tmp.suffix.lower() in (".mp4", ".mov") else {}
        self._container = av.open(str(tmp), mode="w", options=options)

    def _check(self, frame: np.ndarray) -> None:
        super()._check(frame)
        if self._stream is not None and frame.shape[:2] != self._size:
            raise ValueError(f"frame size {frame.shape[:2]} differs from the first frame {self._size}")

    def _add_streams(self, height: int, width: int) -> None:
        """Configure the streams from the first frame's size (the header needs it)."""
        self._size = (height, width)
        self._pad = (0, 0) if self._lossless else (height % 2, width % 2)
        stream = self._container.add_stream("libx264rgb" if self._lossless else "libx264", rate=self._fps)
        stream.height, stream.width = height + self._pad[0], width + self._pad[1]
        self._time_base = self._output_time_base()
        stream.time_base = self._time_base
        stream.codec_context.time_base = self._time_base
        if self._lossless:
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0", "preset": self._preset}
        else:
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(self._crf), "preset": self._preset}
            cc = stream.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc = 1, 1, 1  # BT.709 (AVCOL_*_BT709)
            cc.color_range = 1  # limited ("MPEG") range
        self._stream = stream
        if self._audio is not None:
            self._audio.attach(self._container)

    def _output_time_base(self) -> Fraction:
        """1/fps; with input times, the coarsest unit that holds both them and the 1/fps grid."""
        step = 1 / self._fps
        if self._in_base is None:
            return step
        both = Fraction(math.gcd(step.numerator, self._in_base.numerator),
                        math.lcm(step.denominator, self._in_base.denominator))  # fmt: skip
        return both if both.denominator < 1 << 24 else self._in_base  # mp4 wants a 32-bit timescale

    def _seconds_of(self, time: Fraction | None) -> Fraction:
        """Output time of the next frame: its input time less the first frame's, or one step on.

        An input time that is a 1/fps grid point rounded to the input's unit (29.97 fps in
        milliseconds) is put back on the grid, so a constant-rate input stays exactly constant.
        """
        step = 1 / self._fps
        if time is None:
            return self._seconds[-1] + step if self._seconds else Fraction(0)
        if self._first_time is None:
            self._first_time = time
            if self._audio is not None:
                self._audio.start_at(time)  # audio time zero is the output's first frame
        seconds = Fraction(time) - self._first_time
        if abs(seconds) > 1 << 31:  # a garbled timestamp (over 68 years): space this frame evenly
            return self._seconds[-1] + step if self._seconds else Fraction(0)
        grid = round(seconds * self._fps) * step
        if self._in_base is not None and abs(seconds - grid) <= self._in_base / 2:
            seconds = grid
        return seconds

    def _write(self, frame: np.ndarray, time: Fraction | None) -> None:
        if self._stream is None:
            self._add_streams(*frame.shape[:2])
        if any(self._pad):
            frame = np.pad(frame, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        if not self._lossless:
            vf = vf.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        seconds = self._seconds_of(time)
        pts = round(seconds / self._time_base)
        if self._seconds and pts <= round(self._seconds[-1] / self._time_base):
            pts = round(self._seconds[-1] / self._time_base) + 1  # the encoder needs rising times
        seconds = pts * self._time_base
        vf.pts = pts
        vf.time_base = self._time_base
        self._container.mux(self._stream.encode(vf))
        self._seconds = [*self._seconds[-1:], seconds]
        if self._audio is not None:
            self._audio.copy_until(seconds + 1 / self._fps)

    def _finish(self) -> None:
        self._container.mux(self._stream.encode(None))
        if self._audio is not None:
            # The last frame lasts as long as the one before it (one 1/fps step for a lone frame).
            last = self._seconds[-1] - self._seconds[0] if len(self._seconds) == 2 else 1 / self._fps
            audio, self._audio = self._audio, None
            audio.finish(self._seconds[-1] + last)
            self.audio_packets_dropped = audio.packets_dropped
        self._container.close()

    def _discard(self) -> None:
        if self._audio is not None:
            self._audio.close()
        try:
            self._container.close()
        except _AVError:
            pass


# Codecs that mp4/mov players handle when copied as they are; anything else becomes AAC.
_COPYABLE_AUDIO = {
    ".mp4": {"aac", "mp3", "ac3", "eac3", "alac"},
    ".mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"},
}


class _AudioSource:
    """The audio track of an input video, copied into an output alongside the video frames.

    Audio is fed in step with the video (up to the time of the last written frame), so the
    muxer interleaves the two streams and memory stays bounded.
    """

    @classmethod
    def open(cls, path: Path) -> "_AudioSource | None":
        if not path.exists():
            raise UserError(f"{path} (the audio source) does not exist; check the path.")
        if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
            return None  # frames carry no audio
        try:
            container = av.open(str(path), metadata_errors="replace")
        except _AVError:
            raise UserError(f"{path} (the audio source) is not a readable video; check the path.") from None
        if not container.streams.audio:
            container.close()
            return None
        audio = container.streams.audio[0].codec_context
        if audio is None or not audio.sample_rate or not audio.layout.nb_channels:  # a damaged header
            container.close()
            raise UserError(
                f"{path} has an audio stream that cannot be read (damaged, or an unknown codec); re-encode the file "
                f"or drop its audio first: ffmpeg -i {path} -an -c:v copy silent.mp4"
            )
        return cls(container)

    def __init__(self, container):
        self._in = container
        self._src = container.streams.audio[0]
        video = container.streams.video[0] if container.streams.video else None
        start = video.start_time if video is not None and video.start_time is not None else None
        # Audio time zero is the input's first video frame, which is the output's first frame.
        self._offset = Fraction(start) * video.time_base if start is not None else Fraction(0)
        self._packets = None
        self._out = None
        self.packets_dropped = 0  # copied packets the muxer refused (a damaged input)

    def start_at(self, seconds: Fraction) -> None:
        """Align audio to the input time ``seconds`` (the first frame written) instead of the
        video stream's start; call before any audio is copied."""
        self._offset = Fraction(seconds)

    def attach(self, container) -> None:
        """Add the output audio stream; must happen before the first packet is muxed."""
        self._container = container
        suffix = Path(container.name).suffix.lower()
        codec = self._src.codec_context.name
        copyable = _COPYABLE_AUDIO.get(suffix)
        if copyable is None:
            copyable = container.supported_codecs
        self._copy = codec in copyable
        if self._copy:
            self._out = container.add_stream_from_template(self._src)
        else:
            src = self._src.codec_context
            self._out = container.add_stream("aac", rate=src.sample_rate)
            # AAC needs a named channel layout; an unnamed one ("1 channels") maps by count.
            named = not src.layout.name.endswith("channels")
            self._out.layout = src.layout.name if named else ("mono" if src.layout.nb_channels == 1 else "stereo")
            self._samples = 0
        self._packets = self._in.demux(self._src)
        self._held = None

    def copy_until(self, end: Fraction) -> None:
        """Mux the audio that starts before ``end`` seconds of output time."""
        while True:
            packet = self._held or self._next_packet()
            self._held = None
            if packet is None:
                return
            start = (packet.pts if packet.pts is not None else packet.dts) * packet.time_base - self._offset
            if start >= end:
                self._held = packet
                return
            self._mux(packet, start)

    def _next_packet(self):
        try:
            for packet in self._packets:
                if packet.size and (packet.pts is not None or packet.dts is not None):
                    return packet
        except _AVError:  # a truncated input ends its audio early
            pass
        return None

    def _mux(self, packet, start: Fraction) -> None:
        tb = packet.time_base
        if packet.duration and start + packet.duration * tb < 0:
            return  # ends before the first video frame (one ending exactly there may be AAC priming)
        if self._copy:
            shift = round(self._offset / tb)
            if packet.pts is not None:
                packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self._out
            try:
                self._container.mux(packet)
            except av.error.ArgumentError:  # damaged timestamps (out of order): drop the packet, as players do
                self.packets_dropped += 1
            return
        try:
            frames = packet.decode()
        except _AVError:
            return
        for frame in frames:
            if start < 0:
                continue
            frame.pts = self._samples
            frame.time_base = Fraction(1, frame.sample_rate)
            self._samples += frame.samples
            self._container.mux(self._out.encode(frame))

    def finish(self, end: Fraction) -> None:
        try:
            self.copy_until(end)
            if not self._copy:
                self._container.mux(self._out.encode(None))
        finally:
            self.close()

    def close(self) -> None:
        self._in.close()
