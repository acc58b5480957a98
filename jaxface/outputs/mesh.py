"""Textured meshes through trimesh (extra `[mesh]`): `NAME_mesh.obj` with `vt` and a
`mtllib NAME_mesh.mtl` whose `map_Kd` is `NAME_texture.png` beside it, and binary glTF
`NAME.glb` with the texture embedded (Blender, three.js, MeshLab, online viewers).

The mesh is the posed shape (as the vertex-coloured `.obj`): x right, y up, z towards the
camera, which is glTF's own frame. The `.obj` keeps the model's units (decimetres, like
the references' files); the `.glb` is in metres (x 0.1), glTF's unit. The material is
white with the texture as its colour (a grey `Kd` would darken the texture in viewers that
multiply them), and non-metallic in glTF (the specification's default is metallic).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxface.outputs.files import check_array
from jaxface.outputs.paths import atomic_output

GLB_SCALE = 0.1  # decimetres -> metres


def _trimesh():
    try:
        import PIL.Image  # noqa: F401  (trimesh keeps textures as Pillow images)
        import trimesh
    except ImportError as e:
        raise ImportError("textured mesh export (.obj with a texture, .glb) needs trimesh and Pillow: "
                          "pip install 'jaxface[mesh]'") from e
    return trimesh


def texture_u8(texture) -> np.ndarray:
    """u8[S, S, 3] from u8 or float 0-1 [S, S, 3] (float is rounded after clipping)."""
    t = np.asarray(texture)
    if t.ndim != 3 or t.shape[2] != 3 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"texture has shape {t.shape}; expected an RGB image [H, W, 3]")
    if t.dtype == np.uint8:
        return t
    t = check_array("texture", t, t.shape)
    return np.round(np.clip(t, 0.0, 1.0) * 255).astype(np.uint8)


def textured_mesh(vertices, tris, uv, texture, name: str, pbr: bool = False):
    """A `trimesh.Trimesh` (vertices and triangles kept as given, not merged) with a textured
    material called `name`: PBR (glTF) or simple (OBJ/MTL)."""
    trimesh = _trimesh()
    import PIL.Image

    v = check_array("vertices", vertices, (None, 3))
    t = np.asarray(tris)
    if t.ndim != 2 or t.shape[1] != 3 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tris is {t.dtype}{list(t.shape)}; expected integer [T, 3]")
    if t.size and (t.min() < 0 or t.max() >= len(v)):
        raise ValueError(f"tris index vertices {t.min()}..{t.max()}; expected zero-based indices below {len(v)}")
    coords = check_array("uv", uv, (len(v), 2))
    image = PIL.Image.fromarray(texture_u8(texture))
    white, black = (255, 255, 255, 255), (0, 0, 0, 255)
    if pbr:
        material = trimesh.visual.material.PBRMaterial(name=name, baseColorTexture=image, baseColorFactor=white,
                                                       metallicFactor=0.0, roughnessFactor=1.0)
    else:
        material = trimesh.visual.material.SimpleMaterial(name=name, image=image, diffuse=white, ambient=white,
                                                          specular=black)
    visual = trimesh.visual.TextureVisuals(uv=coords, material=material)
    return trimesh.Trimesh(vertices=v, faces=t.astype(np.int64), visual=visual, process=False, validate=False)


def format_textured_obj(vertices, tris, uv, texture, texture_name: str, mtl_name: str) -> tuple[bytes, bytes]:
    """(`.obj` text, `.mtl` text) of a textured mesh; the `.mtl`'s `map_Kd` is `texture_name`
    (a `.png` file name) and the `.obj` names `mtl_name` in its `mtllib` line."""
    _trimesh()
    from trimesh.exchange.obj import export_obj

    stem, suffix = os.path.splitext(texture_name)
    if suffix.lower() != ".png" or not stem:
        raise ValueError(f"texture_name must be a .png file name, got {texture_name!r}")
    mesh = textured_mesh(vertices, tris, uv, texture, name=stem)
    text, files = export_obj(mesh, include_normals=False, include_color=False, include_texture=True,
                             return_texture=True, write_texture=False, mtl_name=mtl_name, header="jaxface")
    # trimesh names the image after the material: check that the .mtl points where we write it.
    if texture_name not in files or mtl_name not in files:
        raise RuntimeError(f"trimesh wrote {sorted(files)}, not {texture_name} and {mtl_name}")
    return text.encode("utf-8"), files[mtl_name]


def save_textured_obj(path, vertices, tris, uv, texture, texture_path) -> tuple[Path, Path]:
    """Write `path` (.obj) and the `.mtl` beside it (same stem), atomically; the texture
    image itself is `texture_path` (written by the caller, e.g. `save_png`), in the same folder."""
    path, texture_path = Path(path), Path(texture_path)
    if texture_path.parent.resolve() != path.parent.resolve():
        raise ValueError(f"the texture {texture_path} must be in the folder of {path} (.mtl files name it relative)")
    mtl_path = path.with_suffix(".mtl")
    obj, mtl = format_textured_obj(vertices, tris, uv, texture, texture_path.name, mtl_path.name)
    with atomic_output(mtl_path) as tmp:
        tmp.write_bytes(mtl)
    with atomic_output(path) as tmp:
        tmp.write_bytes(obj)
    return path, mtl_path


def format_glb(vertices, tris, uv, texture, name: str = "face") -> bytes:
    """Binary glTF 2.0 of a textured mesh, vertices scaled to metres, texture embedded as PNG."""
    _trimesh()
    from trimesh.exchange.gltf import export_glb

    mesh = textured_mesh(np.asarray(vertices, np.float32) * np.float32(GLB_SCALE), tris, uv, texture, name, pbr=True)
    return export_glb(mesh, include_normals=True)


def save_glb(path, vertices, tris, uv, texture, name: str = "face") -> Path:
    """Write `format_glb` to `path` atomically."""
    data = format_glb(vertices, tris, uv, texture, name)
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path
