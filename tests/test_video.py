"""`jaxface.video` on a synthetic clip with known trajectories, written to a temporary .mp4.

Every reconstruction here runs `CFG` (landmark-only stages, window 8, 4 identity frames):
the fit programs compile once for the module, and the CLI runs with the flags that give
the same configuration. Clip rendering and overlays share one `render_faces` program (batch 16).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxface.cli import main
from jaxface.fit import TemporalWeights
from jaxface.outputs import load_mat, load_obj, read_failures_csv
from jaxface.video import (INTERPOLATED, TRACKED, VideoConfig, VideoError, iter_frames, load_landmarks, read_video,
                           reconstruct_video, sidecar_path, write_video)
from jaxface.video.frames import align_clip
from jaxface.video.metrics import jitter
from jaxface.video.synthetic import ClipConfig, make_clip
from jaxface.video.track import MOTION, blend_weights, interpolate_missing, windows

FRAMES, MISSING = 10, 4
CFG = VideoConfig(method="fit", window=8, overlap=2, identity_frames=4).landmark_only()
CLI_FLAGS = ["--method", "fit", "--window", "8", "--overlap", "2", "--identity-frames", "4", "--landmark-only",
             "--no-progress"]


@pytest.fixture(scope="module")
def clip(synthetic_model):
    return make_clip(synthetic_model, jax.random.key(3), ClipConfig(frames=FRAMES, period=20.0))


@pytest.fixture(scope="module")
def video_file(clip, tmp_path_factory):
    """The clip as .mp4 with its sidecar; frame MISSING has no face (NaN row)."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, clip.frames, clip.fps)
    lm = clip.landmarks.copy()
    lm[MISSING] = np.nan
    np.save(sidecar_path(path), lm)
    return path


@pytest.fixture(scope="module")
def decoded(video_file):
    return read_video(video_file)


@pytest.fixture(scope="module")
def tracked(synthetic_model, decoded, video_file):
    return reconstruct_video(decoded.frames, load_landmarks(sidecar_path(video_file)), model=synthetic_model,
                             config=CFG, quiet=True)


# ----------------------------------------------------------------------------- files

def test_read_video_roundtrip_every_and_max_frames(clip, video_file, decoded):
    assert decoded.frames.shape == clip.frames.shape
    np.testing.assert_array_equal(decoded.indices, np.arange(FRAMES))
    assert decoded.fps == pytest.approx(25.0)
    # mp4v is lossy, but close: mean absolute error of a few grey levels.
    assert np.abs(decoded.frames.astype(float) - clip.frames).mean() < 6.0
    sub = read_video(video_file, every=3, max_frames=3)
    np.testing.assert_array_equal(sub.indices, [0, 3, 6])
    np.testing.assert_array_equal(sub.frames, decoded.frames[[0, 3, 6]])


def test_unusable_videos_raise_clear_errors(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        next(iter_frames(tmp_path / "nope.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        next(iter_frames(tmp_path / "empty.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 64)
    with pytest.raises(VideoError, match="ffmpeg"):
        next(iter_frames(tmp_path / "junk.mp4"))
    with pytest.raises(VideoError, match="is not a file"):
        next(iter_frames(tmp_path))
    with pytest.raises(VideoError, match="codec 'ZZZZ'"):
        from jaxface.video.io import video_writer

        with video_writer(tmp_path / "out.mp4", 25, (32, 32), fourcc="ZZZZ"):
            pass
    assert not (tmp_path / "out.mp4").exists()


def test_landmark_sidecar_is_checked_and_never_unpickled(tmp_path):
    good = np.zeros((3, 68, 2), np.float32)
    good[1] = np.nan
    np.save(tmp_path / "good.npy", good)
    out = load_landmarks(tmp_path / "good.npy")
    assert out.dtype == np.float32 and np.isnan(out[1]).all() and not np.isnan(out[[0, 2]]).any()
    np.save(tmp_path / "pickled.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "shape.npy", np.zeros((3, 7, 2)))
    np.save(tmp_path / "ints.npy", np.zeros((3, 5, 2), np.int32))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    (tmp_path / "short.npy").write_bytes((tmp_path / "good.npy").read_bytes()[:-100])
    for name in ("pickled", "shape", "ints", "junk", "short", "missing"):
        with pytest.raises(VideoError, match="numpy.save|does not exist"):
            load_landmarks(tmp_path / f"{name}.npy")


# ----------------------------------------------------------------------------- pieces

def test_windows_cover_the_clip_and_blend_weights_sum_to_one():
    assert windows(10, 8, 2) == [0, 6]
    assert windows(8, 8, 2) == [0]
    assert windows(3, 8, 2) == [0]
    assert windows(16, 8, 2) == [0, 6, 12]
    np.testing.assert_allclose(blend_weights(8, 2, False, False), [1 / 3, 2 / 3, 1, 1, 1, 1, 2 / 3, 1 / 3])
    for n in (5, 8, 9, 20, 31):
        starts, total = windows(n, 8, 2), np.zeros(n + 8)
        for k, s in enumerate(starts):
            total[s:s + 8] += blend_weights(8, 2, k == 0, k == len(starts) - 1)
        np.testing.assert_allclose(total[:n], 1.0)
        assert starts[-1] + 8 >= n


def test_interpolate_missing_hand_values():
    x = np.array([[np.nan, 5.0], [0.0, 1.0], [np.nan, 0.0], [np.nan, 0.0], [3.0, 7.0], [np.nan, 0.0]])
    valid = np.array([False, True, False, False, True, False])
    np.testing.assert_allclose(interpolate_missing(x, valid), [[0, 1], [0, 1], [1, 3], [2, 5], [3, 7], [3, 7]])


def test_jitter_hand_values():
    x = np.array([0.0, 1.0, 4.0, 9.0, 10.0])[:, None]  # second differences 2, 2, -4
    assert jitter(x) == pytest.approx(8 / 3)
    assert jitter(x, np.array([True, True, True, False, True])) == pytest.approx(2.0)
    pts = np.stack([np.arange(5.0), 3 * np.arange(5.0)], axis=-1)[:, None, :]  # f[5, 1, 2], a straight line
    assert jitter(pts) == 0.0


def test_align_clip_with_a_detector_reports_frames_without_a_face(clip):
    class FakeDetector:  # the dlib detector's interface, answering from the clip's landmarks in frame order
        calls = 0

        def detect_faces(self, frame):
            pos, FakeDetector.calls = FakeDetector.calls, FakeDetector.calls + 1
            return [] if pos == 1 else [type("Detection", (), {"points68": clip.landmarks[pos]})]

    frames = (f for f in clip.frames[:3])  # a generator: frames are read once
    out = align_clip(frames, detector=FakeDetector(), smoothing=2)
    assert out.reasons == ("ok", "no face", "ok")
    np.testing.assert_array_equal(out.valid, [True, False, True])
    assert np.isnan(out.landmarks[1]).all() and not np.isnan(out.landmarks[[0, 2]]).any()
    # Steady crops: frames 0 and 2 are aligned on the mean of their five points (frame 1 has none).
    from jaxface import align
    from jaxface.conventions import five_from_68
    from jaxface.video.frames import to_crop

    five = np.mean([five_from_68(clip.landmarks[0]), five_from_68(clip.landmarks[2])], axis=0)
    np.testing.assert_allclose(out.trans_params[0], align.align_image(clip.frames[0], five).trans_params)
    np.testing.assert_allclose(out.landmarks[2], to_crop(clip.landmarks[2], out.trans_params[2]), rtol=1e-6)


def test_steady_crop_geometry_puts_frame_points_where_the_mapping_says():
    """Gaussian dots at known sub-pixel frame positions: their centroids in the crop and, warped
    back, in the frame, against `to_crop` (hand-built frame; no model)."""
    from jaxface import align
    from jaxface.video.frames import _steady_crop, to_crop, to_frame, warp_to_frame

    yy, xx = np.mgrid[0:300, 0:400]
    dots = np.array([[181.3, 140.7], [215.2, 190.9], [200.0, 160.0]])
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18.0) for x, y in dots)
    frame = np.repeat(np.round(255 * img / img.max()).astype(np.uint8)[..., None], 3, axis=2)
    five = np.array([[170.3, 130.2], [230.1, 131.0], [200.5, 165.7], [175.2, 195.4], [226.8, 196.1]])
    tp = align.align_image(frame, five).trans_params
    crop = _steady_crop(align.align_image(frame, five).image, tp)

    def centroid(image, at):
        (x, y), r = np.floor(at).astype(int), 8
        ys, xs = np.mgrid[y - r:y + r + 1, x - r:x + r + 1]
        w = image[y - r:y + r + 1, x - r:x + r + 1].astype(float)
        return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()

    in_crop = to_crop(dots, tp)
    np.testing.assert_allclose(to_frame(in_crop, tp), dots, atol=1e-9)
    for want in in_crop:
        np.testing.assert_allclose(centroid(crop[..., 0], want), want, atol=0.1)
    back, mask = warp_to_frame(crop / 255.0, np.ones((224, 224)), tp)
    assert mask[150, 200] == pytest.approx(1.0) and mask[0, 0] == 0.0
    for want in dots:
        np.testing.assert_allclose(centroid(back[..., 0], want), want, atol=0.1)


def test_short_clips_and_bad_frames(synthetic_model, clip, tracked):
    one = reconstruct_video(clip.frames[:1], clip.landmarks[:1], model=synthetic_model, config=CFG, quiet=True)
    assert one.coeffs.batch_shape == (1,) and one.status.tolist() == [TRACKED]
    assert np.isfinite(one.landmarks).all()
    frames = [clip.frames[0], clip.frames[1][:-2]]
    with pytest.raises(ValueError, match="frame 1 is .* but frame 0 is"):
        reconstruct_video(frames, clip.landmarks[:2], model=synthetic_model, config=CFG, quiet=True)
    with pytest.raises(ValueError, match="no usable face in any of the 2 frames"):
        reconstruct_video(clip.frames[:2], np.full((2, 68, 2), np.nan), model=synthetic_model, config=CFG, quiet=True)
    with pytest.raises(ValueError, match="cover 1 frames"):
        reconstruct_video(clip.frames[:2], clip.landmarks[:1], model=synthetic_model, config=CFG, quiet=True)


# ----------------------------------------------------------------------------- reconstruction

def test_one_identity_and_interpolated_frames(tracked):
    assert tracked.method == "fit"
    expect = np.full(FRAMES, TRACKED)
    expect[MISSING] = INTERPOLATED
    np.testing.assert_array_equal(tracked.status, expect)
    assert tracked.reasons[MISSING] == "no face" and tracked.reasons[0] == "ok"
    c = tracked.coeffs
    np.testing.assert_array_equal(c.id, np.broadcast_to(tracked.identity.id, c.id.shape))
    np.testing.assert_array_equal(c.tex, np.broadcast_to(tracked.identity.tex, c.tex.shape))
    for name in MOTION:  # the frame without a face is the mean of its two neighbours
        x = getattr(c, name)
        np.testing.assert_allclose(x[MISSING], (x[MISSING - 1] + x[MISSING + 1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tracked.trans_params[MISSING, 2:],
                               (tracked.trans_params[MISSING - 1, 2:] + tracked.trans_params[MISSING + 1, 2:]) / 2)


def test_tracking_is_closer_to_the_truth_and_steadier_than_uncoupled_frames(synthetic_model, clip, decoded,
                                                                             video_file, tracked):
    """The same programs with the temporal prior at zero and per-frame crops: frames are not coupled."""
    loose = dataclasses.replace(CFG, align_smoothing=0,
                                track=dataclasses.replace(CFG.track, temporal=TemporalWeights(0.0, 0.0, 0.0, 0.0)))
    uncoupled = reconstruct_video(decoded.frames, load_landmarks(sidecar_path(video_file)), model=synthetic_model,
                                  config=loose, quiet=True)
    ok = tracked.status == TRACKED
    err = lambda lm: np.linalg.norm(lm - clip.true_landmarks, axis=-1)[ok].mean()  # noqa: E731
    noise = err(clip.landmarks)
    assert err(tracked.landmarks) < 0.75 * noise
    assert err(tracked.landmarks) < err(uncoupled.landmarks)
    assert jitter(tracked.landmarks, ok) < 0.5 * jitter(uncoupled.landmarks, ok)
    assert jitter(tracked.coeffs.angle, ok) < 0.5 * jitter(uncoupled.coeffs.angle, ok)


# ----------------------------------------------------------------------------- command line

def test_cli_writes_every_output(synthetic_model, video_file, tracked, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["video", str(video_file), "-o", str(out), *CLI_FLAGS]) == 0
    data = np.load(out / "coeffs.npz", allow_pickle=False)
    np.testing.assert_array_equal(data["frame_index"], np.arange(FRAMES))
    np.testing.assert_array_equal(data["status"], tracked.status)
    np.testing.assert_allclose(data["coeffs"], tracked.coeffs.to_vector(), atol=1e-5)
    np.testing.assert_allclose(data["landmarks"], tracked.landmarks, atol=1e-3)
    assert str(data["reason"][MISSING]) == "no face"
    overlay = read_video(out / "overlay.mp4")
    assert overlay.frames.shape == (FRAMES, *tracked.size, 3)
    mat = load_mat(out / "identity.mat")
    np.testing.assert_allclose(mat["id"][0], tracked.identity.id, atol=1e-6)
    vertices, _, _ = load_obj(out / "identity_mesh.obj")
    assert vertices.shape == (synthetic_model.num_vertices, 3)
    np.testing.assert_allclose(vertices, mat["face_shape"], atol=1e-6)
    failures = read_failures_csv(out / "failures.csv")
    assert [f.image for f in failures] == [f"clip.mp4#frame{MISSING}"]
    assert "1 interpolated" in capsys.readouterr().out


def test_cli_every_and_meshes(video_file, tmp_path):
    out = tmp_path / "out"
    assert main(["video", str(video_file), "-o", str(out), "--every", "2", "--meshes", *CLI_FLAGS]) == 0
    data = np.load(out / "coeffs.npz", allow_pickle=False)
    np.testing.assert_array_equal(data["frame_index"], [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(data["status"], [0, 0, 1, 0, 0])  # frame 4 has no face
    assert sorted(p.name for p in (out / "meshes").iterdir()) == [f"frame_{i:06d}.obj" for i in (0, 2, 4, 6, 8)]


def test_cli_errors(video_file, tmp_path, capsys):
    assert main(["video", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "out")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["video", str(video_file), "-o", str(tmp_path / "file" / "out")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["video", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "out"), "--window", "4", "--overlap", "4"])
