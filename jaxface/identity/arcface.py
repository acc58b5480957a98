"""ArcFace's iresnet backbone (insightface arcface_torch, as vendored by Deep3DFaceRecon_pytorch
under models/arcface_torch) in Flax, and conversion of its PyTorch weights.

IResNet (112x112 RGB in [-1, 1], 2 * x - 1 of a 0-1 chip): 3x3 conv 64, BN, PReLU; four
levels of IBasicBlocks at widths 64, 128, 256, 512 (iresnet50: 3, 4, 14, 3 blocks;
iresnet100: 3, 13, 30, 3), each block BN, 3x3 conv, BN, PReLU, 3x3 conv (stride 2 in a
level's first block), BN, plus a shortcut (1x1 conv stride 2 + BN in the first block); then
BN, flatten (PyTorch's channel-major order: the fc kernel is permuted to NHWC at conversion),
fc 25088 -> 512 and a BatchNorm1d. Eval mode: BatchNorm uses its running statistics (eps 1e-5).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

WIDTHS = (64, 128, 256, 512)
DEPTHS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3),
          "r200": (6, 26, 60, 6)}
INPUT_SIZE = 112
FINAL_SIDE = INPUT_SIZE // 16  # four stride-2 levels: 7


@dataclasses.dataclass(frozen=True)
class IResNetConfig:
    """layers: blocks per level; features: embedding width (512 in arcface_torch)."""

    layers: tuple[int, ...] = DEPTHS["r50"]
    features: int = 512

    @property
    def name(self) -> str:
        return next((f"iresnet{k[1:]}" for k, v in DEPTHS.items() if v == self.layers),
                    "iresnet(" + ",".join(map(str, self.layers)) + ")")

    def to_json(self) -> dict:
        return {"layers": list(self.layers), "features": self.features}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "IResNetConfig":
        try:
            layers, features = tuple(int(n) for n in d["layers"]), int(d["features"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not an iresnet config: {d!r} ({e})") from e
        if len(layers) != 4 or min(layers) < 1 or max(layers) > 100 or not 1 <= features <= 4096:
            raise ValueError(f"not an iresnet config: layers {layers}, features {features}")
        return cls(layers, features)


class PReLU(nn.Module):
    @nn.compact
    def __call__(self, x):
        alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],))
        return jnp.where(x >= 0, x, alpha * x)


def _bn(name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)


def _conv(features: int, size: int, stride: int, name: str) -> nn.Conv:
    pad = size // 2
    return nn.Conv(features, (size, size), (stride, stride), padding=[(pad, pad), (pad, pad)], use_bias=False,
                   name=name)


class IBasicBlock(nn.Module):
    width: int
    first: bool  # stride 2 and a projection shortcut

    @nn.compact
    def __call__(self, x):
        y = _conv(self.width, 3, 1, "conv1")(_bn("bn1")(x))
        y = PReLU(name="prelu")(_bn("bn2")(y))
        y = _bn("bn3")(_conv(self.width, 3, 2 if self.first else 1, "conv2")(y))
        if self.first:
            x = _bn("downsample_bn")(_conv(self.width, 1, 2, "downsample_conv")(x))
        return y + x


class IResNet(nn.Module):
    """f32[B, 112, 112, 3] in [-1, 1] -> f32[B, features]."""

    config: IResNetConfig = IResNetConfig()

    @nn.compact
    def __call__(self, x):
        x = PReLU(name="prelu")(_bn("bn1")(_conv(64, 3, 1, "conv1")(x)))
        for i, (blocks, width) in enumerate(zip(self.config.layers, WIDTHS)):
            for j in range(blocks):
                x = IBasicBlock(width, j == 0, name=f"layer{i + 1}_{j}")(x)
        x = _bn("bn2")(x).reshape(x.shape[0], -1)
        return _bn("features")(nn.Dense(self.config.features, name="fc")(x))


def abstract_variables(config: IResNetConfig) -> dict:
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(lambda: IResNet(config).init(jax.random.key(0), jnp.zeros(x.shape)))


# ----------------------------------------------------------------------------- PyTorch names

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_OIHW_TO_HWIO = (2, 3, 1, 0)


def config_from_state(shapes: Mapping[str, tuple[int, ...]], what: str) -> IResNetConfig:
    """The iresnet depth and width of a state dict (its blocks per level, its fc width)."""
    blocks = [len({int(m.group(1)) for k in shapes if (m := re.match(rf"layer{i}\.(\d+)\.conv1\.weight$", k))})
              for i in range(1, 5)]
    fc = tuple(shapes.get("fc.weight", ()))
    if min(blocks) == 0 or len(fc) != 2:
        raise ValueError(f"{what}: no iresnet backbone found (blocks per level {blocks}, fc {fc}); expected "
                         "an arcface_torch backbone.pth (iresnet50 or iresnet100)")
    return IResNetConfig(tuple(blocks), fc[0])


def name_table(config: IResNetConfig) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...] | None]]:
    """PyTorch name -> (collection, module path + leaf, axis permutation) for every tensor but fc.weight."""
    table = {}

    def conv(torch_name, path):
        table[f"{torch_name}.weight"] = ("params", (*path, "kernel"), _OIHW_TO_HWIO)

    def bn(torch_name, path):
        for t, (coll, leaf) in _BN.items():
            table[f"{torch_name}.{t}"] = (coll, (*path, leaf), None)

    conv("conv1", ("conv1",))
    bn("bn1", ("bn1",))
    table["prelu.weight"] = ("params", ("prelu", "alpha"), None)
    for i, blocks in enumerate(config.layers):
        for j in range(blocks):
            t, p = f"layer{i + 1}.{j}", f"layer{i + 1}_{j}"
            for k in (1, 2, 3):
                bn(f"{t}.bn{k}", (p, f"bn{k}"))
            conv(f"{t}.conv1", (p, "conv1"))
            conv(f"{t}.conv2", (p, "conv2"))
            table[f"{t}.prelu.weight"] = ("params", (p, "prelu", "alpha"), None)
            if j == 0:
                conv(f"{t}.downsample.0", (p, "downsample_conv"))
                bn(f"{t}.downsample.1", (p, "downsample_bn"))
    bn("bn2", ("bn2",))
    bn("features", ("features",))
    table["fc.bias"] = ("params", ("fc", "bias"), None)
    return table


def fc_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch fc.weight f32[F, 512 * 7 * 7] over NCHW-flattened input -> Dense kernel over NHWC."""
    f = weight.shape[0]
    w = weight.reshape(f, WIDTHS[-1], FINAL_SIDE, FINAL_SIDE)
    return np.transpose(w, (2, 3, 1, 0)).reshape(-1, f)


def torch_state_to_variables(state: Mapping[str, Any], what: str = "state dict") -> tuple[dict, IResNetConfig]:
    """Flax variables + config from an arcface_torch iresnet state dict (torch tensors or numpy)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = config_from_state(shapes, what)
    table = name_table(config)
    known = set(table) | {"fc.weight"}
    missing = sorted(known - set(shapes))
    unexpected = [k for k in shapes if k not in known and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{what}: not an arcface_torch {config.name}: missing {missing[:4]} ({len(missing)}), "
                         f"unexpected {unexpected[:4]} ({len(unexpected)})")
    flat = jax.tree_util.tree_flatten_with_path(abstract_variables(config))[0]
    expected = {tuple(k.key for k in kp): tuple(a.shape) for kp, a in flat}

    def load(name):
        v = state[name]
        return v.detach().float().numpy() if hasattr(v, "detach") else np.asarray(v, np.float32)

    variables: dict = {}
    items = [(n, *table[n]) for n in table] + [("fc.weight", "params", ("fc", "kernel"), None)]
    for name, coll, path, perm in items:
        src = shapes[name]
        want = expected[(coll, *path)]
        if name == "fc.weight":
            ok = src == (want[1], want[0])
        else:
            ok = (tuple(src[p] for p in perm) if perm and len(src) == len(perm) else src) == want
        if not ok:
            raise ValueError(f"{what}: tensor {name!r} has shape {src}, which does not fit {'/'.join(path)} {want}")
        a = load(name)
        a = fc_kernel(a) if name == "fc.weight" else (np.transpose(a, perm) if perm else a)
        node = variables.setdefault(coll, {})
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(a, jnp.float32)
    return variables, config


def arcface_embed(variables: dict, chips, config: IResNetConfig):
    """f32[B, F] embeddings of aligned 112x112 RGB chips f32 0-1."""
    return IResNet(config).apply(variables, 2.0 * chips - 1.0)
