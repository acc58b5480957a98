"""Face formation (SPEC "Face formation"): coefficients -> shape, albedo, pose, normals,
SH-lit colours and projection. `face` holds the formulas and the batched path, `normals`
the vertex normals with their gather-only backward pass."""

from jaxface.formation.face import (
    AMBIENT_OFFSET,

    Face,
    Faces,
    face_albedo,
    face_normals,
    face_shape,
    form_batch,
    form_face,
    form_faces,
    keypoint_landmarks,
    per_face,
    posed_screens,
    project,
    rigid_transform,
    rotation_matrix,
    screen_coords,
    sh_basis,
    sh_terms,
    shade,
)
from jaxface.formation.normals import vertex_normals
from jaxface.model.region import Bases, Mesh, mesh_tables, model_bases, point_buf_is_complete

__all__ = [
    "AMBIENT_OFFSET", "Bases", "Face", "Faces", "Mesh", "face_albedo", "face_normals", "face_shape", "form_batch",
    "form_face", "form_faces", "keypoint_landmarks", "mesh_tables", "model_bases", "per_face", "point_buf_is_complete",
    "posed_screens", "project", "rigid_transform", "rotation_matrix", "screen_coords", "sh_basis", "sh_terms", "shade",
    "vertex_normals",
]
