"""Morphable models: the `FaceModel` pytree, loaders for the Basel files, the synthetic model."""

from jaxface.model.face_model import FaceModel

__all__ = ["FaceModel"]
