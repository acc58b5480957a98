"""The HTML report without a browser: rows, summary, escaping, mesh scripts, thumbnails, CLI."""

from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
from report_fixtures import ANGLES, CROP_RGB, HOSTILE, PHOTO_RGB, make_output_folder

from jaxface.cli import main
from jaxface.outputs import load_obj, save_obj
from jaxface.report import mesh_payload, write_report
from jaxface.report.assets import QUANT, THUMB_PX, asset_names


class Cells(HTMLParser):
    """The text of each body row's cells, and every tag's attributes."""

    def __init__(self):
        super().__init__()
        self.rows, self.tags, self._in_body, self._cell = [], [], False, None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse(path) -> Cells:
    p = Cells()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def read_script(path, function):
    text = path.read_text()
    assert text.startswith(f"{function}(") and text.endswith(");\n")
    return json.loads(text[len(function) + 1 : -3])


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = make_output_folder(tmp_path_factory.mktemp("report"))
    written = write_report(out)
    assert (written.photos, written.reconstructed, written.failed) == (3, 2, 1)
    return out


def test_one_row_per_photo_with_status_angles_and_links(out):
    page = parse(out / "index.html")
    names = [r[1].removeprefix("no image") for r in page.rows]
    assert names == ["broken", "grid", "quad"]  # sorted; the thumbnail cell's text is the name
    broken, _, quad = page.rows
    assert broken[3] == f"failed at load: {HOSTILE}"  # reason from failures.csv, as text
    assert quad[3] == "ok"
    assert quad[4:7] == [f"{np.rad2deg(a):.1f}" for a in ANGLES] == ["5.7", "-11.5", "17.2"]
    assert broken[4:7] == ["–"] * 3
    links = {a["href"] for t, a in page.tags if t == "a"}
    assert {"quad.mat", "quad_mesh.obj", "quad_overlay.png", "failures.csv"} <= links
    assert os.path.relpath(out.parent / "photos" / "quad.png", out) in links
    # Only reconstructed photos open the viewer, each with its own mesh script.
    buttons = {a["data-name"]: a["data-mesh"] for t, a in page.tags if t == "button" and "data-mesh" in a}
    assert buttons == {"grid": "report/mesh/grid.js", "quad": "report/mesh/quad.js"}
    assert all("alt" in a for t, a in page.tags if t == "img") and all(
        a.get("loading") == "lazy" for t, a in page.tags if t == "img")


def test_summary_and_escaping(out):
    html = (out / "index.html").read_text()
    assert HOSTILE not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;/td&gt;" in html
    summary = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", html))
    assert summary["Photos"] == "3" and summary["Reconstructed"] == "2"
    assert summary["Model"] == "test model" and summary["Method"] == "fit"
    assert summary["Time of the last run"] == "1.5 s (0.50 s per photo)"


def test_mesh_script_decodes_to_the_obj(out):
    v, c, t = load_obj(out / "grid_mesh.obj")
    mesh = read_script(out / "report" / "mesh" / "grid.js", "jaxfaceMesh")
    topo = read_script(out / "report" / "topology" / f"{mesh['topology']}.js", "jaxfaceTopology")
    q = np.frombuffer(base64.b64decode(mesh["position"]), "<u2").reshape(-1, 3)
    pos = np.asarray(mesh["lo"]) + q * np.asarray(mesh["step"])
    # 16-bit steps over the bounding box (2 units): off by at most half a step.
    np.testing.assert_allclose(pos, v, rtol=0, atol=2 / QUANT / 2 + 1e-6)
    assert np.abs(pos - v).max() > 0  # really quantised (the grid does not fall on the steps)
    rgb = np.frombuffer(base64.b64decode(mesh["color"]), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(rgb, np.rint(c.astype(np.float64) * 255))
    assert topo["type"] == "u16" and topo["vertices"] == len(v) == mesh["vertices"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(topo["index"]), "<u2").reshape(-1, 3), t)
    # The quad shares nothing with the grid: its own topology file.
    assert read_script(out / "report" / "mesh" / "quad.js", "jaxfaceMesh")["topology"] != mesh["topology"]


def test_large_meshes_use_32_bit_indices_and_flat_axes():
    v = np.zeros((70_000, 3), np.float32)
    v[:, 0] = np.arange(70_000)  # y and z flat: step 0, decoded exactly
    tris = np.array([[0, 1, 69_999]], np.int32)
    mesh, topo = mesh_payload("big", v, None, tris)
    assert topo["type"] == "u32" and mesh["step"][1:] == [0.0, 0.0]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(topo["index"]), "<u4"), [0, 1, 69_999])
    rgb = np.frombuffer(base64.b64decode(mesh["color"]), np.uint8)
    assert (rgb == 178).all()  # no colours in the .obj: grey 0.7


def test_thumbnails_from_photo_and_from_mat_crop(out):
    thumbs = out / "report" / "thumbs"
    quad = cv2.imread(str(thumbs / "quad.in.jpg"))[:, :, ::-1]
    assert quad.shape == (THUMB_PX * 3 // 4, THUMB_PX, 3)  # 400x300 photo, longer side 160
    np.testing.assert_allclose(quad.reshape(-1, 3).mean(0), PHOTO_RGB, atol=3)
    grid = cv2.imread(str(thumbs / "grid.in.jpg"))[:, :, ::-1]  # no photo recorded: the .mat's crop
    assert grid.shape == (THUMB_PX, THUMB_PX, 3)
    np.testing.assert_allclose(grid.reshape(-1, 3).mean(0), CROP_RGB, atol=3)
    overlay = cv2.imread(str(thumbs / "quad.overlay.jpg"), cv2.IMREAD_GRAYSCALE)
    assert overlay.shape == (100, 120) and overlay[:, :55].max() < 10 and overlay[:, 65:].min() > 245


def test_rebuild_keeps_fresh_files_and_follows_changes(tmp_path):
    out = make_output_folder(tmp_path)
    write_report(out)
    mesh = out / "report" / "mesh" / "quad.js"
    stamp = {p: p.stat().st_mtime_ns for p in (out / "report").rglob("*") if p.is_file()}
    write_report(out)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    # A redone result is converted again; a removed one leaves the page and its files.
    v, c, t = load_obj(out / "quad_mesh.obj")
    assert v[:, 0].min() == -1.0
    v[v[:, 0] == -1.0, 0] = -3.0
    save_obj(out / "quad_mesh.obj", v, c, t)
    os.utime(out / "quad_mesh.obj", ns=(stamp[mesh] + 10**9,) * 2)
    for suffix in (".mat", "_mesh.obj", "_overlay.png"):
        (out / f"grid{suffix}").unlink()
    assert write_report(out).photos == 2
    assert read_script(mesh, "jaxfaceMesh")["lo"][0] == -3.0
    assert not (out / "report" / "mesh" / "grid.js").exists()
    assert not (out / "report" / "thumbs" / "grid.in.jpg").exists()


def test_unreadable_results_become_notes(tmp_path):
    out = make_output_folder(tmp_path)
    (out / "grid_mesh.obj").write_text("v 1 2\nf 1 2 3\n")
    (out / "quad.mat").write_bytes(b"not a mat file")
    write_report(out)
    rows = {r[1]: r for r in parse(out / "index.html").rows}
    assert "no 3D view" in rows["grid"][3] and "every 'v' line must hold 3 or 6 numbers" in rows["grid"][3]
    assert "quad.mat is not readable" in rows["quad"][3] and rows["quad"][4] == "–"
    buttons = [a["data-name"] for t, a in parse(out / "index.html").tags if t == "button" and "data-mesh" in a]
    assert buttons == ["quad"]


def test_asset_names_are_distinct_and_safe():
    names = asset_names(["a b", "a_b", "A_b", "x"])
    assert names == {"a b": "a_b", "a_b": "a_b_2", "A_b": "A_b_3", "x": "x"}


def test_cli_report_and_its_errors(tmp_path, capsys):
    out = make_output_folder(tmp_path)
    (out / "index.html").unlink(missing_ok=True)
    assert main(["report", str(out)]) == 0
    assert "3 photos, 2 reconstructed, 1 failed" in capsys.readouterr().out
    assert (out / "index.html").is_file() and (out / "report" / "static" / "three" / "LICENSE").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "output folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert "holds no results" in capsys.readouterr().err
    (out / "run.json").write_text('{"model": 3}')
    assert main(["report", str(out)]) == 1
    assert "run.json: field 'model' is int; expected str" in capsys.readouterr().err
