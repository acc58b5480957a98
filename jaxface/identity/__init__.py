"""Face-recognition networks for the perceptual (identity) loss of the paper.

- `dlib_format`: reads dlib's serialized face-recognition ResNet (the file is parsed, never run)
- `network`: that network in Flax (the default: installed by the [detect] extra, no download)
- `arcface`: ArcFace's iresnet in Flax and its PyTorch weight layout
- `convert`: `jaxface convert-identity backbone.pth` and the weights folder it writes
- `align`: the similarity alignment onto each network's template (differentiable warp)
- `loss`: `IdentityNet`, `Identity`, `load_identity`, the perceptual loss
"""

from jaxface.identity.loss import DEFAULT_WEIGHT, Identity, IdentityNet, cosine_distance, load_identity, perceptual_loss

__all__ = ["DEFAULT_WEIGHT", "Identity", "IdentityNet", "cosine_distance", "load_identity", "perceptual_loss"]
