"""Bad input and faults (issue 16): every case fails clearly or warns, never loses a result,
never prints a traceback, and exits with the documented status.

CLI cases run the real entry point in subprocesses: one process runs `jaxface.cli.main` on
several argument lists (jax is imported once), another is interrupted with SIGINT; both
use the synthetic model built in-process first. Their photos fail before fitting or are
interrupted before it ends, so no fit compiles to the end; results of photos that succeed
(distinct names for colliding photos, exit 0 and 1, warning rows) are checked in
test_reconstruct, which compiles the fit anyway.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from jaxface import align
from jaxface.fileio import atomic_path, is_temp_file, remove_stale_temps
from jaxface.inputs import as_rgb_u8, landmark_warnings
from jaxface.outputs import (FailureLog, assign_stems, image_key, outputs_exist, read_failures_csv,
                             read_manifest, write_manifest)
from jaxface.reconstruct import ReconstructConfig, Reconstructor

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "images"
PHOTOS = sorted(DATA.glob("*.jpg"))


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def recon(synthetic_model):
    return Reconstructor(model=synthetic_model, config=ReconstructConfig(method="fit"), quiet=True)


# ----------------------------------------------------------------------------- 1: result names

def test_colliding_photos_get_distinct_names_kept_across_runs(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    names = ["a b.jpg", "a_b.jpg", "x.jpg", "x.png", "X.bmp", "x_2.jpg", "!!!.jpg"]
    photos = [one / n for n in names] + [two / "x.jpg"]
    stems, errors = assign_stems(photos, {})
    # a clean name keeps itself; look-alikes get the first free number, case-insensitively
    assert stems == ["a_b_2", "a_b", "x", "x_3", "X_4", "x_2", None, "x_5"]
    assert list(errors) == [6] and "'!!!' leaves no usable characters" in errors[6]
    manifest = {image_key(p): s for p, s in zip(photos, stems) if s}
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    # A later run keeps every recorded name; a new look-alike never takes one of them.
    later, _ = assign_stems([two / "x.jpg", one / "a-b.jpg", one / "x.png"], read_manifest(tmp_path))
    assert later == ["x_5", "a-b", "x_3"]
    clash, _ = assign_stems([tmp_path / "three" / "x.jpg"], read_manifest(tmp_path))
    assert clash == ["x_6"]


@pytest.mark.parametrize("text, match", [
    ("image,stem\n/a.jpg,a\n/b.jpg,A\n", "repeated"),
    ("image,stem\n/a.jpg,../a\n", "not a safe name"),
    ("photo,name\n", "not a jaxface manifest"),
])
def test_bad_manifest_is_named(tmp_path, text, match):
    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(ValueError, match=f"manifest.csv.*{match}|{match}.*manifest"):
        read_manifest(tmp_path)


# ----------------------------------------------------------------------------- 2, 10, 12: reconstruct() inputs

def test_float_0_255_image_is_refused_not_whitened(recon):
    img = np.full((64, 64, 3), 128.0, np.float32)  # a float image in 0-255
    lm = np.array([[20, 25], [44, 25], [32, 35], [23, 46], [41, 46]], np.float32)
    result = recon([img], [lm])
    assert not result.ok[0] and "float images must be 0-1, found values up to 128.0" in result.status[0]
    np.testing.assert_array_equal(as_rgb_u8(img / 255.0), np.full((64, 64, 3), 128, np.uint8))


def test_single_path_or_image_and_clear_type_errors(recon, tmp_path):
    missing = tmp_path / "x.jpg"
    for one in (str(missing), missing):  # one photo, not 15 one-letter paths / "not iterable"
        result = recon(one)
        assert len(result.status) == 1 and f"image {missing} not found" in result.status[0]
    result = recon(np.zeros((5, 5, 3), np.uint8), np.full((5, 2), 100, np.float32))  # one image + landmarks
    assert len(result.status) == 1 and "5x5 image" in result.status[0]
    with pytest.raises(TypeError, match="images must be a path, an image array, or a list of them"):
        recon(3)


def test_missing_landmarks_name_the_txt_file_and_the_extra(recon, tmp_path):
    photo = tmp_path / "face.jpg"
    photo.write_bytes(PHOTOS[0].read_bytes())
    status = recon([photo]).status[0]
    assert "expected face.txt beside the photo" in status and "jaxface[detect]" in status
    assert "detector=" not in status  # Python advice only for arrays
    assert "detector=jaxface.detect.Detector()" in recon([np.zeros((9, 9, 3), np.uint8)]).status[0]


# ----------------------------------------------------------------------------- 3: killed writers

KILLED_WRITER = textwrap.dedent("""
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location("fileio", sys.argv[1])  # no jax import
    fileio = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fileio)
    with fileio.atomic_path(sys.argv[2]) as tmp:
        tmp.write_bytes(b"half a result")
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_temp_files_of_killed_writers_are_recognised_and_removed(tmp_path):
    target = tmp_path / "face.mat"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(ROOT / "jaxface" / "fileio.py"), str(target)])
    assert proc.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and not target.exists() and is_temp_file(left[0].name)
    assert left[0].name.startswith(".face.mat.jaxface-") and left[0].name.endswith(".partial.mat")
    for kind in ("obj", "overlay"):
        (tmp_path / ("face.obj" if kind == "obj" else "face_overlay.png")).write_bytes(b"x")
    assert not outputs_exist(tmp_path, "face")  # the partial .mat is never a finished result
    with atomic_path(tmp_path / "live.obj") as live:  # a live writer's temp survives the clean-up
        live.write_bytes(b"x")
        assert remove_stale_temps(tmp_path) == left and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.obj", "face_overlay.png", "live.obj"]
    assert not is_temp_file("face.mat") and not is_temp_file(".face.mat.abc123.mat")


# ----------------------------------------------------------------------------- 4: EXIF orientation

@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    pil = pytest.importorskip("PIL.Image")
    from PIL import ImageOps

    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :20] = (250, 0, 0)  # a red block in the stored top-left corner
    exif = pil.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    pil.fromarray(stored).save(path, exif=exif, quality=95)
    upright = np.asarray(ImageOps.exif_transpose(pil.open(path)).convert("RGB"))
    got = align.load_image(path)
    assert got.shape == upright.shape == ((40, 60, 3) if orientation == 3 else (60, 40, 3))
    np.testing.assert_array_equal(got, upright)
    red = np.argwhere(got[..., 0] > 200).mean(0)  # where the block lands, by hand
    corner = {3: (34.5, 49.5), 6: (9.5, 34.5), 8: (49.5, 4.5)}[orientation]
    np.testing.assert_allclose(red, corner, atol=1.0)


# ----------------------------------------------------------------------------- 7: weights metadata

@pytest.mark.parametrize("meta, match", [
    ([], r"rnet\.json must hold a JSON object, got list"),
    ({"format": "jaxface-rnet", "version": 1, "config": {"bn_eps": "abc"}}, r"field 'config\.bn_eps' must be a positive"),
    ({"format": "jaxface-rnet", "version": 1, "config": {"bn_eps": True}}, r"field 'config\.bn_eps'"),
    ({"format": "jaxface-rnet", "version": "1.0", "config": {}}, r"field 'version' is '1\.0'"),
    ({"format": "jaxface-rnet", "version": 7, "config": {}}, r"field 'version' is 7; this jaxface reads version 1"),
    ({"format": "jaxface-rnet", "version": 1, "config": []}, r"field 'config' must be an object"),
    ({"format": "jaxface-rnet", "version": 1, "config": {"variant": 3}}, r"field 'config\.variant' is 3"),
    ({"format": "other"}, r"field 'format' is 'other'"),
])
def test_bad_weights_metadata_names_file_and_field(tmp_path, meta, match):
    from jaxface.rnet import load_rnet
    from jaxface.rnet.checkpoint import weights_provenance

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "rnet.json").write_text(json.dumps(meta))
    for read in (load_rnet, weights_provenance):
        with pytest.raises(ValueError, match=match):
            read(tmp_path)


# ----------------------------------------------------------------------------- 11: truncated BFM

def test_truncated_mat_is_called_truncated(tmp_path):
    from jaxface.errors import ModelFileError
    from jaxface.model.bfm import mat_declared_size, read_morphable_model

    path = tmp_path / "01_MorphableModel.mat"
    n3 = 3 * 53490
    scipy.io.savemat(path, {"shapeMU": np.zeros((n3, 1), np.float32), "shapePC": np.zeros((n3, 2), np.float32),
                            "texMU": np.zeros((n3, 1), np.float32)})
    full = path.stat().st_size
    assert mat_declared_size(path) == full
    with open(path, "r+b") as f:
        f.truncate(full // 3)
    with pytest.raises(ModelFileError, match=f"looks truncated: it is {full // 3:,} bytes but its contents need "
                                             r"at least [\d,]+ .*re-download"):
        read_morphable_model(path)
    assert mat_declared_size(path) > full // 3


# ----------------------------------------------------------------------------- 13: landmark plausibility

def test_landmark_plausibility():
    for txt in sorted(DATA.glob("*.txt")):  # real photos: no warning
        assert landmark_warnings(align.read_landmarks(txt)) == [], txt
    lm = align.read_landmarks(DATA / "000002.txt")
    img = align.load_image(DATA / "000002.jpg")
    h, w = img.shape[:2]
    with pytest.raises(ValueError, match="look like fractions of the image size"):
        align.align_image(img, lm / [w, h])  # 0-1 fractions (said "the 5 landmarks coincide")
    swapped = lm[:, ::-1]
    assert align.align_image(img, swapped).image.shape == (224, 224, 3)  # accepted, so it must warn
    assert any("mirrored" in m and "x and y are not swapped" in m for m in landmark_warnings(swapped))
    tiny = np.array([[6, 8], [13, 8], [10, 11], [7, 15], [13, 15]], np.float32)  # a 20x20 photo's face
    assert any("eyes are 7.0 px apart" in m for m in landmark_warnings(tiny))
    upside_down = np.array([w - 1, h - 1]) - lm  # rotated by 180 degrees
    assert [m for m in landmark_warnings(upside_down) if "rolled by" in m and "upside down" in m]


# ----------------------------------------------------------------------------- 5, 6: failures.csv, signals in-process

def _broken_folder(folder: Path, names=("b1.jpg", "b2.png")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"\xff\xd8 not a photo")
    return folder


def test_failure_reasons_survive_an_unwritable_failures_csv(tmp_path, monkeypatch, capsys):
    from jaxface.cli import main
    from jaxface.outputs import OutputWriteError

    def disk_full(self, path):
        raise OutputWriteError(28, f"cannot write {path}: No space left on device")

    monkeypatch.setattr(FailureLog, "write", disk_full)
    src = _broken_folder(tmp_path / "in")
    assert main(["reconstruct", str(src), "-o", str(tmp_path / "out"), "--method", "fit"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device; the rows of failures.csv are:" in err
    for n in ("b1.jpg", "b2.png"):
        assert f"{src / n}: reconstruct: ValueError: image {src / n} could not be decoded" in err


def test_unwritable_output_folder_is_found_before_any_work(tmp_path, monkeypatch, capsys):
    import tempfile

    from jaxface.cli import main

    def denied(*args, **kwargs):  # root ignores folder permissions, so refuse the probe itself
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    monkeypatch.setattr(Reconstructor, "__init__", lambda *a, **k: pytest.fail("set-up ran"))
    out = tmp_path / "new" / "out"
    assert main(["reconstruct", str(_broken_folder(tmp_path / "in")), "-o", str(out)]) == 2
    assert f"cannot write into the output folder {out} (Permission denied)" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # the folders it created are gone again


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, monkeypatch, capsys):
    from jaxface.cli import main

    def killed(self, prepared):
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. a job scheduler stopping the run
        raise AssertionError("SIGTERM did not interrupt")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(Reconstructor, "run", killed)
    src = _broken_folder(tmp_path / "in")
    assert main(["reconstruct", str(src), "-o", str(tmp_path / "out"), "--method", "fit"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("jaxface reconstruct: interrupted; 0 of 2 photos reconstructed in this run")
    assert err[-1].endswith("rerun the same command to resume") and "Traceback" not in "".join(err)
    assert signal.getsignal(signal.SIGTERM) == before


def test_interrupt_keeps_the_batch_being_written(tmp_path, monkeypatch, capsys):
    """Batches overlap (load next, run this, write previous): Ctrl-C during the third batch's
    network finishes and reports the second batch's writes, and failures.csv holds both rows."""
    from jaxface.cli import main
    from jaxface.outputs import read_failures_csv

    calls, original = [], Reconstructor.run

    def third_interrupts(self, prepared):
        calls.append(len(prepared.status))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, prepared)

    monkeypatch.setattr(Reconstructor, "run", third_interrupts)
    src = _broken_folder(tmp_path / "in", names=("b1.jpg", "b2.jpg", "b3.jpg"))
    out = tmp_path / "out"
    assert main(["reconstruct", str(src), "-o", str(out), "--method", "fit", "--batch-size", "1"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert calls == [1, 1, 1]
    assert [ln for ln in err if ln.startswith("[")] == ["[1/3] 0 reconstructed, 1 failed", "[2/3] 0 reconstructed, 2 failed"]
    assert err[-1].startswith("jaxface reconstruct: interrupted; 0 of 3 photos reconstructed in this run")
    assert [Path(r.image).name for r in read_failures_csv(out / "failures.csv")] == ["b1.jpg", "b2.jpg"]


# ----------------------------------------------------------------------------- CLI in subprocesses

DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    from jaxface.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse: --help, usage errors
                rc = e.code
            except BaseException:
                rc = "traceback"
                traceback.print_exc(file=err)
        results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
    print(json.dumps(results))
""")


def _run_cli(cases: list[list[str]], cwd: Path) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_bad_input_cases(tmp_path, synthetic_dir):
    # 1, 8, 9: colliding names, an unusable name, photos that fail
    one = _broken_folder(tmp_path / "one", ["a b.jpg", "a_b.jpg", "x.jpg", "x.png", "!!!.jpg"])
    two = _broken_folder(tmp_path / "two", ["x.jpg"])
    (tmp_path / "afile").write_text("not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    bfm = tmp_path / "bfm"  # 11: truncated 01_MorphableModel.mat
    bfm.mkdir()
    scipy.io.savemat(bfm / "01_MorphableModel.mat", {"shapeMU": np.zeros((3 * 53490, 1), np.float32)})
    data = (bfm / "01_MorphableModel.mat").read_bytes()
    (bfm / "01_MorphableModel.mat").write_bytes(data[: len(data) // 2])
    (bfm / "Exp_Pca.bin").write_bytes(b"\0" * 8)
    weights = tmp_path / "weights"  # 7: weights metadata with a non-numeric bn_eps
    (weights / "checkpoint").mkdir(parents=True)
    (weights / "rnet.json").write_text(json.dumps({"format": "jaxface-rnet", "version": 1,
                                                   "config": {"bn_eps": "1e-5x"}}))
    same = _broken_folder(tmp_path / "same", ["p.png"])  # 11: -o equal to the input folder, p done before
    for name in ("p.mat", "p.obj", "p_overlay.png"):
        (same / name).write_bytes(PHOTOS[0].read_bytes() if name.endswith(".png") else b"x")
    write_manifest(same, {image_key(same / "p.png"): "p"})
    run = ["reconstruct", "--method", "fit"]
    res = _run_cli([
        run + [str(one), str(two), "-o", "out"],
        run + [str(one), "-o", str(tmp_path / "afile")],
        run + [str(one), "-o", str(tmp_path / "afile" / "sub")],
        run + [str(empty), "-o", "o_empty"],
        run + [str(one), "-o", "o_steps", "--steps", "7"],
        run + [str(one), "-o", "o_bfm", "--bfm", str(bfm)],
        run + [str(one), "-o", "o_weights", "--weights", str(weights)],
        run + [str(same), "-o", str(same)],
        ["reconstruct", "--help"],
    ], cwd=tmp_path)
    assert all(r["rc"] != "traceback" and "Traceback" not in r["err"] for r in res), res
    collide, is_file, below_file, no_images, steps, bfm_r, weights_r, same_r, helped = res

    assert collide["rc"] == 1
    assert "0 reconstructed, 0 already done, 6 failed -> out; see out/failures.csv" in collide["out"]
    stems = read_manifest(tmp_path / "out")
    assert sorted(stems.values()) == ["a_b", "a_b_2", "x", "x_2", "x_3"] and len(stems) == 5
    assert stems[image_key(one / "a_b.jpg")] == "a_b" and stems[image_key(two / "x.jpg")] == "x_3"
    rows = read_failures_csv(tmp_path / "out" / "failures.csv")
    assert len(rows) == 6 and [r.stage for r in rows if r.image.endswith("!!!.jpg")] == ["name"]
    assert "written as a_b_2, x_2, x_3" in collide["err"]

    assert is_file["rc"] == 2 and "output folder" in is_file["err"] and "is an existing file" in is_file["err"]
    assert below_file["rc"] == 2 and f"{tmp_path / 'afile'} is a file, not a folder" in below_file["err"]
    assert "Errno" not in is_file["err"] + below_file["err"]
    assert no_images["rc"] == 2 and f"no images found in {empty}" in no_images["err"]
    assert steps["rc"] == 2 and "--steps must be 0 or a multiple of 10" in steps["err"]
    assert "photo_steps" not in steps["err"] and "raster_every" not in steps["err"]
    assert bfm_r["rc"] == 2 and "01_MorphableModel.mat looks truncated" in bfm_r["err"]
    assert weights_r["rc"] == 2 and "rnet.json: field 'config.bn_eps' must be a positive number" in weights_r["err"]
    for failed_setup in ("o_empty", "o_steps", "o_bfm", "o_weights"):
        assert not (tmp_path / failed_setup).exists(), failed_setup  # no empty folder left behind
    # The overlay written into the input folder is not read back as a photo; p is resumed.
    assert same_r["rc"] == 0 and "0 reconstructed, 1 already done, 0 failed" in same_r["out"]
    assert read_failures_csv(same / "failures.csv") == []
    assert helped["rc"] == 0 and "exit status:" in helped["out"] and "130" in helped["out"]
    assert "some photos failed: OUT/failures.csv" in helped["out"]


def test_ctrl_c_is_one_line(tmp_path, synthetic_dir):
    src = tmp_path / "in"
    src.mkdir()
    for p in PHOTOS[:2]:  # real photos with landmarks: the run reaches fitting
        (src / p.name).write_bytes(p.read_bytes())
        (src / p.with_suffix(".txt").name).write_bytes(p.with_suffix(".txt").read_bytes())
    proc = subprocess.Popen([sys.executable, "-m", "jaxface.cli", "reconstruct", str(src), "-o", str(tmp_path / "out"),
                             "--method", "fit", "--steps", "10"], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # interrupt once the model is loaded and photos are being read
        lines.append(line)
        if line.startswith("model:"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    err_lines = err.strip().splitlines()
    assert proc.returncode == 130, "".join(lines) + err
    assert "Traceback" not in err and len(err_lines) == 1, err
    assert err_lines[0].startswith("jaxface reconstruct: interrupted; 0 of 2 photos reconstructed in this run")
    assert err_lines[0].endswith("rerun the same command to resume")


def _readers():
    from jaxface.identity import dlib_format
    from jaxface.outputs import files
    from jaxface.report import collect
    from jaxface.rnet import convert

    return {  # what the message names, reader, limit, suffix
        "image": (align.load_image, align.MAX_FILE_BYTES, ".png"),
        "result file": (files.load_mat, files.MAX_MAT_BYTES, ".mat"),
        "mesh": (files.load_obj, files.MAX_OBJ_BYTES, ".obj"),
        "dlib face recognition model": (dlib_format.read_dlib_net, dlib_format.MAX_FILE_BYTES, ".dat"),
        "run record": (collect.read_json, collect.MAX_JSON_BYTES, ".json"),
        "epoch_20.pth": (lambda p: convert.check_source_file(p, "epoch_20.pth"), convert.MAX_FILE_BYTES, ".pth"),
    }


@pytest.mark.parametrize("what", ["image", "result file", "mesh", "dlib face recognition model", "run record",
                                  "epoch_20.pth"])
def test_files_users_bring_are_size_checked_before_reading(tmp_path, what):
    read, limit, suffix = _readers()[what]
    path = tmp_path / f"input{suffix}"
    with pytest.raises(FileNotFoundError, match=f"{what} .*not found"):
        read(path)
    path.touch()
    with pytest.raises(ValueError, match=f"{what} .*is an empty file"):
        read(path)
    with open(path, "wb") as f:
        f.truncate(limit + 1)  # sparse: no disk used, and nothing may read it
    with pytest.raises(ValueError, match="refusing files over") as e:
        read(path)
    assert what in str(e.value) and str(path) in str(e.value)
