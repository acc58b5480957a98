"""The HTML report with many photos; prints ONE JSON line.

  a. building: `write_report` on an output folder of N results of BFM size (35,709-vertex
     .obj from the synthetic model), cold (thumbnails and mesh scripts made) and again with
     nothing changed (everything kept), seconds per photo and their ratio;
  b. loading: index.html of 1,000 rows against one of 10 rows (the reference) in headless
     Chromium (Debian's, through Playwright): DOMContentLoaded and load, medians of 3, and how
     many of the 2,000 thumbnails are fetched before scrolling (lazy loading).

    .venv/bin/python benchmarks/report.py [--photos 20] [--rows 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxface.outputs import save_mat, save_obj, save_png
from jaxface.report import Row, render_page, write_report
from jaxface.report.assets import copy_static

CHROMIUM = os.environ.get("JAXFACE_CHROMIUM", "/usr/bin/chromium")


def make_results(out: Path, n: int) -> None:
    from jaxface.model.synthetic import synthetic_face_model

    model = synthetic_face_model()
    v, t = np.asarray(model.mean_shape), np.asarray(model.tris)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (480, 640, 3), np.uint8)
    crop = photo[:224, :224]
    for i in range(n):
        c = rng.uniform(0, 1, v.shape).astype(np.float32)
        save_mat(out / f"p{i:04d}.mat", coeffs=np.zeros(257, np.float32), cropped_img=crop, recon_img=crop,
                 face_shape=v, face_texture=c, face_color=c, lm_68p=np.zeros((68, 2)), lm_5p=np.zeros((5, 2)))
        save_obj(out / f"p{i:04d}.obj", v, c, t)
        save_png(out / f"p{i:04d}_overlay.png", photo)


def page_of(folder: Path, rows: int) -> str:
    thumbs = folder / "report" / "thumbs"
    thumbs.mkdir(parents=True)
    import cv2

    jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (80, 80, 3), np.uint8))[1].tobytes()
    out = []
    for i in range(rows):
        for kind in ("in", "overlay"):
            (thumbs / f"p{i:04d}.{kind}.jpg").write_bytes(jpeg)
        out.append(Row(name=f"p{i:04d}", angles=(1.0, 2.0, 3.0), thumb=f"report/thumbs/p{i:04d}.in.jpg",
                       overlay_thumb=f"report/thumbs/p{i:04d}.overlay.jpg", mesh=f"report/mesh/p{i:04d}.js",
                       links=(("mat", f"p{i:04d}.mat"), ("obj", f"p{i:04d}.obj")), anchor=f"photo-p{i:04d}"))
    (folder / "index.html").write_text(render_page(out, {"model": "m", "method": "fit"}, f"{rows} rows"))
    copy_static(folder / "report")
    return (folder / "index.html").as_uri()


def load_times(browser, url: str, repeats: int = 3) -> dict:
    dcl, load, fetched = [], [], 0
    for _ in range(repeats):
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url, wait_until="load")
        nav = page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                            " return [n.domContentLoadedEventEnd, n.loadEventEnd]; })()")
        fetched = page.evaluate("[...document.querySelectorAll('img.thumb')].filter(i => i.complete).length")
        dcl.append(nav[0])
        load.append(nav[1])
        page.close()
    return {"dcl_ms": round(statistics.median(dcl)), "load_ms": round(statistics.median(load)), "fetched": fetched}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=20, help="results of BFM size for the build timing")
    p.add_argument("--rows", type=int, default=1000, help="rows of the page for the load timing")
    args = p.parse_args()
    result = {"photos": args.photos, "rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        make_results(out, args.photos)
        t0 = time.perf_counter()
        write_report(out)
        cold = (time.perf_counter() - t0) / args.photos
        t0 = time.perf_counter()
        write_report(out)
        warm = (time.perf_counter() - t0) / args.photos
        result.update(build_s_per_photo=round(cold, 4), rebuild_s_per_photo=round(warm, 4),
                      build_over_rebuild=round(cold / warm, 1),
                      mesh_script_kb=round((out / "report" / "mesh" / "p0000.js").stat().st_size / 1024))
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            ref = load_times(browser, page_of(Path(tmp) / "ref", 10))
            big = load_times(browser, page_of(Path(tmp) / "big", args.rows))
            browser.close()
    result.update({f"ref10_{k}": v for k, v in ref.items()})
    result.update({f"rows_{k}": v for k, v in big.items()})
    result["load_over_ref10"] = round(big["load_ms"] / max(ref["load_ms"], 1), 2)
    result["targets"] = {
        "load_1000_rows_under_1s": big["load_ms"] < 1000,
        "thumbnails_load_lazily": big["fetched"] < 0.1 * 2 * args.rows,
        "rebuild_keeps_converted_files": warm < cold / 10,
    }
    result["load_avg_1min"] = round(os.getloadavg()[0], 2)  # other jobs on the machine skew all times
    print(json.dumps(result))


if __name__ == "__main__":
    main()
