"""Video: one identity for a clip and temporally smooth per-frame coefficients.

`io` decodes and writes video files and reads the landmark sidecar, `frames` aligns the frames,
`track` reconstructs (`reconstruct_video`), `outputs` writes the result files, `synthetic`
makes a clip with known trajectories, `cli` is `jaxface video`.
"""

from jaxface.video.io import (Clip, VideoError, iter_frames, load_landmarks, read_video, sidecar_path, video_fps,
                              video_writer, write_video)
from jaxface.video.outputs import save_video_outputs
from jaxface.video.track import INTERPOLATED, TRACKED, VideoConfig, VideoResult, reconstruct_video

__all__ = ["INTERPOLATED", "TRACKED", "Clip", "VideoConfig", "VideoError", "VideoResult", "iter_frames",
           "load_landmarks", "read_video", "reconstruct_video", "save_video_outputs", "sidecar_path", "video_fps",
           "video_writer", "write_video"]
