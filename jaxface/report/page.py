"""index.html: a summary, the 3D viewer and one table row per photo (static, opens from disk).

Every name, message and path in the page comes from files users bring or tools wrote, so all
text is HTML-escaped and every link is percent-encoded. Thumbnails load lazily with fixed
sizes (no layout shift), so a page of 1,000 rows fetches only the images near the screen.
"""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from jaxface.fileio import write_text_atomic

ANGLE_NAMES = ("pitch", "yaw", "roll")  # rotations about x, y, z (the `angle` coefficients)


@dataclass(frozen=True)
class Row:
    """One photo on the page; hrefs are relative to index.html (None: not available).

    angles: (pitch, yaw, roll) in degrees, or None.  links: (label, href) of the result files.
    notes: problems with this photo's files (shown in the status cell).
    extra: (column, value) numbers of the run (the demo's errors against the true faces).
    """

    name: str
    failed: bool = False
    reason: str = ""
    angles: tuple[float, float, float] | None = None
    thumb: str | None = None
    overlay_thumb: str | None = None
    overlay: str | None = None
    mesh: str | None = None
    links: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    extra: tuple[tuple[str, float], ...] = ()
    anchor: str = ""


def href(path: Path, base: Path) -> str:
    """`path` as a percent-encoded link relative to the folder `base`."""
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive (Windows)
        return Path(path).resolve().as_uri()
    return quote(Path(rel).as_posix())


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _seconds(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{_e(k)} {float(v):.1f} s" for k, v in value.items() if isinstance(v, (int, float)))
    return f"{float(value):.1f} s"


def summary_items(rows: list[Row], run: dict) -> list[tuple[str, str]]:
    """(term, HTML) pairs of the summary: counts from the rows, the rest from the run record."""
    failed = sum(r.failed for r in rows)
    items = [("Photos", str(len(rows))), ("Reconstructed", str(len(rows) - failed))]
    items.append(("Failed", f'{failed} (<a href="failures.csv">failures.csv</a>)' if failed else "0"))
    if isinstance(run.get("skipped"), int) and run["skipped"]:
        items.append(("Skipped in the last run", f"{run['skipped']} (results already there)"))
    items.append(("Model", _e(run.get("model", "not recorded"))))
    items.append(("Method", _e(run.get("method", "not recorded"))))
    if "seconds" in run:
        total = run["seconds"].get("total") if isinstance(run["seconds"], dict) else run["seconds"]
        done = run.get("photos", run.get("images"))
        per = (f" ({float(total) / done:.2f} s per photo)"
               if isinstance(total, (int, float)) and isinstance(done, int) and done > 0 else "")
        items.append(("Time of the last run", _seconds(run["seconds"]) + per))
    if "command" in run:
        items.append(("Written by", f"<code>jaxface {_e(run['command'])}</code>"))
    items.append(("Page built", _e(time.strftime("%Y-%m-%d %H:%M:%S"))))
    return items


def _img(src: str | None, alt: str, cls: str) -> str:
    if src is None:
        return f'<span class="{cls} none">no image</span>'
    return f'<img class="{cls}" src="{_e(src)}" alt="{_e(alt)}" width="80" height="80" loading="lazy" decoding="async">'


def _row(i: int, r: Row, extra_cols: list[str]) -> str:
    name = _e(r.name)
    if r.mesh is not None:
        photo = (f'<button type="button" class="view" data-name="{name}" data-mesh="{_e(r.mesh)}" '
                 f'aria-label="Show the 3D mesh of {name}">{_img(r.thumb, "", "thumb")}</button>')
    else:
        photo = _img(r.thumb, f"input photo {r.name}", "thumb")
    overlay = _img(r.overlay_thumb, f"overlay of {r.name}", "thumb")
    if r.overlay is not None:
        overlay = f'<a href="{_e(r.overlay)}">{overlay}</a>'
    status = f'<strong>failed</strong> {_e(r.reason)}' if r.failed else "ok"
    status += "".join(f'<div class="note">{_e(n)}</div>' for n in r.notes)
    angles = (f'<td class="num">{a:.1f}</td>' for a in r.angles) if r.angles else ('<td class="num">–</td>',) * 3
    values = dict(r.extra)
    extras = "".join(f'<td class="num">{values[c]:g}</td>' if c in values else "<td></td>" for c in extra_cols)
    links = " ".join(f'<a href="{_e(h)}">{_e(label)}</a>' for label, h in r.links)
    return (f'<tr id="{_e(r.anchor)}" class="{"failed" if r.failed else "ok"}"><td class="num">{i}</td>'
            f'<td>{photo}<div class="name">{name}</div></td><td>{overlay}</td><td class="status">{status}</td>'
            f'{"".join(angles)}{extras}<td class="files">{links}</td></tr>')


def render_page(rows: list[Row], run: dict, title: str) -> str:
    """The HTML of index.html (static files under report/static/)."""
    extra_cols = list(dict.fromkeys(k for r in rows for k, _ in r.extra))
    summary = "".join(f"<dt>{t}</dt><dd>{d}</dd>" for t, d in summary_items(rows, run))
    warn = ""
    if "SYNTHETIC" in str(run.get("model", "")).upper():
        warn = ('<p class="warn">Made with the SYNTHETIC morphable model: these are not Basel Face Model '
                "reconstructions.</p>")
    heads = ['<th scope="col" class="num">#</th>', '<th scope="col">Photo</th>', '<th scope="col">Overlay</th>',
             '<th scope="col">Status</th>']
    heads += [f'<th scope="col" class="num"><abbr title="rotation about {ax}, degrees">{n.capitalize()}</abbr>°</th>'
              for n, ax in zip(ANGLE_NAMES, "xyz")]
    heads += [f'<th scope="col" class="num">{_e(c.replace("_", " "))}</th>' for c in extra_cols]
    heads.append('<th scope="col">Files</th>')
    body = "\n".join(_row(i + 1, r, extra_cols) for i, r in enumerate(rows))
    caption = f"{len(rows)} photos. Choose a photo to show its mesh in the 3D viewer."
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<link rel="stylesheet" href="report/static/report.css">
<script src="report/static/report.js" defer></script>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
{warn}
<dl class="summary">{summary}</dl>
</header>
<main>
<section id="viewer" aria-labelledby="viewer-title" data-state="empty"
 data-three="report/static/three/three.cjs" data-topology="report/topology/">
<h2 id="viewer-title">3D viewer</h2>
<p id="viewer-status" role="status" aria-live="polite">Choose a photo in the table to show its mesh.</p>
<div id="viewer-canvas"></div>
<div class="controls">
<button type="button" id="viewer-reset" disabled>Reset view</button>
<label><input type="checkbox" id="viewer-shade" disabled> Shade the geometry</label>
</div>
<p class="hint">Drag to orbit, wheel to zoom; on the focused view, arrow keys rotate, + and - zoom, 0 resets.
The vertex colours are the reconstruction's lit colours.</p>
</section>
<div class="table-wrap">
<table id="results">
<caption>{_e(caption)}</caption>
<thead><tr>{"".join(heads)}</tr></thead>
<tbody>
{body}
</tbody>
</table>
</div>
</main>
</body>
</html>
"""


def write_page(path: Path, rows: list[Row], run: dict, title: str) -> Path:
    """Write index.html atomically."""
    write_text_atomic(path, render_page(rows, run, title))
    return path
