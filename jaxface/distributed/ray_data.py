"""`jaxface reconstruct ... --ray [ADDRESS]` and `reconstruct_dataset`: the one-process command's
set-up (photo list, manifest, resume, stale temps) in the driver, the photos of a Ray Dataset
mapped by a pool of actors (`ReconstructActor`), each of which builds one `Reconstructor` with
the command's settings and writes its batches' outputs with `reconstruct_cli.write_batch`.

Only coefficients and status travel back to the driver, which keeps `failures.csv` (the same
rows, in the same order, as the one-process command) and streams `coeffs.parquet`. The dataset's
blocks are the one-process command's batches (or whole multiples of them), so every actor sees
the same batches and computes the same numbers. Ray starts its workers as fresh processes
(nothing forks after JAX starts), and each actor compiles once per batch bucket; a persistent
JAX compilation cache shared by the actors spares the later ones (and later runs) most of that.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
import sys
import time
from pathlib import Path

COEFFS_NAME = "coeffs.parquet"
INSTALL_HINT = "pip install 'jaxface[ray]'"
MAX_BLOCKS = 1000  # dataset blocks; more photos make each block several batches long
# Environment the actors get from the driver (their nodes may not share the driver's shell);
# each actor sets it in its own process before it loads anything (no Ray runtime_env needed).
FORWARDED_ENV = ("JAXFACE_", "XLA_FLAGS")


@dataclasses.dataclass(frozen=True)
class RaySettings:
    """What each actor needs to build the same Reconstructor as the one-process command
    (the attributes `reconstruct_cli._build` reads) and where to write. Paths are absolute."""

    out: str
    bfm: str | None
    weights: str | None
    method: str
    batch_size: int
    steps: int | None
    texture: bool
    texture_size: int
    rnet_dtype: str | None = None
    compile_cache: str | None = None
    env: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class DatasetRun:
    """What a run did. actor_startup: per actor, (seconds to build its Reconstructor, seconds of
    its first batch, which includes compiling); images_per_s: photos of this run over the
    seconds from the dataset's start to its last result; steady_images_per_s: photos over
    seconds once every actor had finished its first batch, by the actors' clocks (None with
    too few batches to tell)."""

    done: int
    warned: int
    failed: int
    skipped: int
    exit_code: int
    interrupted: bool
    seconds: float
    images_per_s: float | None
    steady_images_per_s: float | None
    actors: int
    cpus_per_actor: float
    actor_startup: tuple[tuple[float, float], ...]
    failures_csv: Path
    coeffs_parquet: Path


# ---------------------------------------------------------------- Ray set-up


def _import_ray():
    from jaxface.reconstruct_cli import SetupError

    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise SetupError(f"--ray needs Ray Data, which is not installed ({e}): {INSTALL_HINT}") from e
    return ray


def check_ray(address: str) -> None:
    """Fail early (SetupError) when Ray is missing or ADDRESS is not a reachable Ray head."""
    from jaxface.reconstruct_cli import LOCAL_RAY, SetupError

    _import_ray()
    if address in (LOCAL_RAY, "auto") or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SetupError(f"--ray {address}: expected the head node's HOST:PORT (`ray start --head` prints it, "
                         "port 6379 by default), 'auto', or no value for a Ray instance on this machine")
    try:  # ray.init would retry an unreachable address for minutes
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise SetupError(f"--ray {address}: no Ray head answers there ({e.strerror or e}); start one with "
                         f"`ray start --head --port={port}` on {host}, or check the address") from e


def start_ray(address: str, quiet: bool = False) -> bool:
    """Check the extra and the address (SetupError), then join Ray at `address` or start a local
    instance (LOCAL_RAY), unless this process already runs Ray. True when this call started it
    (`stop_ray` ends it). Call it before JAX starts in this process: starting Ray spawns
    processes, and nothing should fork once JAX's threads run. quiet: Ray Data logs warnings
    only (set in this process's environment; for the command line)."""
    import logging

    from jaxface.reconstruct_cli import LOCAL_RAY, SetupError

    if quiet:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # read when ray.data is imported
    check_ray(address)
    ray = _import_ray()
    if ray.is_initialized():  # the caller's own Ray (a notebook, a test)
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING)
    try:
        if address == LOCAL_RAY:
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as e:  # ConnectionError, RuntimeError, ...: Ray names no common base
        raise SetupError(f"could not start Ray{'' if address == LOCAL_RAY else ' at ' + address}: "
                         f"{_first_line(e)}") from e
    return True


def stop_ray(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


def _first_line(e: BaseException) -> str:
    lines = [s for s in str(e).splitlines() if s.strip()]
    return f"{type(e).__name__}: {lines[0].strip() if lines else ''}"


def _pool(ray, actors: int | None, cpus_per_actor: float | None) -> tuple[int, float]:
    """(actors, CPUs each) from the nodes' CPUs: by default two actors per node, each with half
    of the smallest node's CPUs (while one actor decodes, aligns and writes files, the other
    computes; see README 'Scale out: Ray' for the measurement)."""
    from jaxface.reconstruct_cli import SetupError

    nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    nodes = [c for c in nodes if c > 0] or [1]
    if cpus_per_actor is None:
        cpus_per_actor = max(1, min(nodes) // 2)
    if cpus_per_actor > max(nodes):
        raise SetupError(f"--ray-cpus-per-actor {cpus_per_actor:g}: no Ray node has that many CPUs "
                         f"(the largest has {max(nodes):g})")
    if actors is None:
        actors = max(1, sum(int(c // cpus_per_actor) for c in nodes))
    return actors, cpus_per_actor


def _forwarded_env() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)))


def default_compile_cache() -> Path:
    from jaxface import paths

    return paths.cache_dir() / "jax-compile"


# ---------------------------------------------------------------- the actors


class ReconstructActor:
    """One per Ray worker process: one Reconstructor (model and weights loaded once, programs
    compiled on the first batch of each bucket), called on batches {index, key, stem}; writes
    each photo's outputs and returns its status, message and 257 coefficients (NaN if none).
    `actor_class(settings)` makes the class Ray Data instantiates."""

    settings: RaySettings | None = None

    def __init__(self):
        t = time.perf_counter()
        from jaxface.reconstruct_cli import _build

        settings = self.settings
        os.environ.update(dict(settings.env))  # this worker's own process; before JAX's backend starts
        if settings.compile_cache is not None:
            import jax

            jax.config.update("jax_compilation_cache_dir", settings.compile_cache)
        self.recon, self.model, self.textures = _build(settings, quiet=True)
        self.out = Path(settings.out)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.init_s = time.perf_counter() - t
        self.calls = 0

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from jaxface import outputs
        from jaxface.reconstruct_cli import write_batch

        t = time.perf_counter()
        photos = [Path(str(k)) for k in batch["key"]]
        result = self.recon(photos)
        log = outputs.FailureLog()
        write_batch(result, photos, [str(s) for s in batch["stem"]], self.out, self.model, self.textures, log)
        rows = {r.image: r for r in log.rows}  # at most one per photo: failed, or written with a warning
        n = len(photos)
        self.calls += 1
        return {
            "index": np.asarray(batch["index"], np.int64),
            "status": np.array([rows[str(p)].stage if str(p) in rows else outputs.OK for p in photos], object),
            "message": np.array([rows[str(p)].message if str(p) in rows else "" for p in photos], object),
            "coeffs": np.asarray(result.coeffs.to_vector(), np.float32).reshape(n, -1),
            "actor": np.array([self.name] * n, object),
            "init_s": np.full(n, self.init_s),
            "call_s": np.full(n, time.perf_counter() - t),
            "end": np.full(n, time.time()),  # wall clock: compared across actors
            "first": np.full(n, self.calls == 1),
        }


def actor_class(settings: RaySettings) -> type:
    """ReconstructActor with `settings` in the class itself: Ray ships the class with the task
    (constructor arguments would sit in the object store, and Ray warns that a restarted
    actor could lose them)."""
    return type("ReconstructActor", (ReconstructActor,), {"settings": settings})


# ---------------------------------------------------------------- coeffs.parquet


def _schema(pa):
    from jaxface.coeffs import NUM_COEFFS

    return pa.schema([("image", pa.string()), ("stem", pa.string()), ("status", pa.string()),
                      ("message", pa.string()), ("coeffs", pa.list_(pa.float32(), NUM_COEFFS)),
                      ("earlier_run", pa.bool_())])


def _table(pa, images, stems, status, message, coeffs, earlier: bool):
    import numpy as np

    from jaxface.coeffs import NUM_COEFFS

    flat = pa.array(np.asarray(coeffs, np.float32).reshape(-1))
    return pa.Table.from_arrays(
        [pa.array(list(images), pa.string()), pa.array(list(stems), pa.string()), pa.array(list(status), pa.string()),
         pa.array(list(message), pa.string()), pa.FixedSizeListArray.from_arrays(flat, NUM_COEFFS),
         pa.array([earlier] * len(images), pa.bool_())], schema=_schema(pa))


def _carry_over(pa, writer, old: Path, redo: set[str], skipped: dict[str, str], out: Path) -> None:
    """Rows of an earlier run's table for photos this run does not redo; photos done earlier
    without a row (a killed driver, the one-process command) get theirs from their .mat."""
    import numpy as np

    from jaxface import outputs
    from jaxface.coeffs import NUM_COEFFS

    found: set[str] = set()
    if old.is_file():
        import pyarrow.parquet as pq

        try:
            for b in pq.ParquetFile(old).iter_batches(batch_size=8192, columns=_schema(pa).names):
                t = pa.Table.from_batches([b]).cast(_schema(pa))
                images = t.column("image").to_pylist()
                keep = [i for i, k in enumerate(images) if k not in redo]
                if keep:
                    t = t.take(keep)
                    writer.write_table(t.set_column(t.schema.get_field_index("earlier_run"), "earlier_run",
                                                    pa.array([True] * len(keep), pa.bool_())))
                    found.update(images[i] for i in keep)
        except (OSError, ValueError, pa.ArrowException) as e:
            print(f"jaxface: {old} could not be read ({e}); rebuilding its rows from the .mat files", file=sys.stderr)
            found.clear()  # the rows written so far stay; the missing ones are read below
    missing = [(k, s) for k, s in skipped.items() if k not in found]
    for start in range(0, len(missing), 256):
        chunk = missing[start : start + 256]
        vecs, status, message = [], [], []
        for _, stem in chunk:
            try:
                vecs.append(np.asarray(outputs.load_mat(out / f"{stem}.mat")["coeff"], np.float32).reshape(NUM_COEFFS))
                status.append(outputs.OK), message.append("")
            except (OSError, ValueError, KeyError) as e:  # a legacy result without a .mat, or a broken one
                vecs.append(np.full(NUM_COEFFS, np.nan, np.float32))
                status.append("unknown"), message.append(f"done by an earlier run; its .mat could not be read: {e}")
        writer.write_table(_table(pa, [k for k, _ in chunk], [s for _, s in chunk], status, message, vecs, True))


# ---------------------------------------------------------------- the driver


def _dataset(ray, keys: list[str], stems: list[str], todo: list[int], batch_size: int):
    """Rows {index, key, stem} of the photos to do, in blocks of whole one-process batches."""
    import pyarrow as pa

    per_block = batch_size * max(1, math.ceil(len(todo) / batch_size / MAX_BLOCKS))
    blocks = []
    for start in range(0, len(todo), per_block):
        idx = todo[start : start + per_block]
        blocks.append(pa.table({"index": pa.array(idx, pa.int64()), "key": [keys[i] for i in idx],
                                "stem": [stems[i] for i in idx]}))
    return ray.data.from_arrow(blocks)


def _quiet_ray_data(ray) -> None:
    from ray.util.debug import log_once

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver prints the command's own progress lines
    log_once("ray_data_progress_manager_disabled")  # ... and Ray need not warn that its bars are off
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False


def _drive(args, photos, stems, errors, model_label: str, method: str, t0: float) -> DatasetRun:
    """The run after set-up: Ray started (or joined), the actors mapped over the photos to do,
    failures.csv and coeffs.parquet written, the summary line and report. Raises SetupError
    when Ray cannot start or the pool does not fit the cluster."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jaxface import outputs
    from jaxface.coeffs import NUM_COEFFS
    from jaxface.reconstruct_cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SETUP, _finish, _todo

    out = Path(args.out).resolve()
    compile_cache = None if str(args.compile_cache).lower() == "none" else (
        Path(args.compile_cache).resolve() if args.compile_cache is not None else default_compile_cache())
    todo, skipped = _todo(stems, out, args.overwrite, args.texture)
    keys = [outputs.image_key(p) for p in photos]
    settings = RaySettings(out=str(out), bfm=_absolute(args.bfm), weights=_absolute(args.weights), method=args.method,
                           batch_size=args.batch_size, steps=args.steps, texture=args.texture,
                           texture_size=args.texture_size, rnet_dtype=args.rnet_dtype,
                           compile_cache=_absolute(compile_cache), env=_forwarded_env())
    name_rows = [outputs.Failure(str(photos[i]), "name", msg) for i, msg in sorted(errors.items())]
    run_rows: dict[int, outputs.Failure] = {}
    csv_path, parquet_path = out / "failures.csv", out / COEFFS_NAME
    csv_error: list[OSError] = []

    def save_failures() -> outputs.FailureLog:
        log = outputs.FailureLog(name_rows + [run_rows[i] for i in sorted(run_rows)])
        csv_error.clear()
        try:
            log.write(csv_path)
        except OSError as e:
            csv_error.append(e)
        return log

    ray = _import_ray()
    done = warned = processed = 0
    interrupted, stopped = False, None
    startup: dict[str, list[float]] = {}
    batches: list[tuple[float, int, str, bool]] = []  # (when it ended, photos, actor, its first)
    t_start = t_last = time.perf_counter()
    actors, cpus = _pool(ray, args.ray_actors, args.ray_cpus_per_actor)
    print(f"model: {model_label}; method: {method}; Ray: {actors} actors x {cpus:g} CPUs", file=sys.stderr)
    log = save_failures()  # also replaces the failures of an earlier run
    redo = {keys[i] for i in todo} | {keys[i] for i in errors}
    skipped_keys = {keys[i]: stems[i] for i, s in enumerate(stems) if s is not None} if skipped else {}
    for i in todo:
        skipped_keys.pop(keys[i], None)
    with outputs.atomic_output(parquet_path) as tmp:
        writer = pq.ParquetWriter(tmp, _schema(pa))
        try:
            _carry_over(pa, writer, parquet_path, redo, skipped_keys, out)
            if errors:
                idx = sorted(errors)
                writer.write_table(_table(pa, [keys[i] for i in idx], [None] * len(idx), ["name"] * len(idx),
                                          [errors[i] for i in idx], np.full((len(idx), NUM_COEFFS), np.nan), False))
            if todo:
                _quiet_ray_data(ray)
                ds = _dataset(ray, keys, stems, todo, args.batch_size).map_batches(
                    actor_class(settings), batch_size=args.batch_size,
                    batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus)
                t_start = time.perf_counter()
                for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    idx = [int(i) for i in b["index"]]
                    processed += len(idx)
                    for k, i in enumerate(idx):
                        stage = str(b["status"][k])
                        if stage != outputs.OK:
                            run_rows[i] = outputs.Failure(str(photos[i]), stage, str(b["message"][k]))
                        if stage in (outputs.OK, "warning"):
                            done += 1
                            warned += stage == "warning"
                        if b["first"][k]:
                            startup[str(b["actor"][k])] = [float(b["init_s"][k]), float(b["call_s"][k])]
                    for actor, end, first in {(str(a), float(e), bool(f)) for a, e, f in
                                              zip(b["actor"], b["end"], b["first"])}:
                        batches.append((end, int(np.sum(b["end"] == end)), actor, first))
                    writer.write_table(_table(pa, [keys[i] for i in idx], [stems[i] for i in idx], b["status"],
                                              b["message"], np.stack(list(b["coeffs"])), False))
                    log = save_failures()
                    t_last = time.perf_counter()
                    print(f"[{processed}/{len(todo)}] {done} reconstructed, {len(log) - warned} failed",
                          file=sys.stderr)
        except KeyboardInterrupt:
            interrupted = True  # the table keeps the rows so far: written below, as the block ends
        except Exception as e:  # an actor that could not start, a lost node: finished photos are kept
            stopped = e
        finally:
            writer.close()
    log = save_failures()
    seconds = round(time.perf_counter() - t0, 2)
    rate = round(processed / (t_last - t_start), 3) if processed and t_last > t_start else None
    steady = _steady_rate(batches)
    common = dict(done=done, warned=warned, failed=len(log) - warned, skipped=skipped, seconds=seconds,
                  images_per_s=rate, steady_images_per_s=steady, actors=actors, cpus_per_actor=cpus,
                  actor_startup=tuple((round(a, 2), round(b, 2)) for a, b in startup.values()),
                  failures_csv=csv_path, coeffs_parquet=parquet_path)
    if interrupted:
        print(f"jaxface reconstruct: interrupted; {done} of {len(todo)} photos reconstructed in this run "
              f"(kept in {out}), {skipped} by earlier runs; rerun the same command to resume", file=sys.stderr)
        return DatasetRun(exit_code=EXIT_INTERRUPTED, interrupted=True, **common)
    if stopped is not None:
        print(f"jaxface reconstruct: the Ray run stopped: {_first_line(stopped)}; {done} photos reconstructed "
              f"in this run are kept in {out}; rerun the same command to resume", file=sys.stderr)
        return DatasetRun(exit_code=EXIT_FAILED if done else EXIT_SETUP, interrupted=False, **common)
    code = _finish(out, log, done, warned, skipped, csv_error, csv_path,
                   {"command": "reconstruct", "model": model_label, "method": method, "photos": len(todo),
                    "skipped": skipped, "seconds": seconds, "ray": {"actors": actors, "cpus_per_actor": cpus},
                    "inputs": {s: k for s, k in zip(stems, keys) if s is not None}})
    return DatasetRun(exit_code=code, interrupted=False, **common)


def _steady_rate(batches) -> float | None:
    """Photos per second from when every actor had finished its first batch (compiling) to the
    last batch's end, by the actors' clocks (one machine's, or a cluster's synchronised ones)."""
    firsts = [end for end, _, _, first in batches if first]
    if not firsts:
        return None
    warm = max(firsts)
    later = [(end, n) for end, n, _, _ in batches if end > warm]
    if not later:
        return None
    return round(sum(n for _, n in later) / (max(end for end, _ in later) - warm), 3)


def _absolute(p) -> str | None:
    return None if p is None else str(Path(p).resolve())


def run_cli(args, photos, stems, errors, recon, model, textures, t0: float) -> int:
    """`jaxface reconstruct ... --ray`: the run after the command's set-up (Ray already started
    by it); returns the exit status."""
    from jaxface.reconstruct_cli import EXIT_SETUP, SetupError

    label, method = model.label, recon.method
    del recon, model, textures  # the actors build their own
    try:
        return _drive(args, photos, stems, errors, label, method, t0).exit_code
    except SetupError as e:
        print(f"jaxface reconstruct: {e}", file=sys.stderr)
        return EXIT_SETUP


def reconstruct_dataset(paths, out, *, address: str | None = None, actors: int | None = None,
                        cpus_per_actor: float | None = None, method: str = "auto", bfm=None, weights=None,
                        batch_size: int = 16, steps: int | None = None, overwrite: bool = False,
                        texture: bool = False, texture_size: int = 512, rnet_dtype: str | None = None,
                        compile_cache=None) -> DatasetRun:
    """`jaxface reconstruct PATHS -o OUT --ray [ADDRESS]` from Python (see the command's --help).

    address: None for a Ray instance on this machine (or the Ray this process already runs,
        which is left running), "HOST:PORT" or "auto" to join a cluster; OUT must then be a
        folder every node can write. compile_cache: folder of JAX's persistent compilation
        cache for the actors (default `default_compile_cache()`, "none" for none).
    Returns a DatasetRun; raises ValueError (bad settings or set-up; the message says what to
    change) and KeyboardInterrupt after saving what finished.
    """
    from jaxface.fileio import remove_stale_temps
    from jaxface.reconstruct_cli import LOCAL_RAY, SetupError, _prepare_out_dir, _set_up

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    args = argparse.Namespace(
        paths=[Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)], out=Path(out),
        bfm=bfm, weights=weights, method=method, batch_size=batch_size, steps=steps, overwrite=overwrite,
        texture=texture, texture_size=texture_size, rnet_dtype=rnet_dtype, ray=address or LOCAL_RAY, ray_actors=actors,
        ray_cpus_per_actor=cpus_per_actor, compile_cache=compile_cache)
    t0 = time.perf_counter()
    started = False
    try:
        started = start_ray(args.ray)
        _prepare_out_dir(args.out)
        remove_stale_temps(args.out)
        photos, stems, errors, recon, model, _ = _set_up(args, args.out)
        label, method = model.label, recon.method
        del recon, model
        run = _drive(args, photos, stems, errors, label, method, t0)
    except SetupError as e:
        raise ValueError(str(e)) from e
    finally:
        stop_ray(started)
    if run.interrupted:
        raise KeyboardInterrupt
    return run
