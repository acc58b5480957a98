"""Texture maps from photos on the UV layout of the face mesh (`jaxface.model.uv`).

For each texel of an S x S map, the UV triangle it falls in gives its point on the fitted,
posed face (barycentric weights in UV = on the 3D triangle, the map is piecewise linear).
That point is projected into the photo, sampled there (bilinear) where it is visible, and
filled from the model where it is not:

- visible: in front of the camera's z-buffer surface at that pixel (within
  `depth_tolerance`) and facing the camera; the weight ramps from 0 at `min_cos` to 1 at
  `min_cos + feather` (the cosine between the normal and the view direction), so the
  photo fades into the model at grazing angles instead of smearing;
- `texture`: photo colour, filled with the model's lit colour (albedo x SH shading);
- `albedo`: photo colour divided by the fitted SH shading (de-lit), filled with the
  model's albedo;
- texels outside the mesh (the disk's corners, the mouth) repeat their nearest texel, so
  bilinear filtering in viewers shows no dark seams.

Images are RGB, rows top-down; maps are top row v = 1 (OBJ/glTF images as stored).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.conventions import CROP_SIZE, flip_row
from jaxface.formation import AMBIENT_OFFSET, Face, sh_terms
from jaxface.model.face_model import FaceModel
from jaxface.model.uv import face_uv
from jaxface.reconstruct import pad_batch
from jaxface.render import Fragments, render_faces

MAX_TEXTURE_SIZE = 2048  # 4M texels; the UV rasterization's memory grows with it


@dataclasses.dataclass(frozen=True)
class TextureConfig:
    """How textures are extracted.

    size: side of the square maps in texels.
    min_cos, feather: a texel's photo weight is clip((cos - min_cos) / feather, 0, 1), cos
        between its normal and the direction to the camera (0 where it is hidden).
    depth_tolerance: how far (model units, decimetres) a texel may lie behind the
        z-buffer's surface (its depth interpolated between pixels) and still count as visible.
    zbuffer_size: resolution of the visibility z-buffer over the crop (224: crop pixels).
    min_shading: shading is clamped to at least this before de-lighting (dark texels).
    """

    size: int = 512
    min_cos: float = 0.1
    feather: float = 0.2
    depth_tolerance: float = 0.01
    zbuffer_size: int = CROP_SIZE
    min_shading: float = 0.05

    def __post_init__(self):
        if not 8 <= self.size <= MAX_TEXTURE_SIZE:
            raise ValueError(f"texture size must be between 8 and {MAX_TEXTURE_SIZE} texels, got {self.size}")
        if self.feather <= 0 or self.zbuffer_size < 8 or self.min_shading <= 0:
            raise ValueError("feather, min_shading must be positive and zbuffer_size at least 8")


class Atlas(NamedTuple):
    """The UV layout rasterized at S x S texels (N of them inside the mesh).

    uv: f32[V, 2]          per-vertex UV in [0, 1], v up
    covered: bool[S, S]    texels inside a UV triangle (rows top-down: row 0 is v = 1)
    texels: i32[N]         flat ids of the covered texels
    tri: i32[N]            the triangle of each covered texel
    bary: f32[N, 3]        its barycentric weights in that triangle
    nearest: i32[S, S]     row (of the N covered texels) of each texel's nearest covered texel
    """

    uv: np.ndarray
    covered: np.ndarray
    texels: np.ndarray
    tri: np.ndarray
    bary: np.ndarray
    nearest: np.ndarray

    @property
    def size(self) -> int:
        return self.covered.shape[0]


def uv_texels(uv, tris, size: int):
    """Rasterize a UV layout: (texels i64[N] flat ids, tri i64[N], bary f32[N, 3]) of the
    texels whose centre lies in a UV triangle (on an edge: the lowest triangle id, as the
    renderer's tie rule). numpy, exact in float64: the UV triangles are a few texels each,
    so enumerating each one's bounding box is cheap and needs no compiled program."""
    uv = np.asarray(uv, np.float64)
    tris = np.asarray(tris, np.int64)
    p = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], axis=1)[tris]  # [T, 3, 2]
    lo = np.clip(np.ceil(p.min(axis=1)), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(p.max(axis=1)), 0, size - 1).astype(np.int64)
    nx, ny = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0), np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    on_map = (p.min(axis=1) <= size - 1).all(axis=1) & (p.max(axis=1) >= 0).all(axis=1)
    count = np.where(on_map, nx * ny, 0)
    t = np.repeat(np.arange(len(tris)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    x, y = lo[t, 0] + k % nx[t], lo[t, 1] + k // nx[t]
    a, b, c = p[t, 0], p[t, 1], p[t, 2]

    def edge(u, v):  # doubled signed area of (texel, u, v)
        return (u[:, 0] - x) * (v[:, 1] - y) - (v[:, 0] - x) * (u[:, 1] - y)

    e = np.stack([edge(b, c), edge(c, a), edge(a, b)], axis=1)
    area = e.sum(axis=1)
    inside = (area != 0) & np.where(area[:, None] > 0, e >= 0, e <= 0).all(axis=1)
    flat, t, e, area = y[inside] * size + x[inside], t[inside], e[inside], area[inside]
    order = np.lexsort((t, flat))
    flat, t, e, area = flat[order], t[order], e[order], area[order]
    first = np.r_[True, flat[1:] != flat[:-1]]
    return flat[first], t[first], (e[first] / area[first, None]).astype(np.float32)


def texture_atlas(model: FaceModel, size: int = 512, uv=None) -> Atlas:
    """The UV layout (`face_uv(model)` unless `uv` f32[V, 2] is given) at S x S texels.

    Texel (row i, column j) is the point u = (j + 0.5) / S, v = 1 - (i + 0.5) / S.
    """
    from scipy import ndimage

    TextureConfig(size=size)  # validates the size
    uv = face_uv(model) if uv is None else np.asarray(uv, np.float32)
    if uv.shape != (model.num_vertices, 2):
        raise ValueError(f"uv must be f32[{model.num_vertices}, 2], got {uv.shape}")
    texels, tri, bary = uv_texels(uv, np.asarray(model.tris), size)
    if not len(texels):
        raise ValueError("the UV layout covers no texel; check that uv lies in [0, 1]")
    covered = np.zeros(size * size, bool)
    covered[texels] = True
    covered = covered.reshape(size, size)
    _, idx = ndimage.distance_transform_edt(~covered, return_indices=True)
    row = np.zeros(size * size, np.int32)
    row[texels] = np.arange(len(texels))
    nearest = row[idx[0] * size + idx[1]]
    return Atlas(uv, covered, texels.astype(np.int32), tri.astype(np.int32), bary, nearest)


class Textures(NamedTuple):
    """Texture maps of B faces, f32 0-1, rows top-down (row 0 is v = 1).

    texture: f32[B, S, S, 3]   photo colours, hidden texels filled with the model's lit colour
    albedo: f32[B, S, S, 3]    photo colours de-lit by the fitted SH shading, hidden texels
                               filled with the model's albedo
    visibility: f32[B, S, S]   weight of the photo in each texel (0 hidden, 1 fully visible)
    """

    texture: np.ndarray
    albedo: np.ndarray
    visibility: np.ndarray


@partial(jax.jit, static_argnames=("camera", "zcamera", "config"))
def _texel_geometry(tris, face: Face, fragments: Fragments, gamma, tri, bary, camera: Camera, zcamera: Camera,
                    config: TextureConfig):
    """Per covered texel of a batch: crop position (x, y up) f32[B, N, 2], photo weight
    f32[B, N], SH shading f32[B, N, 3] and model albedo f32[B, N, 3].

    face, fragments: `render_faces` at `zcamera` (leading B axes); gamma f32[B, 27]."""
    batch, num_verts = face.vertices.shape[:2]
    # Position, normal and albedo of the corners from ONE batch-minor table: each texel corner
    # then gathers one contiguous row of 9 B floats (XLA:CPU's fast gather path).
    table = jnp.concatenate([face.vertices, face.normals, face.albedo], axis=-1)
    table = table.transpose(1, 2, 0).reshape(num_verts, 9 * batch)
    corners = tris[tri]
    attr = sum(bary[:, k, None] * table[corners[:, k]] for k in range(3)).reshape(-1, 9, batch)
    pos, normal, albedo = attr[:, 0:3], attr[:, 3:6], attr[:, 6:9]  # [N, 3, B]
    normal = normal / jnp.maximum(jnp.linalg.norm(normal, axis=1, keepdims=True), 1e-12)

    depth = camera.distance - pos[:, 2]
    crop_xy = camera.focal * pos[:, :2] / depth[:, None] + camera.center
    to_camera = jnp.stack([-pos[:, 0], -pos[:, 1], depth], axis=1)
    cos = jnp.sum(normal * to_camera, axis=1) / jnp.linalg.norm(to_camera, axis=1)

    # Visibility: the z-buffer's depth, bilinear between the four pixels around the texel's
    # screen point (all four covered: no background or hair in the photo's bilinear sample
    # either), against the texel's own depth.
    zsize = zcamera.image_size
    px = zcamera.focal * pos[:, 0] / depth + zcamera.center
    py = flip_row(zcamera.focal * pos[:, 1] / depth + zcamera.center, zsize)
    px, py, depth = px.T, py.T, depth.T  # image-major [B, N]: neighbouring texels read neighbouring pixels
    zdepth = fragments.depth.reshape(batch, -1)  # 0 on background
    col0 = jnp.clip(jnp.floor(px), 0, zsize - 2)
    row0 = jnp.clip(jnp.floor(py), 0, zsize - 2)
    fx, fy = px - col0, py - row0
    base = row0.astype(jnp.int32) * zsize + col0.astype(jnp.int32)
    at = jax.vmap(lambda z, i: z[i])
    d00, d01, d10, d11 = (at(zdepth, base + off) for off in (0, 1, zsize, zsize + 1))
    inside = (px >= 0) & (px <= zsize - 1) & (py >= 0) & (py <= zsize - 1)
    inside &= (d00 > 0) & (d01 > 0) & (d10 > 0) & (d11 > 0)
    surface = (d00 * (1 - fx) + d01 * fx) * (1 - fy) + (d10 * (1 - fx) + d11 * fx) * fy
    visible = (inside & (depth <= surface + config.depth_tolerance)).T
    weight = jnp.where(visible, jnp.clip((cos - config.min_cos) / config.feather, 0.0, 1.0), 0.0)

    terms = sh_terms(normal[:, 0], normal[:, 1], normal[:, 2])
    g = gamma.reshape(-1, 3, 9).at[:, :, 0].add(AMBIENT_OFFSET)
    shading = jnp.stack([sum(terms[k] * g[:, c, k] for k in range(9)) for c in range(3)], axis=1)
    batch_first = lambda a: jnp.transpose(a, (2, 0, 1))  # noqa: E731  [N, C, B] -> [B, N, C]
    return batch_first(crop_xy), weight.T, batch_first(shading), batch_first(albedo)


def _padded(coeffs: Coeffs, n: int, batch_size: int | None) -> Coeffs:
    """Coefficients padded (repeating the last face) to `batch_size`, by default the next
    power of two: a few compiled programs for any batch."""
    size = batch_size or 1 << max(0, (n - 1).bit_length())
    if size < n:
        raise ValueError(f"batch_size {size} is smaller than the {n} faces given")
    return jax.tree.map(lambda x: jnp.asarray(pad_batch(x, size)), coeffs)


def _photo_pixels(crop_xy: np.ndarray, trans_params, crop_size: int) -> np.ndarray:
    """Crop coordinates (x, y up) f[N, 2] -> pixel coordinates (x, y down) of the sampled image."""
    if trans_params is None:
        return np.stack([crop_xy[:, 0], flip_row(crop_xy[:, 1], crop_size)], axis=1)
    from jaxface.align import crop_to_image_points

    return crop_to_image_points(crop_xy, trans_params, crop_size)


def _sample(image: np.ndarray, xy: np.ndarray, size: int, texels: np.ndarray):
    """Bilinear samples f32[N, 3] (0-1) of u8[H, W, 3] at pixel points xy f[N, 2], and which lie on it."""
    import cv2

    h, w = image.shape[:2]
    maps = np.full((size * size, 2), -1.0, np.float32)
    maps[texels] = xy
    maps = maps.reshape(size, size, 2)
    # cv2.remap wants maps no wider than 32767: the full S x S grid, not the N texels in a row.
    out = cv2.remap(image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    on = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    return out.reshape(-1, 3)[texels].astype(np.float32) / 255.0, on


def extract_textures(model: FaceModel, coeffs: Coeffs, images, trans_params=None, *, atlas: Atlas | None = None,
                     config: TextureConfig = TextureConfig(), camera: Camera = Camera(),
                     batch_size: int | None = None) -> Textures:
    """Texture and albedo maps of B faces from their photos.

    coeffs: Coeffs[B]  the fitted coefficients (the crop's camera `camera`).
    images: B RGB images u8[H, W, 3]: the photos (with `trans_params`), or the crops themselves.
    trans_params: f[B, 5] from alignment (`Reconstruction.trans_params`) to sample the
        original photos at their full resolution, or None when `images` are the crops.
    atlas: `texture_atlas(model, config.size)` (built here when None; build it once for many calls).
    batch_size: pad the batch to this size (default: the next power of two). Faces are formed
        and z-buffered by `render_faces`, so a `Reconstructor` bucket size reuses its program.
    """
    atlas = texture_atlas(model, config.size) if atlas is None else atlas
    if atlas.size != config.size:
        raise ValueError(f"atlas has {atlas.size} texels a side but config.size is {config.size}")
    n = int(np.shape(coeffs.id)[0]) if np.ndim(coeffs.id) == 2 else 0
    if n == 0:
        raise ValueError("coeffs must have a batch axis (fields f32[B, n]); for one face use x[None]")
    images = list(images)
    if len(images) != n or (trans_params is not None and len(trans_params) != n):
        raise ValueError(f"got {n} faces, {len(images)} images"
                         + ("" if trans_params is None else f" and {len(trans_params)} trans_params"))
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image {i} is {img.dtype}{list(img.shape)}; expected an RGB uint8[H, W, 3] image")
    padded = _padded(jax.tree.map(np.asarray, coeffs), n, batch_size)
    zcamera = camera if config.zbuffer_size == camera.image_size else Camera.for_size(config.zbuffer_size)
    face, rendered = render_faces(model, padded, zcamera)
    xy, weight, shading, albedo = (np.asarray(a)[:n] for a in _texel_geometry(
        model.tris, face, rendered.fragments, padded.gamma, jnp.asarray(atlas.tri), jnp.asarray(atlas.bary),
        camera, zcamera, config))

    s = config.size
    out = Textures(*(np.empty((n, s, s, *c), np.float32) for c in ((3,), (3,), ())))
    for i in range(n):
        pixels = _photo_pixels(xy[i], None if trans_params is None else trans_params[i], camera.image_size)
        photo, on = _sample(np.asarray(images[i]), pixels, s, atlas.texels)
        w = np.where(on, weight[i], 0.0)[:, None]
        lit = np.clip(albedo[i] * shading[i], 0.0, 1.0)
        delit = np.clip(photo / np.maximum(shading[i], config.min_shading), 0.0, 1.0)
        # Outside the mesh each map repeats its nearest texel inside.
        out.texture[i] = (lit + w * (photo - lit))[atlas.nearest]
        out.albedo[i] = (albedo[i] + w * (delit - albedo[i]))[atlas.nearest]
        out.visibility[i] = np.where(atlas.covered, w[atlas.nearest, 0], 0.0)
    return out


def render_textured(model: FaceModel, coeffs: Coeffs, textures, uv, camera: Camera = Camera(), backgrounds=None,
                    batch_size: int | None = None):
    """Render B faces (coeffs fields f32[B, n]) with texture maps instead of vertex colours.

    textures: u8 | f32 0-1 [B, S, S, 3] (row 0 is v = 1), e.g. `Textures.texture`; uv:
    f32[V, 2] (`Atlas.uv`). Returns (images f32[B, H, W, 3] 0-1, masks f32[B, H, W]) at
    camera.image_size: each pixel's UV, interpolated perspective-correctly in the triangle the
    z-buffer of `render_faces` keeps there, samples its texture bilinearly (the texture
    replaces the lighting: maps from photos carry their own). `backgrounds` f32[B, H, W, 3]
    shows where no face covers; batch_size as in `extract_textures`.
    """
    import cv2

    textures = np.asarray(textures)
    textures = textures.astype(np.float32) / 255.0 if textures.dtype == np.uint8 else textures.astype(np.float32)
    n = int(np.shape(coeffs.id)[0]) if np.ndim(coeffs.id) == 2 else 0
    if n == 0 or textures.ndim != 4 or len(textures) != n or textures.shape[3] != 3:
        raise ValueError(f"expected coeffs with a batch axis and textures [B, S, S, 3] for the same B; got "
                         f"coefficients for {n} faces and textures of shape {textures.shape}")
    _, out = render_faces(model, _padded(jax.tree.map(np.asarray, coeffs), n, batch_size), camera)
    tri_id, bary, masks = (np.asarray(a)[:n] for a in (out.fragments.tri_id, out.fragments.bary, out.mask))
    corners = np.asarray(model.tris)[np.maximum(tri_id, 0)]  # [B, H, W, 3]
    pix = np.einsum("bhwk,bhwkc->bhwc", bary, np.asarray(uv, np.float32)[corners])
    images = np.zeros((n, *masks.shape[1:], 3), np.float32)
    for i in range(n):
        s = textures[i].shape[0]
        images[i] = cv2.remap(textures[i], pix[i, ..., 0] * s - 0.5, (1.0 - pix[i, ..., 1]) * s - 0.5,
                              cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) * masks[i, ..., None]
    if backgrounds is not None:
        images = images + (1.0 - masks[..., None]) * np.asarray(backgrounds, np.float32)
    return images, masks
