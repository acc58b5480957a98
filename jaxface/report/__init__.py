"""OUT/index.html: a browsable report of a run, with a 3D viewer (static files, opens from disk).

`jaxface reconstruct` and `jaxface demo` call `report_after_run` at the end of a run;
`jaxface report OUT` (`write_report`) rebuilds the page for an existing output folder.

Layout written into OUT:
    index.html                 summary, viewer, one table row per photo
    run.json                   the run's record (`jaxface reconstruct`: model, method, times, inputs)
    report/thumbs/NAME.in.jpg, NAME.overlay.jpg      thumbnails (at most 160 px)
    report/mesh/NAME.js        the mesh, loaded when its photo is chosen
    report/topology/HASH.js    triangles shared by the meshes of one model
    report/static/             report.js, report.css, three.js (vendored, MIT) and its licence
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxface.coeffs import Coeffs
from jaxface.outputs import load_mat
from jaxface.report.assets import (
    REPORT_DIR,
    asset_names,
    copy_static,
    fresh,
    mesh_payload,
    prune,
    write_mesh,
    write_thumbnail,
)
from jaxface.report.collect import Photo, read_run, record_run, scan
from jaxface.report.page import Row, href, render_page, write_page

__all__ = ["Photo", "Row", "Written", "build_row", "mesh_payload", "render_page", "report_after_run",
           "report_cli", "write_page", "write_report"]


class Written(NamedTuple):
    """What `write_report` wrote: the page and its row counts."""

    path: Path
    photos: int
    reconstructed: int
    failed: int


def build_row(out_dir: Path, photo: Photo, base: str) -> Row:
    """The page row of `photo`, writing its thumbnails and mesh script under OUT/report/ when
    missing or older than their sources. Unreadable result files become notes on the row."""
    rep = out_dir / REPORT_DIR
    notes, angles, crop = [], None, None
    if photo.mat is not None:
        try:
            m = load_mat(photo.mat)
            angles = tuple(float(a) for a in np.rad2deg(np.asarray(Coeffs.from_vector(m["coeff"][0]).angle)))
            crop = m.get("cropped_img")
        except ValueError as e:
            notes.append(f"{photo.mat.name} is not readable: {e}")
    thumb = rep / "thumbs" / f"{base}.in.jpg"
    src = photo.source if photo.source is not None else (photo.mat if crop is not None else None)
    if src is not None and not fresh(thumb, src):
        image = photo.source if photo.source is not None else np.clip(crop, 0, 255).astype(np.uint8)
        if not write_thumbnail(thumb, image):
            notes.append(f"no thumbnail: {src} cannot be read as an image")
    overlay_thumb = rep / "thumbs" / f"{base}.overlay.jpg"
    if photo.overlay is not None and not fresh(overlay_thumb, photo.overlay) and \
            not write_thumbnail(overlay_thumb, photo.overlay):
        notes.append(f"{photo.overlay.name} cannot be read as an image")
    mesh = rep / "mesh" / f"{base}.js"
    if photo.obj is not None and not fresh(mesh, photo.obj):
        try:
            write_mesh(mesh, rep / "topology", photo.name, photo.obj)
        except ValueError as e:
            mesh.unlink(missing_ok=True)
            notes.append(f"no 3D view: {e}")
    links = [(kind, getattr(photo, kind)) for kind in ("mat", "obj")]
    links += [("overlay", photo.overlay), ("photo", photo.source)]
    return Row(
        name=photo.name,
        failed=photo.failed,
        reason=f"at {photo.stage}: {photo.message}" if photo.failed else "",
        angles=angles,
        thumb=href(thumb, out_dir) if thumb.is_file() else None,
        overlay_thumb=href(overlay_thumb, out_dir) if overlay_thumb.is_file() else None,
        overlay=href(photo.overlay, out_dir) if photo.overlay is not None else None,
        mesh=href(mesh, out_dir) if photo.obj is not None and mesh.is_file() else None,
        links=tuple((label, href(p, out_dir)) for label, p in links if p is not None),
        notes=tuple(notes),
        extra=photo.extra,
        anchor=f"photo-{base}",
    )


def write_report(out_dir, run: dict | None = None) -> Written:
    """Build OUT/index.html (and its files under OUT/report/) from the results in `out_dir`.

    run: the record of the run that just finished (`jaxface reconstruct` passes model, method,
    seconds, photos, skipped and inputs: result name -> photo path); saved to OUT/run.json,
    merged with an earlier record. None: read OUT/run.json or the demo's summary.json.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"output folder {out_dir} not found; pass the -o folder of a "
                                "`jaxface reconstruct` or `jaxface demo` run")
    run = record_run(out_dir, run) if run is not None else read_run(out_dir)
    photos = scan(out_dir, run)
    if not photos:
        raise ValueError(f"{out_dir} holds no results (NAME.mat, NAME.obj) and no failures in failures.csv; "
                         f"run `jaxface reconstruct PHOTOS -o {out_dir}` first")
    bases = asset_names([p.name for p in photos])
    rows = [build_row(out_dir, p, bases[p.name])
            for p in tqdm(photos, desc="report", unit="photo", disable=None if len(photos) > 50 else True)]
    rep = out_dir / REPORT_DIR
    prune(rep / "thumbs", {f"{b}.{k}.jpg" for b in bases.values() for k in ("in", "overlay")})
    prune(rep / "mesh", {f"{b}.js" for b in bases.values()})
    copy_static(rep)
    path = write_page(out_dir / "index.html", rows, run, f"jaxface results: {out_dir.resolve().name}")
    failed = sum(r.failed for r in rows)
    return Written(path, len(rows), len(rows) - failed, failed)


def report_after_run(out_dir, run: dict | None = None, quiet: bool = False) -> Written | None:
    """`write_report` at the end of a run: a problem with the page is reported, never fatal."""
    try:
        written = write_report(out_dir, run)
    except (OSError, ValueError) as e:
        print(f"jaxface: the HTML report was not written: {e}. Fix that, then run `jaxface report {out_dir}`.",
              file=sys.stderr)
        return None
    if not quiet:
        print(f"report: {written.path} (open it in a browser)")
    return written


def report_cli(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface report",
        description="(Re)build OUT/index.html for the output folder of `jaxface reconstruct` or `jaxface demo`: "
        "a summary, one row per photo (thumbnail, overlay, status, pose, files) and a 3D viewer. Static files "
        "only: open index.html from disk, no server needed. Thumbnails and mesh files newer than their "
        "results are kept.",
    )
    p.add_argument("out", type=Path, help="output folder of a run")
    args = p.parse_args(argv)
    w = write_report(args.out)
    print(f"wrote {w.path}: {w.photos} photos, {w.reconstructed} reconstructed, {w.failed} failed")
    return 0
