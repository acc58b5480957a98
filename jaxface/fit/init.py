"""Closed-form starting points of a fit: head pose from landmarks, light from pixels."""

from __future__ import annotations

import jax.numpy as jnp

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.conventions import five_from_68
from jaxface.formation import AMBIENT_OFFSET, Bases, form_batch, sh_terms
from jaxface.model.face_model import FaceModel
from jaxface.render import Samples, interpolate_samples


def closed_form_pose(model: FaceModel, target, camera: Camera = Camera()):
    """(angle f32[3], trans f32[3]) of the mean face from landmarks f32[K, 2] (v up, K = 68
    or 5) by a scaled-orthographic fit: affine 2x3 map of the centred 3D keypoints,
    orthonormalized; the scale gives the distance (t_z = distance - focal / scale)."""
    pts3 = model.mean_shape[model.keypoints]
    if target.shape[0] == 5:
        pts3 = five_from_68(pts3)
    mu3, mu2 = jnp.mean(pts3, 0), jnp.mean(target, 0)
    x3, x2 = pts3 - mu3, target - mu2
    affine = jnp.linalg.solve(x3.T @ x3, x3.T @ x2).T  # [2, 3]
    u, s, vt = jnp.linalg.svd(affine, full_matrices=False)
    r12 = u @ vt
    rot = jnp.concatenate([r12, jnp.cross(r12[0], r12[1])[None]], axis=0)
    scale = jnp.mean(s)
    # R = Rz Ry Rx: R[2,0] = -sin y, R[2,1] = cos y sin x, R[2,2] = cos y cos x, R[1,0] = sin z cos y.
    angle = jnp.stack(
        [
            jnp.arctan2(rot[2, 1], rot[2, 2]),
            jnp.arcsin(jnp.clip(-rot[2, 0], -1.0, 1.0)),
            jnp.arctan2(rot[1, 0], rot[0, 0]),
        ]
    )
    tz = camera.distance - camera.focal / scale
    txy = (mu2 - camera.center) / scale - (rot @ mu3)[:2]
    return angle, jnp.concatenate([txy, tz[None]])


def solve_light(bases: Bases, coeffs: Coeffs, samples: Samples, camera: Camera, ridge):
    """gamma f32[B, 27] minimizing the squared colour error at the pixel samples, which is
    linear in gamma: colour_c = sum_k b_k albedo_kc (Y_k . (gamma_c + 0.8 e_0)) over the
    pixel's corners (ridge-regularized per channel, relative to the Gram matrix's trace)."""
    faces = form_batch(bases, coeffs, camera)
    feats = tuple(a * y for a in faces.albedo for y in sh_terms(*faces.normals))  # 27 x [P, B], c-major
    pix = jnp.stack(interpolate_samples(feats, faces.screen(camera), samples))
    pix = pix.reshape(3, 9, *pix.shape[1:])  # [3, 9, B, K]
    rhs = samples.target - AMBIENT_OFFSET * pix[:, 0]  # [3, B, K]
    a = pix * (samples.weight > 0)
    gram = jnp.einsum("ckbs,clbs->bckl", a, pix)  # [B, 3, 9, 9]
    reg = ridge * (jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None] / 9.0 + 1e-6) * jnp.eye(9)
    gamma = jnp.linalg.solve(gram + reg, jnp.einsum("ckbs,cbs->bck", a, rhs)[..., None])[..., 0]
    return gamma.reshape(-1, 27)
