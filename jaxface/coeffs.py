"""The 257 coefficients R-Net regresses, as a named pytree.

Layout of the reference 257-vector (SPEC "Coefficients"):
id [0:80], exp [80:144], tex [144:224], angle [224:227] (x, y, z radians),
gamma [227:254] (SH, 3 channels x 9), trans [254:257].
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

# (name, width) in the order of the reference vector.
LAYOUT: tuple[tuple[str, int], ...] = (
    ("id", 80),
    ("exp", 64),
    ("tex", 80),
    ("angle", 3),
    ("gamma", 27),
    ("trans", 3),
)
NUM_COEFFS = sum(w for _, w in LAYOUT)  # 257


def _offsets() -> dict[str, tuple[int, int]]:
    out, start = {}, 0
    for name, width in LAYOUT:
        out[name] = (start, start + width)
        start += width
    return out


SLICES = _offsets()


class Coeffs(NamedTuple):
    """Face coefficients; every field has the same leading batch shape `*B`.

    id: f32[*B, 80]     identity (shape) weights
    exp: f32[*B, 64]    expression weights
    tex: f32[*B, 80]    albedo weights
    angle: f32[*B, 3]   rotation about x, y, z in radians
    gamma: f32[*B, 27]  spherical-harmonics light, 3 channels x 9 (before the +0.8 ambient offset)
    trans: f32[*B, 3]   translation in model units (decimetres)
    """

    id: jnp.ndarray
    exp: jnp.ndarray
    tex: jnp.ndarray
    angle: jnp.ndarray
    gamma: jnp.ndarray
    trans: jnp.ndarray

    @classmethod
    def from_vector(cls, vec) -> "Coeffs":
        """Split f32[*B, 257] (extra trailing values, e.g. the 258th of one TF release, are ignored)."""
        if vec.shape[-1] < NUM_COEFFS:
            raise ValueError(
                f"coefficient vector has {vec.shape[-1]} values in its last axis; expected {NUM_COEFFS} "
                "(id 80, exp 64, tex 80, angle 3, gamma 27, trans 3)"
            )
        return cls(**{name: vec[..., a:b] for name, (a, b) in SLICES.items()})

    def to_vector(self):
        """Concatenate to f32[*B, 257] in the reference order."""
        xp = np if all(isinstance(x, np.ndarray) for x in self) else jnp
        return xp.concatenate([getattr(self, name) for name, _ in LAYOUT], axis=-1)

    @classmethod
    def zeros(cls, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> "Coeffs":
        """The mean face, frontal, ambient light only, at the origin."""
        return cls(**{name: jnp.zeros((*batch_shape, w), dtype) for name, w in LAYOUT})

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.id.shape[:-1])
