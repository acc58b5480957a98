"""Where jaxface looks for files users bring, and where it caches what it builds.

No global state: each function reads the environment when called.
- BFM folder: `$JAXFACE_BFM_DIR`, else the `BFM/` folder beside the package (a clone or
  editable install). It holds the MIT index files we ship and, when the user has them,
  `01_MorphableModel.mat` + `Exp_Pca.bin` (or an already converted `BFM_model_front.mat`).
- Weights folder: `$JAXFACE_WEIGHTS_DIR`, else `weights/` beside the package.
- Cache (the generated synthetic model): `$JAXFACE_CACHE`, else `~/.cache/jaxface`.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# The index files both references ship (MIT); see BFM/LICENSE.
INDEX_FILES = (
    "BFM_front_idx.mat",
    "BFM_exp_idx.mat",
    "facemodel_info.mat",
    "similarity_Lm3D_all.mat",
    "std_exp.txt",
)


def bfm_dir() -> Path:
    return Path(os.environ.get("JAXFACE_BFM_DIR", REPO_ROOT / "BFM"))


def weights_dir() -> Path:
    return Path(os.environ.get("JAXFACE_WEIGHTS_DIR", REPO_ROOT / "weights"))


def cache_dir() -> Path:
    return Path(os.environ.get("JAXFACE_CACHE", Path.home() / ".cache" / "jaxface"))


def index_file(name: str, folder: Path | None = None) -> Path:
    """Path of a shipped index file, looked up in `folder` then in the repo's BFM/."""
    for d in ([Path(folder)] if folder is not None else []) + [bfm_dir(), REPO_ROOT / "BFM"]:
        p = d / name
        if p.exists():
            return p
    raise FileNotFoundError(
        f"index file {name!r} not found in {folder or bfm_dir()}. It ships with jaxface in the "
        "repository's BFM/ folder (MIT, from Deep3DFaceReconstruction); copy it next to your "
        "01_MorphableModel.mat or set JAXFACE_BFM_DIR."
    )
