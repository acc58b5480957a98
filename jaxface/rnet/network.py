"""R-Net: ResNet-50 + seven 1x1 heads regressing the 257 face coefficients (Flax linen, NHWC).

Two layouts share one parameter tree (names follow torchvision):
- `variant="torch"` (Deep3DFaceRecon_pytorch, torchvision ResNet-50 v1.5): the stride of
  layers 2-4 sits on the 3x3 conv of the FIRST bottleneck, whose projection shortcut is a
  strided 1x1 conv; max pool 3x3/2 with padding 1 on both sides. Input RGB 0-1.
- `variant="slim"` (Deep3DFaceReconstruction, TF-slim resnet_v1_50): the stride of blocks
  1-3 sits on the 3x3 conv of the LAST unit, whose shortcut is plain subsampling; the first
  unit's projection has stride 1; max pool 'SAME' (padding only after, for even sizes).
  Input BGR 0-255.
Both: 7x7/2 stem padded 3 each side (slim's `conv2d_same` pads explicitly like torch), BN
eps 1e-5 (`resnet_arg_scope` default), global average pool, heads id 80, exp 64, tex 80,
angle 3, gamma 27, trans-xy 2, trans-z 1 concatenated in that order (stored as one
2048x257 kernel, which is exactly the concatenation of the seven 1x1 convs).

The 1x1 convolutions (most of the FLOPs) are `jnp.dot` over the channel axis, stride 2 by
slicing: on this CPU XLA's dot beats its convolution path (DEPENDENCIES.md). Every product
asks for a float32 result: with bfloat16 operands that is the native bf16 dot (a bf16 result
would make XLA convert and multiply in float32).
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxface.coeffs import NUM_COEFFS

# (bottleneck width, number of units) of ResNet-50's four stages.
STAGES: tuple[tuple[int, int], ...] = ((64, 3), (128, 4), (256, 6), (512, 3))
EXPANSION = 4
FEATURES = 512 * EXPANSION  # 2048, the pooled feature width
# Head widths in the order of `final_layers` / the TF `fc-*` scopes; they concatenate to 257.
HEAD_WIDTHS: tuple[int, ...] = (80, 64, 80, 3, 27, 2, 1)
VARIANTS = ("torch", "slim")
INPUT_CONVENTIONS = ("rgb01", "bgr255")
_DEFAULT_INPUT = {"torch": "rgb01", "slim": "bgr255"}


@dataclasses.dataclass(frozen=True)
class RNetConfig:
    """How to build and feed R-Net; hashable, so it is a static argument of `predict`.

    variant: "torch" (stride on the first bottleneck) or "slim" (stride on the last unit).
    input: what the trained weights expect; `predict` converts the caller's RGB 0-1 to it.
    bn_eps: BatchNorm epsilon (1e-5 for torchvision and for slim's resnet_arg_scope).
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32). In bfloat16,
        activations and the operands of every convolution are bfloat16 and products accumulate
        in float32 (`preferred_element_type`): the form CPUs with AVX512-BF16/AMX and GPU
        tensor cores run natively, and the accumulation keeps the 2048-term sums accurate.
    """

    variant: Literal["torch", "slim"] = "torch"
    input: Literal["rgb01", "bgr255"] = "rgb01"
    bn_eps: float = 1e-5
    dtype: str = "float32"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"RNetConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.input not in INPUT_CONVENTIONS:
            raise ValueError(f"RNetConfig.input must be one of {INPUT_CONVENTIONS}, got {self.input!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"RNetConfig.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if not self.bn_eps > 0:
            raise ValueError(f"RNetConfig.bn_eps must be positive, got {self.bn_eps!r}")

    @classmethod
    def for_variant(cls, variant: str, **kw) -> "RNetConfig":
        """The config a variant's trained weights expect (input convention included)."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown R-Net variant {variant!r}; expected one of {VARIANTS}")
        return cls(variant=variant, input=kw.pop("input", _DEFAULT_INPUT[variant]), **kw)

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Conv1x1(nn.Module):
    """1x1 conv as a dot over channels; kernel stored HWIO (1, 1, Cin, Cout) like nn.Conv."""

    features: int
    stride: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # f[B, H, W, Cin] -> f[B, H', W', Cout]
        kernel = self.param(
            "kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            (1, 1, x.shape[-1], self.features), jnp.float32,
        )
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride, :]
        y = jnp.dot(x.astype(self.dtype), kernel[0, 0].astype(self.dtype), preferred_element_type=jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y


class ConvKxK(nn.Module):
    """KxK conv with explicit symmetric padding (PyTorch `padding=`, slim `conv2d_same`)."""

    features: int
    kernel_size: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            (k, k, x.shape[-1], self.features), jnp.float32,
        )
        pad = (k - 1) // 2
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if _conv_as_row_products(x.shape, k, self.stride, self.dtype):
            return _row_products(x, kernel, self.stride)
        return jax.lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32,
        )


def _conv_as_row_products(shape, k: int, stride: int, dtype) -> bool:
    """Where `_row_products` beat XLA's convolution (bfloat16 on a CPU: its convolutions gain
    nothing from bfloat16, its products do): 3x3 outputs of at most 14x14 at stride 1, 7x7 at stride 2."""
    out = (shape[1] - 1) // stride + 1
    return (jnp.dtype(dtype) == jnp.bfloat16 and k == 3 and jax.default_backend() == "cpu"
            and out <= (14 if stride == 1 else 7))


def _row_products(x, kernel, stride: int):
    """KxK convolution (padding (K-1)/2, float32 result) as K products: the K column shifts
    of the input side by side in channels, [B*H'*W', K*Cin] @ [K*Cin, Cout] for each kernel row.
    x: [B, H, W, Cin]; kernel: [K, K, Cin, Cout]."""
    k, pad = kernel.shape[0], (kernel.shape[0] - 1) // 2
    b, h, w, c = x.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    cols = jnp.concatenate([xp[:, :, dx : dx + stride * (wo - 1) + 1 : stride] for dx in range(k)], -1)
    out = sum(jnp.dot(cols[:, dy : dy + stride * (ho - 1) + 1 : stride].reshape(-1, k * c),
                      kernel[dy].reshape(k * c, -1), preferred_element_type=jnp.float32) for dy in range(k))
    return out.reshape(b, ho, wo, -1)


def _max_pool(x, variant: str):
    """3x3/2 max pool: torch pads 1 on both sides; slim's 'SAME' pads (total//2, rest).

    The maximum of nine strided slices: XLA's CPU reduce-window is slow in bfloat16."""
    if variant == "torch":
        pads = ((1, 1), (1, 1))
    else:
        def same(n):
            total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
            return (total // 2, total - total // 2)
        pads = (same(x.shape[1]), same(x.shape[2]))
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    ho, wo = (xp.shape[1] - 3) // 2 + 1, (xp.shape[2] - 3) // 2 + 1
    taps = [xp[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2, :] for i in range(3) for j in range(3)]
    return functools.reduce(jnp.maximum, taps)


class Bottleneck(nn.Module):
    """conv1 1x1 -> conv2 3x3 (carries the stride) -> conv3 1x1, + shortcut, ReLU.

    Shortcut: a 1x1 projection (`downsample`) when `project`, else identity subsampled by
    `stride` (slim's `resnet_utils.subsample`).
    """

    width: int
    stride: int
    project: bool
    bn_eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x, train: bool):
        bn = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=self.bn_eps,
                     dtype=self.dtype, param_dtype=jnp.float32)
        out_features = self.width * EXPANSION
        y = nn.relu(bn(name="bn1")(Conv1x1(self.width, dtype=self.dtype, name="conv1")(x)))
        y = nn.relu(bn(name="bn2")(ConvKxK(self.width, 3, self.stride, dtype=self.dtype, name="conv2")(y)))
        y = bn(name="bn3")(Conv1x1(out_features, dtype=self.dtype, name="conv3")(y))
        if self.project:
            shortcut = bn(name="downsample_bn")(
                Conv1x1(out_features, self.stride, dtype=self.dtype, name="downsample_conv")(x))
        else:
            shortcut = x[:, :: self.stride, :: self.stride, :]
        return nn.relu(y + shortcut)


def unit_strides(variant: str) -> list[list[int]]:
    """Stride of each bottleneck, per stage: total stride 32 in both layouts."""
    out = []
    for i, (_, n) in enumerate(STAGES):
        s = [1] * n
        if variant == "torch" and i > 0:
            s[0] = 2
        elif variant == "slim" and i < 3:
            s[-1] = 2
        out.append(s)
    return out


class RNet(nn.Module):
    """ResNet-50 backbone + concatenated heads: f[B, H, W, 3] (network input) -> f32[B, 257].

    Expects the input already in `config.input` convention; `predict` does the conversion.
    Variables: {"params", "batch_stats"}; `train=True` uses batch statistics and, with
    `mutable=["batch_stats"]`, updates the running ones (momentum 0.9 = torch's 0.1).
    """

    config: RNetConfig = RNetConfig()

    @nn.compact
    def __call__(self, x, train: bool = False):
        cfg = self.config
        dtype = cfg.jnp_dtype
        # The stem stays float32 in either dtype: with 3 input channels bfloat16 gains nothing
        # there, and its conversions cost.
        x = ConvKxK(64, 7, 2, dtype=jnp.float32, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=cfg.bn_eps,
                         dtype=jnp.float32, param_dtype=jnp.float32, name="bn1")(x)
        x = _max_pool(nn.relu(x), cfg.variant).astype(dtype)
        for i, ((width, _), strides) in enumerate(zip(STAGES, unit_strides(cfg.variant))):
            for j, s in enumerate(strides):
                x = Bottleneck(width, s, project=(j == 0), bn_eps=cfg.bn_eps, dtype=dtype,
                               name=f"layer{i + 1}_{j}")(x, train)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # global average pool, f32[B, 2048]
        head = Conv1x1(NUM_COEFFS, use_bias=True, dtype=jnp.float32, name="head")
        return head(x[:, None, None, :])[:, 0, 0, :]


def abstract_variables(config: RNetConfig) -> Any:
    """Shape/dtype tree of R-Net variables (float32), without allocating or compiling anything."""
    cfg = dataclasses.replace(config, dtype="float32")
    return jax.eval_shape(RNet(cfg).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))


def init_rnet(key: jax.Array, config: RNetConfig | str = "torch") -> dict:
    """Fresh variables {"params", "batch_stats"}: He-normal (fan-out) convs, BN identity, zero
    heads (as both references initialise them, so training starts from the mean face).
    `config` may be a variant name.

    Same distributions as `RNet.init`, but drawn as one normal vector and split: compiling
    flax's per-parameter random initialisers takes tens of seconds on a small CPU.
    """
    if isinstance(config, str):
        config = RNetConfig.for_variant(config)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_variables(config))
    names = [tuple(k.key for k in path) for path, _ in flat]
    is_conv = [n[-1] == "kernel" and n[-2] != "head" for n in names]
    sizes = [int(np.prod(leaf.shape)) if c else 0 for (_, leaf), c in zip(flat, is_conv)]
    noise = np.asarray(jax.random.normal(key, (sum(sizes),), jnp.float32))
    offsets = np.cumsum([0] + sizes)
    leaves = []
    for (_, leaf), name, conv, off in zip(flat, names, is_conv, offsets):
        if conv:
            kh, kw, _, cout = leaf.shape
            value = noise[off:off + leaf.size].reshape(leaf.shape) * np.sqrt(2.0 / (kh * kw * cout))
        elif name[-1] in ("scale", "var"):
            value = np.ones(leaf.shape, np.float32)
        else:  # BN bias / mean, head kernel and bias
            value = np.zeros(leaf.shape, np.float32)
        leaves.append(jnp.asarray(value, jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def to_network_input(images, config: RNetConfig):
    """RGB crops (uint8 0-255 or float 0-1) f[B, H, W, 3] -> f32 in the weights' convention."""
    images = jnp.asarray(images)
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    if config.input == "bgr255":
        x = x[..., ::-1] * 255.0
    return x


@partial(jax.jit, static_argnames=("config",))
def predict(variables: dict, images, config: RNetConfig = RNetConfig()) -> jax.Array:
    """Coefficients f32[B, 257] of RGB crops f[B, 224, 224, 3] (uint8, or float in 0-1).

    Eval mode (running BN statistics). Split with `jaxface.Coeffs.from_vector`.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"predict expects images of shape [B, H, W, 3] (RGB crops), got {images.shape}")
    return RNet(config).apply(variables, to_network_input(images, config), train=False).astype(jnp.float32)
