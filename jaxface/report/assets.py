"""Files the page loads, all under OUT/report/: thumbnails, one script per mesh, shared
topologies, and the static viewer (report.js, report.css, vendored three.js).

Meshes travel as `<script>`s because the page opens from disk (`file://`), where browsers
refuse `fetch` of local files; each calls `jaxfaceMesh({...})` or `jaxfaceTopology({...})`.
Positions are quantised to 16 bits over the mesh's bounding box (error at most half a step,
box / 131070: micrometres for a face) and colours to 8 bits; the triangles of a run are the
same for every face, so they are written once per topology, named by their hash.
Every writer is atomic and skips outputs newer than their source, so rebuilding a report
after a resumed run only converts the new photos.
"""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np

from jaxface.fileio import write_bytes_atomic, write_text_atomic
from jaxface.outputs import load_obj, sanitize_stem

REPORT_DIR = "report"       # everything the page needs, beside index.html
THUMB_PX = 160              # longer side of a thumbnail (shown at 80 CSS px, sharp at 2x)
MAX_PHOTO_BYTES = 256 << 20  # photos larger than this get no thumbnail (read before decoding)
STATIC = ("report.js", "report.css", "three/three.cjs", "three/LICENSE", "three/README.md")
QUANT = 65535               # 16-bit position steps


def asset_names(names: list[str]) -> dict[str, str]:
    """A distinct file-name-safe base for each row name (result stems are safe already)."""
    out, used = {}, set()
    for name in names:
        try:
            base = sanitize_stem(name)
        except ValueError:
            base = "photo"
        cand, k = base, 1
        while cand.casefold() in used:  # case-insensitive file systems
            k += 1
            cand = f"{base}_{k}"
        used.add(cand.casefold())
        out[name] = cand
    return out


def fresh(dst: Path, src: Path | None) -> bool:
    """Whether `dst` exists and is at least as new as `src` (None: any existing dst is fresh)."""
    if not dst.is_file():
        return False
    return src is None or dst.stat().st_mtime_ns >= src.stat().st_mtime_ns


def write_thumbnail(dst: Path, image: np.ndarray | Path) -> bool:
    """Write a JPEG at most THUMB_PX on its longer side from an RGB u8[H, W, 3] array or a photo
    file. False when the photo cannot be read (missing, too large, not an image)."""
    import cv2

    if isinstance(image, Path):
        if not image.is_file() or image.stat().st_size > MAX_PHOTO_BYTES:
            return False
        # Photo files are decoded by OpenCV (its own pixel-count limit applies); a reduced
        # decode is enough for a thumbnail and much faster on large JPEGs.
        flag = cv2.IMREAD_REDUCED_COLOR_4 if image.stat().st_size > 2 << 20 else cv2.IMREAD_COLOR
        bgr = cv2.imread(str(image), flag)
        if bgr is None or bgr.size == 0:
            return False
    else:
        bgr = np.ascontiguousarray(np.asarray(image, np.uint8)[..., ::-1])
    h, w = bgr.shape[:2]
    s = THUMB_PX / max(h, w)
    if s < 1:
        bgr = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return False
    write_bytes_atomic(dst, buf.tobytes())
    return True


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(a.tobytes()).decode("ascii")


def mesh_payload(name: str, vertices: np.ndarray, colors: np.ndarray | None, tris: np.ndarray):
    """(mesh record, topology record) for the viewer.

    vertices: f32[V, 3]   colors: f32[V, 3] 0-1 or None (grey)   tris: i32[T, 3] zero-based
    mesh: {name, vertices, lo[3], step[3], position: base64 <u2[V, 3], color: base64 u8[V, 3], topology}
    topology: {id, vertices, triangles, type: "u16"|"u32", index: base64 of the indices}
    A position is lo + q * step (per axis).
    """
    v = np.asarray(vertices, np.float64)
    n = len(v)
    lo = v.min(axis=0) if n else np.zeros(3)
    step = ((v.max(axis=0) - lo) / QUANT) if n else np.zeros(3)
    q = np.rint((v - lo) / np.where(step > 0, step, 1)).astype("<u2")
    c = np.full((n, 3), 0.7) if colors is None else np.clip(np.asarray(colors, np.float64), 0, 1)
    kind = "u16" if n <= 1 << 16 else "u32"
    index = np.asarray(tris).astype("<u2" if kind == "u16" else "<u4")
    topo_id = hashlib.sha256(f"{n}:{kind}:".encode() + index.tobytes()).hexdigest()[:20]
    mesh = {"name": name, "vertices": n, "lo": lo.tolist(), "step": step.tolist(), "position": _b64(q),
            "color": _b64(np.rint(c * 255).astype(np.uint8)), "topology": topo_id}
    topo = {"id": topo_id, "vertices": n, "triangles": len(index), "type": kind, "index": _b64(index)}
    return mesh, topo


def script(function: str, record: dict) -> str:
    """JavaScript that passes `record` to `function` (JSON escapes every character that could
    end the script or a string)."""
    return f"{function}({json.dumps(record, separators=(',', ':'))});\n"


def write_mesh(dst: Path, topology_dir: Path, name: str, obj: Path) -> None:
    """Write the viewer's script for the mesh in `obj` (and its topology when new).
    ValueError (naming the file) when the .obj cannot be read."""
    vertices, colors, tris = load_obj(obj)
    if not len(vertices) or not len(tris):
        raise ValueError(f"{obj} holds no triangles")
    mesh, topo = mesh_payload(name, vertices, colors, tris)
    topo_path = topology_dir / f"{topo['id']}.js"
    if not topo_path.is_file():
        write_text_atomic(topo_path, script("jaxfaceTopology", topo))
    write_text_atomic(dst, script("jaxfaceMesh", mesh))


def copy_static(report_dir: Path) -> None:
    """Copy the viewer's static files into `report_dir` (skipped when identical)."""
    root = resources.files("jaxface.report") / "static"
    for rel in STATIC:
        data = (root / rel).read_bytes()
        dst = report_dir / "static" / rel
        if dst.is_file() and dst.stat().st_size == len(data) and dst.read_bytes() == data:
            continue
        write_bytes_atomic(dst, data)


def prune(folder: Path, keep: set[str]) -> None:
    """Delete files in `folder` (one of the report's own) that no row refers to any more."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and not p.is_symlink() and p.name not in keep and not p.name.startswith("."):
                p.unlink()
