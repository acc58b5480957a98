"""`jaxface reconstruct --ray` / `reconstruct_dataset` on a local Ray instance (2 CPUs): the same
coefficients, outputs and failure rows as the one-process command, resume, and the set-up errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxface.cli import main
from jaxface.outputs import load_mat, read_failures_csv, read_manifest

# This test process has run JAX before Ray spawns its raylet (fork + exec, harmless); the
# command itself starts Ray first. Ray Data's own config warns about its deprecated options.
pytestmark = [pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]

DATA = Path(__file__).parent / "data" / "images"
# Four photos and a broken one, batch 2: batches [2 photos] [2 photos] [broken], so both runs
# compile one bucket only; 10 fitting steps (the one-process tests' schedule).
NAMES = ("000002", "000006", "000031", "000033")
ARGS = ["--method", "fit", "--steps", "10", "--batch-size", "2"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    src = tmp_path_factory.mktemp("photos")
    for name in NAMES:
        for suffix in (".jpg", ".txt"):
            shutil.copy(DATA / f"{name}{suffix}", src / f"{name}{suffix}")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return src


@pytest.fixture(scope="module")
def single(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    assert main(["reconstruct", str(photos), "-o", str(out), *ARGS]) == 1  # broken.jpg fails
    return out


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def distributed(ray_local, photos, tmp_path_factory):
    from jaxface.distributed import reconstruct_dataset

    out = tmp_path_factory.mktemp("ray") / "out"
    run = reconstruct_dataset([photos], out, method="fit", steps=10, batch_size=2,
                              compile_cache=tmp_path_factory.mktemp("jax-cache"))
    return out, run


def test_same_results_as_one_process(single, distributed):
    import pyarrow.parquet as pq

    out, run = distributed
    assert (run.done, run.failed, run.skipped, run.exit_code) == (4, 1, 0, 1)
    assert len(run.actor_startup) == run.actors == 2  # by default two actors, one CPU each
    assert read_failures_csv(out / "failures.csv") == read_failures_csv(single / "failures.csv")
    assert read_manifest(out) == read_manifest(single)
    rows = {r["stem"]: r for r in pq.read_table(out / "coeffs.parquet").to_pylist()}
    assert set(rows) == {*NAMES, "broken"}
    for name in NAMES:
        for kind in (".mat", "_mesh.obj", "_overlay.png"):
            assert (out / f"{name}{kind}").is_file()
        want = load_mat(single / f"{name}.mat")["coeff"].reshape(-1)
        got = np.asarray(rows[name]["coeffs"], np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(load_mat(out / f"{name}.mat")["coeff"].reshape(-1), got)
        assert (rows[name]["status"], rows[name]["earlier_run"]) == ("ok", False)
    broken = rows["broken"]
    assert broken["status"] == "reconstruct" and "could not be decoded" in broken["message"]
    assert np.isnan(broken["coeffs"]).all()


def test_rerun_skips_everything(photos, distributed):
    import pyarrow.parquet as pq

    from jaxface.distributed import reconstruct_dataset

    out, first = distributed
    before = pq.read_table(out / "coeffs.parquet").to_pylist()
    stamps = {n: (out / f"{n}.mat").stat().st_mtime_ns for n in NAMES}
    # The good photos only (broken.jpg, having no result, would be tried again, as without Ray).
    run = reconstruct_dataset([photos / f"{n}.jpg" for n in NAMES], out, method="fit", steps=10, batch_size=2)
    assert (run.done, run.failed, run.skipped, run.exit_code, run.actor_startup) == (0, 0, 4, 0, ())
    assert {n: (out / f"{n}.mat").stat().st_mtime_ns for n in NAMES} == stamps
    after = {r["stem"]: r for r in pq.read_table(out / "coeffs.parquet").to_pylist()}
    assert len(after) == 5 and all(r["earlier_run"] for r in after.values())  # broken.jpg's row is kept
    for r in before:
        np.testing.assert_array_equal(after[r["stem"]]["coeffs"], r["coeffs"])
    assert read_failures_csv(out / "failures.csv") == []


def test_missing_extra_names_it(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "out"
    assert main(["reconstruct", str(photos), "-o", str(out), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'jaxface[ray]'" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("address, message", [("127.0.0.1:1", "no Ray head answers there"),
                                              ("photos", "expected the head node's HOST:PORT")])
def test_bad_address_is_a_clear_error(photos, tmp_path, capsys, address, message):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    assert main(["reconstruct", str(photos), "-o", str(out), f"--ray={address}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
