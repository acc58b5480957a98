"""The tutorial notebooks (notebooks/*.ipynb): executed top to bottom so they never rot, and
kept free of outputs in git (a pre-commit-style check).

Execution uses a kernel started with THIS interpreter (a kernelspec written to a temporary
folder, so a `python3` kernelspec elsewhere on the machine cannot pick another Python), with the
notebooks folder as working directory (the notebooks write only to temporary folders; the test
checks that the folder is unchanged). The three notebooks share a JAX persistent compilation
cache for the session (a temporary folder unless JAX_COMPILATION_CACHE_DIR is set), so programs
compiled by one notebook (e.g. `render`) are reused by the next.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = ("01_morphable_model.ipynb", "02_reconstruct.ipynb", "03_refinement.ipynb")
KERNEL_NAME = "jaxface-notebook-test"
CELL_TIMEOUT_S = 600
_MARKER = "JAXFACE_NOTEBOOK_KERNEL_PREFIX="


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


# ----------------------------------------------------------------------------- stored form (no deps)

def test_expected_notebooks_exist():
    names = {p.name for p in _notebooks()}
    missing = [n for n in EXPECTED if n not in names]
    assert not missing, f"missing notebooks in {NOTEBOOK_DIR}: {missing}"
    assert (NOTEBOOK_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_has_no_outputs(path: Path):
    """Outputs are stripped in git: no outputs, no execution counts (see notebooks/README.md)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb.get("nbformat") == 4, f"{path.name}: not an nbformat 4 notebook"
    dirty = []
    for i, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            dirty.append(f"cell {i}: {len(cell['outputs'])} stored output(s)")
        if cell.get("execution_count") is not None:
            dirty.append(f"cell {i}: execution_count {cell['execution_count']}")
    assert not dirty, (f"{path.name} has stored outputs; clear them before committing (see "
                       "notebooks/README.md, e.g. `jupyter nbconvert --clear-output --inplace` or nbstripout):\n  "
                       + "\n  ".join(dirty))


# ----------------------------------------------------------------------------- execution

@pytest.fixture(scope="session")
def notebook_kernel(tmp_path_factory):
    """(KernelSpecManager, name) of a kernel running sys.executable, with a shared JAX compile cache."""
    pytest.importorskip("nbclient")
    pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    from jupyter_client.kernelspec import KernelSpecManager

    base = tmp_path_factory.mktemp("notebook_kernel")
    spec_dir = base / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    env = {
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", str(base / "jax_cache")),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # silences debugpy's frozen-modules warning
    }
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"jaxface tests ({sys.executable})",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=2))
    return KernelSpecManager(kernel_dirs=[str(base / "kernels")]), KERNEL_NAME


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if ".ipynb_checkpoints" not in p.parts}


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs(name: str, notebook_kernel):
    """Run every cell; any cell error fails the test (nbclient raises CellExecutionError)."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    ksm, kernel_name = notebook_kernel
    path = NOTEBOOK_DIR / name
    nb = nbformat.read(path, as_version=4)
    # One extra cell at the end proves the kernel ran this interpreter's environment.
    nb.cells.append(nbformat.v4.new_code_cell(f"import sys\nprint({_MARKER!r} + sys.prefix)"))
    before = _listing(NOTEBOOK_DIR)

    km = KernelManager(kernel_name=kernel_name, kernel_spec_manager=ksm)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute(cleanup_kc=True)  # we pass km, so ask nbclient to shut the kernel down
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - t0
    print(f"{name}: {seconds:.1f} s")

    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    assert f"{_MARKER}{sys.prefix}" in printed, f"the kernel did not run {sys.executable}: {printed!r}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert figures >= 3, f"{name} produced {figures} figures"
    assert _listing(NOTEBOOK_DIR) == before, f"{name} wrote files into {NOTEBOOK_DIR}; write to a temporary folder"
