"""Training inputs: photo folders (aligned + augmented), synthetic scenes, background prefetch.

Every source is a pure function of the step: `source.batch(step)` always returns the same
batch for the same (seed, step), so the data-iterator state of a run is just its step
number and `--resume` continues the exact sample stream. Samples are drawn epoch by epoch
in a seeded permutation; augmentation parameters come from `jax.random` keys folded from
the seed and the sample's global position.

`batch(step, rows)` gives only some rows of that batch (the ones a process of a multi-host
run places on its devices), equal to the same rows of the whole batch.

Batches use one convention for both sources (`Batch`): RGB crops u8[B, 224, 224, 3]
(top-down rows, as `align_image` and photo loaders give them) and landmarks in top-down
crop pixels (x = column, y = row).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Protocol

import jax
import numpy as np

from jaxface.align import align_image, load_image, read_landmarks
from jaxface.camera import Camera
from jaxface.conventions import IMAGE_SUFFIXES, flip_y
from jaxface.model.face_model import FaceModel
from jaxface.synth_data import SceneConfig, make_scene, to_uint8

NUM_DRAWS = 8  # uniform numbers per augmented sample, see `augment_crop`


class Batch(NamedTuple):
    """One training batch (a pytree; `coeffs` is None for photos).

    images: u8[B, S, S, 3]      RGB crops, top-down rows
    landmarks: f32[B, K, 2]     K = 68 or 5 (left eye, right eye, nose, mouth corners), top-down crop pixels
    coeffs: f32[B, 257] | None  ground truth (synthetic scenes only)
    """

    images: np.ndarray
    landmarks: np.ndarray
    coeffs: np.ndarray | None = None


class BatchSource(Protocol):
    """What the trainer reads: a deterministic batch per step, plus a description for metadata."""

    batch_size: int

    def batch(self, step: int, rows: slice = slice(None)) -> Batch: ...

    def validation_batch(self, count: int) -> Batch: ...

    def describe(self) -> dict: ...


# ----------------------------------------------------------------------------- photos

@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Light augmentation of the aligned crop (PyTorch reference: shift 10 px, scale 0.1; no flip
    here, which would need the 68-point relabelling). Colour jitter is ours (the reference has none).

    max_shift_px: uniform shift in +-max, pixels, each axis
    max_scale: zoom by 1 + uniform(+-max) about the crop centre
    brightness: multiply all channels by 1 + uniform(+-brightness)
    contrast: scale deviations from the mean grey by 1 + uniform(+-contrast)
    channel_gain: multiply each channel by 1 + uniform(+-channel_gain) (white balance)
    """

    max_shift_px: float = 10.0
    max_scale: float = 0.1
    brightness: float = 0.15
    contrast: float = 0.15
    channel_gain: float = 0.05

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)


def find_samples(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Sorted (image, landmarks .txt) pairs under `root` (recursively); the .txt sits beside the
    image with the same stem. Images without one are an error naming them and the fix."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder {root} not found")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise FileNotFoundError(
            f"{len(missing)} training image(s) have no landmark file beside them: {shown}. Each image needs "
            "NAME.txt with 5 lines 'x y' (or 68); write them with `jaxface detect`")
    return [(p, p.with_suffix(".txt")) for p in images]


def _read_points(path: Path) -> np.ndarray:
    """f32[5 or 68, 2]: the file's points, all of them (read_landmarks reduces 68 to 5)."""
    values = np.asarray(path.read_text().replace(",", " ").split(), np.float32)
    return values.reshape(-1, 2) if values.size == 136 else read_landmarks(path)


def augment_crop(image: np.ndarray, landmarks: np.ndarray, u: np.ndarray, config: AugmentConfig):
    """Shift/scale/colour-jitter ONE crop with uniform draws u f32[NUM_DRAWS] in [-1, 1]
    (scale, shift x, shift y, brightness, contrast, gain r, g, b).

    image: u8[S, S, 3]; landmarks: f32[K, 2] top-down pixels. Returns (u8[S, S, 3], f32[K, 2]).
    """
    import cv2

    size = image.shape[0]
    c = size // 2  # the reference zooms about w // 2
    scale = 1.0 + config.max_scale * u[0]
    shift = config.max_shift_px * u[1:3]
    m = np.array([[scale, 0.0, c - scale * c + shift[0]], [0.0, scale, c - scale * c + shift[1]]], np.float64)
    out = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    lm = (landmarks.astype(np.float64) @ m[:, :2].T + m[:, 2]).astype(np.float32)
    x = out.astype(np.float32)
    grey = x.mean()
    gain = (1.0 + config.brightness * u[3]) * (1.0 + config.channel_gain * u[5:8])
    x = (grey + (x - grey) * (1.0 + config.contrast * u[4])) * gain.astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), lm


class PhotoDataset:
    """Photos with 5- or 68-point detections, aligned like preprocessing (`align_image`).

    batch(step) -> Batch: B samples of the seeded epoch permutation at positions
    step*B ... step*B + B - 1, each augmented with its own key; batch(step, rows) loads and
    augments only those samples (a process's shard of the list). Aligned crops are cached
    (LRU, `cache_size` crops of 150 KB) so later epochs skip the resampling.
    """

    def __init__(self, root: str | os.PathLike, batch_size: int, seed: int = 0,
                 augment: AugmentConfig = AugmentConfig(), cache_size: int = 2048):
        self.root = Path(root)
        self.samples = find_samples(root)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment = augment
        counts = {len(_read_points(t)) for _, t in self.samples[:64]}
        if len(counts) != 1:
            raise ValueError(f"{root} mixes 5- and 68-point landmark files; use one kind for a training set")
        self.num_points = counts.pop()
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._perm_key, self._aug_key = jax.random.split(jax.random.key(self.seed))

    def __len__(self) -> int:
        return len(self.samples)

    def aligned(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(u8[224, 224, 3] crop, f32[K, 2] top-down crop landmarks) of sample `index`, unaugmented."""
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        image_path, lm_path = self.samples[index]
        try:
            points = _read_points(lm_path)
            if len(points) != self.num_points:
                raise ValueError(f"has {len(points)} points; this training set uses {self.num_points}")
            a = align_image(load_image(image_path), points)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"training sample {image_path}: {e}") from e
        lm = flip_y(a.landmarks).astype(np.float32)
        with self._lock:
            self._cache[index] = (a.image, lm)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return a.image, lm

    def indices(self, step: int) -> np.ndarray:
        """i64[B]: dataset indices of the batch at `step` (epoch-wise seeded permutations)."""
        n = len(self.samples)
        positions = step * self.batch_size + np.arange(self.batch_size)
        out = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(positions // n):
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(self._perm_key, int(epoch)), n))
            sel = positions // n == epoch
            out[sel] = perm[positions[sel] % n]
        return out

    def batch(self, step: int, rows: slice = slice(None)) -> Batch:
        idx = self.indices(step)[rows]
        u = np.asarray(jax.random.uniform(jax.random.fold_in(self._aug_key, step),
                                          (self.batch_size, NUM_DRAWS), minval=-1.0, maxval=1.0))[rows]
        images, lms = [], []
        for k, draws in zip(idx, u):
            img, lm = self.aligned(int(k))
            img, lm = augment_crop(img, lm, draws, self.augment)
            images.append(img)
            lms.append(lm)
        return Batch(np.stack(images), np.stack(lms))

    def validation_batch(self, count: int) -> Batch:
        """The first `count` samples (sorted order), unaugmented."""
        pairs = [self.aligned(i) for i in range(min(count, len(self.samples)))]
        return Batch(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))

    def describe(self) -> dict:
        return {"kind": "photos", "root": str(self.root.resolve()), "samples": len(self.samples),
                "landmarks": self.num_points, "seed": self.seed, "augment": dataclasses.asdict(self.augment)}


# ----------------------------------------------------------------------------- synthetic

_scene = jax.jit(make_scene, static_argnames=("batch", "config", "camera", "shared_identity"))


class SyntheticSource:
    """Random faces of `model` rendered over smooth backgrounds (`make_scene`), with their true
    coefficients: batch(step) uses the key fold_in(train_key, step). Images are quantized to
    u8 like photos. Validation scenes come from a separate key stream."""

    def __init__(self, model: FaceModel, batch_size: int, seed: int = 0,
                 config: SceneConfig = SceneConfig(), camera: Camera = Camera()):
        self.model = model
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.config = config
        self.camera = camera
        self._train_key, self._val_key = jax.random.split(jax.random.key(self.seed))

    def _make(self, key, count: int) -> Batch:
        s = _scene(self.model, key, batch=count, config=self.config, camera=self.camera)
        return Batch(to_uint8(s.images), np.asarray(s.landmarks, np.float32),
                     np.asarray(s.coeffs.to_vector(), np.float32))

    def batch(self, step: int, rows: slice = slice(None)) -> Batch:
        # One key draws the whole batch (coefficients, backgrounds, noise), so a process
        # renders all of it and keeps its rows.
        whole = self._make(jax.random.fold_in(self._train_key, step), self.batch_size)
        return whole if rows == slice(None) else Batch(*(x[rows] for x in whole))

    def validation_batch(self, count: int) -> Batch:
        return self._make(self._val_key, count)

    def describe(self) -> dict:
        return {"kind": "SYNTHETIC", "model": self.model.label, "model_synthetic": bool(self.model.synthetic),
                "seed": self.seed, "scene_config": dataclasses.asdict(self.config)}


# ----------------------------------------------------------------------------- prefetch

def prefetch(make: Callable[[int], object], start: int, stop: int, depth: int = 2) -> Iterator[tuple[int, object]]:
    """Yield (step, make(step)) for start <= step < stop, computing up to `depth` ahead in a
    background thread. Errors in the thread are re-raised here; closing the generator stops it."""
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stopping = threading.Event()

    def work():
        for step in range(start, stop):
            if stopping.is_set():
                return
            try:
                item = (step, make(step), None)
            except BaseException as e:  # handed to the consumer, which raises it
                item = (step, None, e)
            while not stopping.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    thread = threading.Thread(target=work, name="jaxface-prefetch", daemon=True)
    thread.start()
    try:
        for _ in range(start, stop):
            step, value, error = q.get()
            if error is not None:
                raise error
            yield step, value
    finally:
        stopping.set()
        thread.join(timeout=5.0)


def to_device(batch: Batch, sharding=None, batch_size: int | None = None) -> Batch:
    """Place a batch (leading axis sharded when `sharding` is given). With `batch_size`,
    `batch` is this process's rows (`devices.local_rows`) of a global batch of that size, and
    every process must call this with its rows to form the global arrays."""
    if batch_size is None:
        return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        sharding, np.asarray(x), (batch_size, *np.shape(x)[1:])), batch)
