"""Video files: decoding frames with OpenCV, writing `.mp4`, and the landmark sidecar.

Frames are RGB u8[H, W, 3] (OpenCV decodes BGR; flipped here). Every problem a user's file can
have (missing, empty, not a video, a codec this OpenCV lacks, frames changing size) is a
`VideoError` that names the file and the fix.

Landmark sidecar (`CLIP.landmarks.npy` beside `CLIP.mp4`, or any path given explicitly): one
`.npy` array f[F, 5 | 68, 2] with a row for every frame of the clip (frame index = row, before
any `every` subsampling), pixel coordinates x right, y down; a frame without a face holds NaN.
It is read with `allow_pickle=False` after checking the header's shape and dtype.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from jaxface.outputs import atomic_output

SIDECAR_SUFFIX = ".landmarks.npy"
MAX_SIDECAR_FRAMES = 1_000_000  # rows (11 hours at 25 fps); a row is 5 or 68 x 2 numbers
FOURCC = "mp4v"  # MPEG-4 Part 2: in every opencv-python wheel's FFmpeg


class VideoError(ValueError):
    """A video or sidecar file cannot be used; the message names the file and the fix."""


class Clip(NamedTuple):
    """Decoded frames of a clip (all in memory: for short clips and tests).

    frames: u8[F, H, W, 3] RGB    indices: i64[F] frame numbers in the file    fps: float
    """

    frames: np.ndarray
    indices: np.ndarray
    fps: float


def _convert_hint(path) -> str:
    return f"convert it with e.g. `ffmpeg -i {path} -c:v libx264 -pix_fmt yuv420p out.mp4`"


@contextlib.contextmanager
def _capture(path: Path):
    import cv2

    if not path.exists():
        raise VideoError(f"video {path} does not exist")
    if not path.is_file():
        raise VideoError(f"video {path} is not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"video {path} is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoError(f"video {path} is not readable (permission denied)")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"OpenCV cannot open {path}: not a video, truncated, or a container/codec its FFmpeg "
                             f"lacks; {_convert_hint(path)}")
        yield cap
    finally:
        cap.release()


def video_fps(path: str | os.PathLike) -> float:
    """Frames per second the file declares (25 when it declares none)."""
    import cv2

    with _capture(Path(path)) as cap:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    return fps if np.isfinite(fps) and 0 < fps < 1000 else 25.0


def iter_frames(path: str | os.PathLike, every: int = 1, max_frames: int | None = None
                ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, RGB u8[H, W, 3]) for frames 0, every, 2 every, ... of a video file,
    at most `max_frames` of them. Skipped frames are not decoded (grab only).

    Raises VideoError for unreadable files, a clip that decodes no frame, or frames that change size.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    path = Path(path)
    with _capture(path) as cap:
        index, count, size = 0, 0, None
        while max_frames is None or count < max_frames:
            if index % every:
                if not cap.grab():
                    break
                index += 1
                continue
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            if size is None:
                size = bgr.shape
            elif bgr.shape != size:
                raise VideoError(f"{path}: frame {index} is {bgr.shape[1]}x{bgr.shape[0]} but the clip started at "
                                 f"{size[1]}x{size[0]}; frames must keep one size (re-encode with a fixed size, e.g. "
                                 f"`ffmpeg -i {path} -vf scale={size[1]}:{size[0]} out.mp4`)")
            yield index, np.ascontiguousarray(bgr[:, :, ::-1])
            index += 1
            count += 1
        if count == 0:
            raise VideoError(f"{path} decodes no frames (zero-length, or a codec this OpenCV build lacks); "
                             f"{_convert_hint(path)}")


def read_video(path: str | os.PathLike, every: int = 1, max_frames: int | None = None) -> Clip:
    """All frames `iter_frames` yields, stacked, with their indices and the file's fps."""
    indices, frames = zip(*iter_frames(path, every, max_frames))
    return Clip(np.stack(frames), np.asarray(indices, np.int64), video_fps(path))


@contextlib.contextmanager
def video_writer(path: str | os.PathLike, fps: float, size: tuple[int, int], fourcc: str = FOURCC):
    """Context manager yielding `write(frame)` for RGB u8[H, W, 3] frames (size = (H, W));
    the file appears at `path` only when the block succeeds (atomic rename)."""
    import cv2

    h, w = size
    path = Path(path)
    with atomic_output(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), (int(w), int(h)))
        if not writer.isOpened():
            raise VideoError(f"OpenCV cannot write {path.name} with codec {fourcc!r} (missing in this OpenCV build's "
                             "FFmpeg?); reinstall opencv-python-headless from PyPI, whose wheels include it")

        def write(frame):
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.shape != (h, w, 3):
                raise ValueError(f"video frames must be u8[{h}, {w}, 3] RGB, got {frame.dtype}{list(frame.shape)}")
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))

        try:
            yield write
        finally:
            writer.release()


def write_video(path: str | os.PathLike, frames, fps: float = 25.0) -> Path:
    """Write RGB frames u8[F, H, W, 3] (or a list) as an `.mp4` (codec mp4v), atomically."""
    frames = list(frames)
    if not frames:
        raise ValueError("write_video needs at least one frame")
    with video_writer(path, fps, np.asarray(frames[0]).shape[:2]) as write:
        for f in frames:
            write(f)
    return Path(path)


def sidecar_path(video: str | os.PathLike) -> Path:
    """`CLIP.landmarks.npy` beside `CLIP.mp4`."""
    video = Path(video)
    return video.with_name(video.stem + SIDECAR_SUFFIX)


def load_landmarks(path: str | os.PathLike) -> np.ndarray:
    """A landmark sidecar as f32[F, 5 | 68, 2] (NaN rows: no face); see the module docstring."""
    path = Path(path)
    fix = "save a float array of shape [frames, 5 or 68, 2] with numpy.save (NaN for frames without a face)"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except FileNotFoundError:
        raise VideoError(f"landmark file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise VideoError(f"{path} is not a .npy array ({e}); {fix}") from None
    if dtype.kind != "f" or len(shape) != 3 or shape[1] not in (5, 68) or shape[2] != 2:
        raise VideoError(f"{path} holds {dtype}{list(shape)}; {fix}")
    if shape[0] > MAX_SIDECAR_FRAMES:
        raise VideoError(f"{path} has {shape[0]} rows, more than the {MAX_SIDECAR_FRAMES} a clip can have")
    if path.stat().st_size < int(np.prod(shape)) * dtype.itemsize:
        raise VideoError(f"{path} is truncated: its header promises {list(shape)} values; {fix}")
    try:
        lm = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise VideoError(f"{path} cannot be read ({e}); {fix}") from None
    return np.asarray(lm, np.float32)
