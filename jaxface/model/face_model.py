"""`FaceModel`: the 35,709-vertex front morphable model as a pytree."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FaceModel:
    """Arrays are pytree leaves; `name` and `synthetic` are static metadata.

    Shapes (V vertices = 35,709 for BFM09 front, T triangles = 70,789):
    mean_shape: f32[V, 3]      recentred mean shape, decimetres
    id_base: f32[V, 3, 80]     identity basis (already scaled by the eigenvalues)
    exp_base: f32[V, 3, 64]    expression basis
    mean_tex: f32[V, 3]        mean albedo, 0-255
    tex_base: f32[V, 3, 80]    albedo basis, 0-255 units
    tris: i32[T, 3]            zero-based vertex indices
    point_buf: i32[V, 8]       zero-based triangle ids per vertex, padded with T
    keypoints: i32[68]         zero-based vertex indices of the 68 landmarks
    front_mask_idx: i32[F]     zero-based vertices of the photometric-loss region
    skin_mask: f32[V]          1 on skin (albedo regularizer), 0 elsewhere
    """

    mean_shape: jnp.ndarray
    id_base: jnp.ndarray
    exp_base: jnp.ndarray
    mean_tex: jnp.ndarray
    tex_base: jnp.ndarray
    tris: jnp.ndarray
    point_buf: jnp.ndarray
    keypoints: jnp.ndarray
    front_mask_idx: jnp.ndarray
    skin_mask: jnp.ndarray
    name: str = dataclasses.field(default="BFM09", metadata=dict(static=True))
    synthetic: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def replace(self, **changes) -> "FaceModel":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_triangles(self) -> int:
        return self.tris.shape[0]

    def region_triangles(self) -> jnp.ndarray:
        """bool[T]: triangles with all three corners in `front_mask_idx` (the photometric-loss region)."""
        in_region = jnp.zeros(self.num_vertices, bool).at[self.front_mask_idx].set(True)
        return jnp.all(in_region[self.tris], axis=1)

    @property
    def label(self) -> str:
        """Human-readable name that always says when the model is synthetic."""
        return f"{self.name} (SYNTHETIC morphable model, not the Basel Face Model)" if self.synthetic else self.name
