"""The fitting objective of a batch: coefficients -> formation -> rendering -> loss terms.

Two stages read different data (`fit.loop`): the landmark stage forms the 68 keypoint
vertices only; the photometric stage forms the photometric region's vertices
(`model.region`), batch minor, and renders them at the pixel samples of the last z-buffer
refresh (`region_samples`). Both end in `losses.objective`, as training does.
`face_terms` is the same objective of one face through the full-image renderer: the
reference the batched path is tested against, and `face_loss`.

With an identity network (`fit(..., identity=...)`), the photometric stage adds the
perceptual term: the region's faces are rendered at every pixel of the crop (barycentrics
recomputed for the triangle ids of the last z-buffer refresh, as the samples are),
composited over the photo and compared with the photo's embedding (`identity_terms`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxface import losses
from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.formation import Bases, form_batch, form_face, keypoint_landmarks, screen_coords
from jaxface.identity.loss import cosine_distance
from jaxface.losses import AlbedoPrior, LossWeights
from jaxface.model.face_model import FaceModel
from jaxface.model.region import Region
from jaxface.render import Samples, batch_samples, interpolate, interpolate_samples, pixel_samples
from jaxface.render.barycentric import pixel_barycentrics
from jaxface.render.interpolate import blend


class IdentityData(NamedTuple):
    """What the identity term reads (`identity_data`).

    net: the frozen network, `net(variables, images, landmarks)` (jaxface.identity.IdentityNet)
    variables: its weights; target: f32[B, D] the photos' embeddings
    images: f32[B, S, S, 3] the photos; landmarks: f32[B, K, 2] top-down, for the alignment
    tri_ids: i32[B, S, S] the region's triangles of the last z-buffer refresh, -1 elsewhere
    tris: i32[T, 3] the model's triangles in the region's vertex ids
    """

    net: object
    variables: object
    target: jax.Array
    images: jax.Array
    landmarks: jax.Array
    tri_ids: jax.Array
    tris: jax.Array


class PhotoData(NamedTuple):
    """What the photometric stage reads besides the coefficients.

    bases: formation.Bases on the region (`model.region.region_bases`)
    prior: losses.AlbedoPrior of the model
    samples: Samples of the last z-buffer refresh, in the bases' vertex ids
    identity: IdentityData | None, the perceptual term's (None: no such term)
    """

    bases: Bases
    prior: AlbedoPrior
    samples: Samples
    identity: IdentityData | None = None


def region_samples(model: FaceModel, region: Region, tri_ids, images, size: int) -> Samples:
    """Up to `size` pixels of each image's photometric region (tri_ids i32[B, S, S], images
    f32[B, S, S, 3]), with corners in the region's vertex ids."""

    def one(tri_id, image):
        keep = losses.region_mask(model, tri_id) > 0
        return pixel_samples(tri_id, model.tris, keep, image, size)

    corners, *rest = jax.vmap(one)(tri_ids, images)
    return batch_samples(region.local[corners], *rest, region.vertices.shape[0])


def identity_data(model: FaceModel, region: Region, net, variables, target, images, landmarks,
                  tri_ids) -> IdentityData:
    """`IdentityData` at a z-buffer refresh (tri_ids i32[B, S, S] of the whole model)."""
    in_region = jax.vmap(lambda t: losses.region_mask(model, t))(tri_ids) > 0
    return IdentityData(net, variables, target, images, landmarks, jnp.where(in_region, tri_ids, -1),
                        region.local[model.tris])


def identity_composite(data: IdentityData, faces, camera: Camera):
    """f32[B, S, S, 3]: the region of formed faces (`form_batch` on the region) rendered over the photos."""
    verts = jnp.stack(faces.screen(camera), axis=-1).transpose(1, 0, 2)  # [B, P, 3]
    colors = jnp.stack(faces.colors, axis=-1).transpose(1, 0, 2)

    def one(v, c, tri_id, photo):
        bary, _ = pixel_barycentrics(v, data.tris, tri_id)
        rgb = blend(c, data.tris, tri_id, bary)
        return jnp.where((tri_id >= 0)[..., None], jnp.clip(rgb, 0.0, 1.0), photo)

    return jax.vmap(one)(verts, colors, data.tri_ids, data.images)


def identity_terms(data: IdentityData, faces, camera: Camera) -> jax.Array:
    """f32[B]: 1 - cos(embedding of the composite, the photo's embedding)."""
    rendered = identity_composite(data, faces, camera)
    return cosine_distance(data.net(data.variables, rendered, data.landmarks), data.target)


def landmark_terms(model: FaceModel, coeffs: Coeffs, targets, camera: Camera) -> dict:
    """Unweighted data terms of the landmark stage, each f32[B]; targets f32[B, K, 2] v up."""
    lm68 = jax.vmap(keypoint_landmarks, in_axes=(None, 0, None))(model, coeffs, camera)
    return {"landmark": jax.vmap(losses.landmark_term)(lm68, targets),
            "gamma": jax.vmap(losses.lighting_regularizer)(coeffs.gamma)}


def photo_terms(data: PhotoData, coeffs: Coeffs, targets, camera: Camera) -> dict:
    """Unweighted data terms of the photometric stage, each f32[B], at the pixel samples."""
    faces = form_batch(data.bases, coeffs, camera)
    rendered = interpolate_samples(faces.colors, faces.screen(camera), data.samples)
    lm68 = jnp.stack([c[data.bases.keypoints].T for c in faces.uv], axis=-1)  # [B, 68, 2]
    terms = {"photo": losses.photometric_per_image(rendered, data.samples.target, data.samples.weight),
             "landmark": jax.vmap(losses.landmark_term)(lm68, targets),
             "gamma": jax.vmap(losses.lighting_regularizer)(coeffs.gamma)}
    if data.identity is not None:
        terms["identity"] = identity_terms(data.identity, faces, camera)
    return terms


def expand(params: Coeffs, batch: int) -> Coeffs:
    """Coefficients with shared fields (no batch axis, `fit_set`) broadcast to [B, w]."""
    return Coeffs(*(x if x.ndim == 2 else jnp.broadcast_to(x, (batch, x.shape[0])) for x in params))


def objective(model: FaceModel, params: Coeffs, targets, valid, photo: PhotoData | None, weights: LossWeights,
              camera: Camera, temporal=None):
    """(total f32[], per-image objective f32[B]) of the current stage; images not `valid`
    count zero. params: Coeffs[B], or with id and tex shared (no batch axis, `fit_set`):
    their priors then count once for the set. temporal: None, or per-group weights
    (`fit.TemporalWeights`) of a smoothness prior over the batch in time order (video)."""
    shared = params.id.ndim == 1
    coeffs = expand(params, targets.shape[0])
    terms = landmark_terms(model, coeffs, targets, camera) if photo is None else photo_terms(photo, coeffs, targets, camera)
    terms["reg"] = losses.coeff_prior(coeffs, weights, ("exp",) if shared else ("id", "exp", "tex"))
    if photo is not None and not shared:
        terms["albedo"] = losses.albedo_regularizer_per_image(photo.prior, coeffs.tex)
    per_image = jnp.where(valid, losses.objective(terms, weights), 0.0)
    total = jnp.sum(per_image)
    if shared:
        set_terms = {"reg": losses.coeff_prior(params, weights, ("id", "tex"))}
        if photo is not None:
            set_terms["albedo"] = losses.albedo_regularizer_per_image(photo.prior, params.tex)
        total = total + losses.objective(set_terms, weights)
    if temporal is not None:
        total = total + sum(getattr(temporal, g) * losses.second_difference(getattr(coeffs, g), valid)
                            for g in ("exp", "angle", "gamma", "trans"))
    return total, per_image


def face_terms(model: FaceModel, coeffs: Coeffs, image, target, fragments, camera: Camera) -> dict:
    """The photometric stage's unweighted terms for ONE face through the full-image renderer.

    image f32[S, S, 3] 0-1; target f32[K, 2] v up; fragments: the z-buffer to interpolate in."""
    face = form_face(model, coeffs, camera)
    verts = screen_coords(face.uv, face.depth, camera)
    rendered = jnp.clip(interpolate(face.colors, fragments, model.tris, verts), 0.0, 1.0)
    mask = lax.stop_gradient(losses.region_mask(model, fragments.tri_id))
    return {"photo": losses.photometric_loss(rendered, image, mask),
            "landmark": losses.landmark_term(face.landmarks, target),
            "albedo": losses.albedo_regularizer(face.albedo, model.skin_mask),
            "gamma": losses.lighting_regularizer(coeffs.gamma)}
