"""Pinhole camera of the references: distance 10 along +z, focal 1015, centre 112 for 224x224."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Camera:
    """Perspective camera looking down -z from `distance` on the +z axis.

    A point (x, y, z) in model space maps to camera depth d = distance - z and
    image coordinates u = focal * x / d + center, v = focal * y / d + center with v
    pointing up; the top-down image row is `image_size - 1 - v`.

    The defaults are the references' 224x224 camera. For another crop size s use
    `Camera.for_size(s)`, which scales focal and centre so the same coefficients
    frame the face identically.
    """

    focal: float = 1015.0
    center: float = 112.0
    distance: float = 10.0
    image_size: int = 224

    @classmethod
    def for_size(cls, size: int) -> "Camera":
        s = size / 224.0
        return cls(focal=1015.0 * s, center=112.0 * s, image_size=size)
