"""`jaxface reconstruct`: photos in, result files out; resumable, one line per problem, no tracebacks.

The output folder is checked (a folder, writable) before anything is loaded, and removed
again if set-up fails and this run created it. Every photo gets its own result name
(`outputs.assign_stems`, recorded in `manifest.csv`); the tool's own overlays in the output
folder are never taken for inputs; temp files of killed runs are removed. A bad photo
(unreadable, no landmarks, an unusable name) becomes a row of `failures.csv`, rewritten
after every batch, and the batch goes on; a doubtful result gets a row with stage `warning`.
"""

from __future__ import annotations

import argparse
import sys
import time
import tempfile
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_SETUP, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = """exit status:
  0    every photo reconstructed (or done by an earlier run: reruns resume)
  1    some photos failed: OUT/failures.csv names each one and why (the others have results)
  2    nothing done: bad arguments, no images found, output folder not writable,
       face model or weights unusable
  130  interrupted (Ctrl-C, SIGTERM): finished photos are kept; rerun the same command to resume"""
OVERLAY_SUFFIX = "_overlay.png"
LOCAL_RAY = "local"  # --ray without an address: a Ray instance on this machine


class SetupError(Exception):
    """Nothing can be done; the message says what to change (exit 2)."""


def _parser() -> argparse.ArgumentParser:
    from jaxface.conventions import IMAGE_SUFFIXES
    from jaxface.reconstruct import METHODS

    p = argparse.ArgumentParser(
        prog="jaxface reconstruct", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES,
        description="Reconstruct faces in photos: writes NAME.mat (TF and PyTorch reference keys), NAME_mesh.obj "
        "and NAME_overlay.png per photo (the TF reference's names), manifest.csv (which photo each NAME belongs to) and failures.csv. "
        "Landmarks come from NAME.txt beside each photo (five lines 'x y'), else from the face detector when "
        "the [detect] extra is installed. EXIF orientation is applied. Resumable: photos whose outputs exist "
        "are skipped unless --overwrite.",
    )
    p.add_argument("paths", nargs="+", type=Path, help=f"photos or folders of photos ({' '.join(IMAGE_SUFFIXES)})")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--bfm", type=Path, default=None,
                   help="folder with the Basel model (BFM_model_front.mat, or 01_MorphableModel.mat + Exp_Pca.bin); "
                   "default ./BFM, else the SYNTHETIC model with a notice")
    p.add_argument("--weights", type=Path, default=None, help="converted R-Net weights folder (default weights/rnet)")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="rnet (network), fit (gradient fitting), rnet+fit, auto (rnet if weights exist, else fit)")
    p.add_argument("--batch-size", type=int, default=16, help="photos per batch (default 16)")
    p.add_argument("--rnet-dtype", choices=("float32", "bfloat16"), default=None,
                   help="R-Net compute dtype (default: the weights', float32); bfloat16 is faster on CPUs with "
                   "AVX512-BF16/AMX and on GPUs, and changes coefficients slightly (README 'Speed')")
    p.add_argument("--steps", type=int, default=None,
                   help="fitting steps per stage, 0 or a multiple of 10 (default: FitConfig's)")
    p.add_argument("--overwrite", action="store_true", help="redo photos whose outputs exist")
    p.add_argument("--texture", action="store_true",
                   help="also write NAME_texture.png (photo colours), NAME_albedo.png (de-lit), NAME_visibility.png, "
                   "a textured NAME_mesh.obj + NAME_mesh.mtl and NAME.glb (needs the [mesh] extra)")
    p.add_argument("--texture-size", type=int, default=512, help="texture side in texels (default 512)")
    ray = p.add_argument_group("scale out on Ray Data (extra [ray]; see README 'Scale out: Ray')")
    ray.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                     help="run on a pool of Ray actors: alone, a Ray instance on this machine; with HOST:PORT "
                     "(or 'auto'), the cluster there (OUT must then be a folder every node can write). "
                     "Also writes OUT/coeffs.parquet. Put it after the photos, or write --ray=ADDRESS")
    ray.add_argument("--ray-actors", type=int, default=None, metavar="N",
                     help="actors, each holding one compiled Reconstructor (default: the cluster's CPUs "
                     "divided by --ray-cpus-per-actor)")
    ray.add_argument("--ray-cpus-per-actor", type=float, default=None, metavar="C",
                     help="CPUs Ray reserves per actor (default: half the CPUs of the smallest node, "
                     "so two actors per node)")
    ray.add_argument("--compile-cache", type=Path, default=None, metavar="DIR",
                     help="JAX's persistent compilation cache, shared by the actors (default: jax-compile in "
                     "the jaxface cache folder; 'none' to turn it off)")
    return p


def _prepare_out_dir(out: Path) -> list[Path]:
    """Create `out` and check that it takes files; returns the folders this created (to undo)."""
    if out.exists() and not out.is_dir():
        raise SetupError(f"the output folder {out} is an existing file; pass a folder (it is created if missing)")
    created = []
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise SetupError(f"cannot create the output folder {out}: {folder} is a file, not a folder")
            break
        created.append(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        _remove_empty(created)
        raise SetupError(f"cannot write into the output folder {out} ({e.strerror or e}); "
                         "choose a writable folder with -o") from e
    return created


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first
        try:
            folder.rmdir()
        except OSError:
            return


def _list_photos(paths, out: Path, stems: set[str]) -> tuple[list[Path], int]:
    """(photos, how many of the tool's own overlays in `out` were passed over); a file given twice counts once."""
    from jaxface.detect import list_images
    from jaxface.outputs import image_key

    out_dir, photos, seen, own = out.resolve(), [], set(), 0
    for p in list_images(paths):
        name = p.name
        if name.endswith(OVERLAY_SUFFIX) and p.parent.resolve() == out_dir:
            stem = name[: -len(OVERLAY_SUFFIX)]
            if stem in stems or (p.parent / f"{stem}.mat").is_file():
                own += 1
                continue
        key = image_key(p)
        if key not in seen:
            seen.add(key)
            photos.append(p)
    return photos, own


def _set_up(args, out: Path):
    """(photos, stems, name errors, Reconstructor, model, texture writer or None); raises SetupError."""
    from jaxface import outputs
    from jaxface.conventions import IMAGE_SUFFIXES

    try:
        manifest = outputs.read_manifest(out)
    except ValueError as e:
        raise SetupError(str(e)) from e
    photos, own = _list_photos(args.paths, out, set(manifest.values()))
    if not photos:
        where = " ".join(str(p) for p in args.paths)
        raise SetupError(f"no images found in {where} (looked for {' '.join(IMAGE_SUFFIXES)} files, not in "
                         "subfolders" + (f"; passed over {own} overlays this tool wrote" if own else "") + ")")
    recon, model, textures = _build(args)
    stems, errors = outputs.assign_stems(photos, manifest)
    new = {outputs.image_key(p): s for p, s in zip(photos, stems) if s is not None}
    try:
        outputs.write_manifest(out, {**manifest, **new})
    except OSError as e:
        raise SetupError(str(e)) from e
    renamed = [s for p, s in zip(photos, stems)
               if s is not None and outputs.image_key(p) not in manifest and s != _plain_stem(p)]
    if renamed:
        print(f"jaxface: {len(renamed)} photos share a result name with another photo and are written as "
              f"{', '.join(renamed[:5])}{', ...' if len(renamed) > 5 else ''} (see {out / outputs.MANIFEST_NAME})",
              file=sys.stderr)
    return photos, stems, errors, recon, model, textures


def _build(args, quiet: bool = False):
    """(Reconstructor, model, texture writer or None) for the settings in `args` (bfm, weights,
    method, batch_size, steps, texture, texture_size); raises SetupError. Every worker of a
    distributed run builds its own with the same settings, so results match this process's."""
    from jaxface.fit import FitConfig
    from jaxface.reconstruct import ReconstructConfig, Reconstructor, default_face_model

    fit_cfg = FitConfig() if args.steps is None else FitConfig(landmark_steps=args.steps, photo_steps=args.steps)
    buckets = tuple(sorted({b for b in (1, 4, args.batch_size) if b <= args.batch_size}))
    config = ReconstructConfig(method=args.method, buckets=buckets, fit=fit_cfg, rnet_dtype=args.rnet_dtype)
    try:
        model = default_face_model(args.bfm, quiet=quiet)
        recon = Reconstructor(model=model, weights=args.weights, config=config, detector=_optional_detector(),
                              quiet=quiet)
        textures = _TextureWriter(model, args.texture_size, buckets) if args.texture else None
    except (OSError, ValueError, ImportError) as e:
        raise SetupError(f"set-up failed: {e}") from e
    return recon, model, textures


def _todo(stems, out: Path, overwrite: bool, texture: bool) -> tuple[list[int], int]:
    """(indices of the photos to reconstruct, how many are done by earlier runs)."""
    from jaxface import outputs

    kinds = outputs.RESULT_KINDS + (outputs.TEXTURE_KINDS if texture else ())
    todo = [i for i, s in enumerate(stems) if s is not None and (overwrite or not outputs.outputs_exist(out, s, kinds))]
    return todo, sum(s is not None for s in stems) - len(todo)


class _TextureWriter:
    """Texture extraction for `--texture`: the atlas built once."""

    def __init__(self, model, size: int, buckets: tuple[int, ...]):
        from jaxface.outputs.mesh import _trimesh
        from jaxface.texture import TextureConfig, texture_atlas

        _trimesh()  # fail at set-up, not after the first batch, when the [mesh] extra is missing
        self.model, self.config, self.buckets = model, TextureConfig(size=size), buckets
        self.atlas = texture_atlas(model, size)

    def extract(self, result, paths) -> dict:
        """{k: one face's Textures} for the reconstructed images k of a batch (photos reloaded
        from `paths` to sample them at full resolution)."""
        import jax
        import numpy as np

        from jaxface.align import load_image
        from jaxface.reconstruct import bucket_size
        from jaxface.texture import extract_textures

        ok = [k for k, s in enumerate(result.status) if s == "ok"]
        if not ok:
            return {}
        coeffs = jax.tree.map(lambda x: np.asarray(x)[ok], result.coeffs)
        # Padded to the reconstruction's bucket: its compiled formation + z-buffer program is reused.
        maps = extract_textures(self.model, coeffs, [load_image(paths[k]) for k in ok], result.trans_params[ok],
                                atlas=self.atlas, config=self.config, batch_size=bucket_size(len(ok), self.buckets))
        return {k: jax.tree.map(lambda x: x[j], maps) for j, k in enumerate(ok)}


def _plain_stem(p: Path) -> str | None:
    from jaxface.outputs import OutputPathError, sanitize_stem

    try:
        return sanitize_stem(p.stem)
    except OutputPathError:
        return None


def reconstruct_cli(argv) -> int:
    """`jaxface reconstruct`; returns the exit status (see EXIT_CODES)."""
    t0 = time.perf_counter()
    p = _parser()
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    from jaxface.fit import FitConfig
    from jaxface.texture import MAX_TEXTURE_SIZE

    if not 8 <= args.texture_size <= MAX_TEXTURE_SIZE:
        p.error(f"--texture-size must be between 8 and {MAX_TEXTURE_SIZE}")

    every = FitConfig.raster_every
    if args.steps is not None and (args.steps < 0 or args.steps % every):
        p.error(f"--steps must be 0 or a multiple of {every} (fitting refreshes which triangles are visible "
                f"every {every} steps), got {args.steps}")
    if args.ray is None and (args.ray_actors is not None or args.ray_cpus_per_actor is not None
                             or args.compile_cache is not None):
        p.error("--ray-actors, --ray-cpus-per-actor and --compile-cache go with --ray")
    if args.ray_actors is not None and args.ray_actors < 1:
        p.error("--ray-actors must be at least 1")
    if args.ray_cpus_per_actor is not None and args.ray_cpus_per_actor <= 0:
        p.error("--ray-cpus-per-actor must be positive")
    created: list[Path] = []
    ray_started = False
    try:
        if args.ray is not None:
            from jaxface.distributed import ray_data

            # First: the extra and the address are checked before anything loads, and Ray
            # spawns its processes before JAX starts here.
            ray_started = ray_data.start_ray(args.ray, quiet=True)
        created = _prepare_out_dir(args.out)
        from jaxface.fileio import remove_stale_temps

        stale = remove_stale_temps(args.out)
        if stale:
            print(f"jaxface: removed {len(stale)} partial files left by an interrupted run", file=sys.stderr)
        photos, stems, errors, recon, model, textures = _set_up(args, args.out)
    except SetupError as e:
        _remove_empty(created)
        print(f"jaxface reconstruct: {e}", file=sys.stderr)
        if ray_started:
            ray_data.stop_ray(ray_started)
        return EXIT_SETUP
    except KeyboardInterrupt:
        _remove_empty(created)
        print("jaxface reconstruct: interrupted during set-up; nothing was reconstructed", file=sys.stderr)
        if ray_started:
            ray_data.stop_ray(ray_started)
        return EXIT_INTERRUPTED
    if args.ray is not None:
        try:
            return ray_data.run_cli(args, photos, stems, errors, recon, model, textures, t0)
        finally:
            ray_data.stop_ray(ray_started)
    return _run(args, photos, stems, errors, recon, model, textures, t0)


def _run(args, photos, stems, errors, recon, model, textures, t0: float) -> int:
    from jaxface import outputs

    out, size = args.out, args.batch_size
    failures = outputs.FailureLog()
    for i, msg in errors.items():
        failures.add(photos[i], "name", msg)
    csv_path = out / "failures.csv"
    todo: list[int] = []
    done = warned = skipped = 0
    csv_error: list[OSError] = []

    def save_failures():
        csv_error.clear()
        try:
            failures.write(csv_path)
        except OSError as e:
            csv_error.append(e)

    try:  # from here on an interrupt keeps what is done and says so
        todo, skipped = _todo(stems, out, args.overwrite, textures is not None)
        print(f"model: {model.label}; method: {recon.method}", file=sys.stderr)
        save_failures()  # also replaces the failures of an earlier run
        chunks = [todo[start : start + size] for start in range(0, len(todo), size)]
        seen = 0

        def on_batch(n_photos, n_done, n_warned, rows):
            nonlocal done, warned, seen
            done, warned, seen = done + n_done, warned + n_warned, seen + n_photos
            failures.rows.extend(rows)
            save_failures()
            print(f"[{seen}/{len(todo)}] {done} reconstructed, {len(failures) - warned} failed", file=sys.stderr)

        _pipeline(recon, chunks, photos, stems, out, model, textures, on_batch)
    except KeyboardInterrupt:
        save_failures()
        print(f"jaxface reconstruct: interrupted; {done} of {len(todo)} photos reconstructed in this run "
              f"(kept in {out}), {skipped} by earlier runs; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _finish(out, failures, done, warned, skipped, csv_error, csv_path,
                   {"command": "reconstruct", "model": model.label, "method": recon.method, "photos": len(todo),
                    "skipped": skipped, "seconds": round(time.perf_counter() - t0, 2),
                    "inputs": {s: str(p.resolve()) for s, p in zip(stems, photos) if s is not None}})


def _finish(out: Path, failures, done: int, warned: int, skipped: int, csv_error: list, csv_path: Path,
            run: dict) -> int:
    """The end of a run: failure rows printed if failures.csv could not be written, the summary
    line, the HTML report; returns the exit status."""
    failed = len(failures) - warned
    if csv_error:
        why = csv_error[0].strerror or csv_error[0]
        print(f"jaxface reconstruct: {why}; the rows of failures.csv are:", file=sys.stderr)
        for r in failures.rows:
            print(f"  {r.image}: {r.stage}: {r.message}", file=sys.stderr)
    note = f" ({warned} with warnings)" if warned else ""
    see = f"; see {csv_path}" if (failed or warned) and not csv_error else ""
    print(f"{done} reconstructed{note}, {skipped} already done, {failed} failed -> {out}{see}")
    from jaxface.report import report_after_run

    report_after_run(out, run)
    return EXIT_FAILED if failed else EXIT_OK


def _pipeline(recon, chunks, photos, stems, out: Path, model, textures, on_batch) -> None:
    """Reconstruct and write `chunks` (lists of photo indices) in order, calling
    `on_batch(photos, written, with warnings, failure rows)` after each chunk's files are written.
    Three stages overlap: the next chunk is loaded and aligned, this one runs through the
    network, the previous one is written (the host stages are mostly single-threaded Python and
    image codecs; the network uses every core). On Ctrl-C the chunk being written is finished
    and reported, then the interrupt goes on."""
    from concurrent.futures import ThreadPoolExecutor

    from jaxface.outputs import FailureLog

    def write(result, chunk):
        log = FailureLog()
        n_done, n_warned = write_batch(result, [photos[i] for i in chunk], [stems[i] for i in chunk], out, model,
                                       textures, log)
        return len(chunk), n_done, n_warned, log.rows

    loader, writer = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    pending = None
    try:
        nxt = loader.submit(recon.prepare, [photos[i] for i in chunks[0]]) if chunks else None
        for c, chunk in enumerate(chunks):
            prepared = nxt.result()
            if c + 1 < len(chunks):
                nxt = loader.submit(recon.prepare, [photos[i] for i in chunks[c + 1]])
            result = recon.run(prepared)
            if pending is not None:
                on_batch(*pending.result())
            pending = writer.submit(write, result, chunk)
        if pending is not None:
            on_batch(*pending.result())
            pending = None
    except KeyboardInterrupt:
        if pending is not None and not pending.cancelled():
            on_batch(*pending.result())
        raise
    finally:
        loader.shutdown(wait=False, cancel_futures=True)
        writer.shutdown(wait=True)


def write_batch(result, photos, stems, out: Path, model, textures, failures) -> tuple[int, int]:
    """Write the outputs of one reconstructed batch (`photos[k]` as `stems[k]`); a failed photo
    or a failed write becomes a row of `failures` and the batch goes on. Returns (written, with warnings)."""
    from jaxface import outputs

    from concurrent.futures import ThreadPoolExecutor

    maps = textures.extract(result, photos) if textures else {}

    def save(k):
        if result.status[k] != outputs.OK:
            return None
        try:
            outputs.save_outputs(result, k, out, stems[k], model.tris, maps.get(k),
                                 textures.atlas.uv if textures else None)
        except OSError as e:
            return e
        return None

    # Encoders and numpy release the GIL: two threads write a batch in about half the time.
    with ThreadPoolExecutor(2) as pool:
        errors = list(pool.map(save, range(len(photos))))
    done = warned = 0
    for k, photo in enumerate(photos):
        if result.status[k] != outputs.OK:
            failures.add(photo, "reconstruct", result.status[k])
            continue
        if errors[k] is not None:
            failures.add(photo, "write", errors[k])
            continue
        done += 1
        if result.warnings[k]:
            failures.add(photo, "warning", result.warnings[k])
            warned += 1
    return done, warned


class _LazyDetector:
    """Loads the dlib detector on the first photo without a NAME.txt (2-3 s saved otherwise)."""

    def __init__(self):
        self._detector = None

    def detect(self, image):
        if self._detector is None:
            from jaxface.detect import Detector

            self._detector = Detector()
        return self._detector.detect(image)


def _optional_detector():
    """A face detector when the [detect] extra is installed, else None (photos then need NAME.txt)."""
    import importlib.util

    return _LazyDetector() if importlib.util.find_spec("dlib") is not None else None
