"""R-Net: Flax network, weight conversion parity (PyTorch epoch_20.pth, TF FaceReconModel.pb), checkpoints.

The PyTorch side is a plain torch.nn R-Net (`jaxface.rnet.torch_reference`, no torchvision)
with random weights, random BN statistics and non-zero heads; the TF side is a synthesized
GraphDef with slim variable names, checked against the torch slim-layout forward.
Inputs are real face crops aligned from tests/data/images.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.align import align_image, load_image, read_landmarks
from jaxface.coeffs import Coeffs
from jaxface.rnet import (RNet, RNetConfig, convert_tf, convert_torch, convert_weights_cli, init_rnet,
                          load_rnet, predict, save_rnet)

torch = pytest.importorskip("torch")
from jaxface.rnet.torch_reference import TorchRNet, randomize_  # noqa: E402

DATA = Path(__file__).parent / "data" / "images"
RTOL = 1e-4
BF16_TOL = 1e-2  # measured 2e-3 (bf16 has an 8-bit mantissa; the error accumulates over 53 layers)


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """f32[2, 224, 224, 3] RGB 0-1, two real aligned faces."""
    names = ["000002", "015259"]
    return np.stack([align_image(load_image(DATA / f"{n}.jpg"), read_landmarks(DATA / f"{n}.txt")).image
                     for n in names]).astype(np.float32) / 255.0


def torch_forward(net, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2).contiguous()).numpy()


# ----------------------------------------------------------------------------- PyTorch path

@pytest.fixture(scope="module")
def torch_net():
    return randomize_(TorchRNet("torch"), seed=0)


@pytest.fixture(scope="module")
def pth_file(torch_net, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pth") / "epoch_20.pth"
    torch.save({"net_recon": torch_net.state_dict(), "epoch": 20}, path)
    return path


@pytest.fixture(scope="module")
def converted(pth_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights") / "rnet"
    assert convert_weights_cli([str(pth_file), "--out", str(out)]) == 0
    return out, *load_rnet(out)


@pytest.fixture(scope="module")
def flax_out(converted, crops):
    _, variables, config = converted
    return np.asarray(predict(variables, crops, config))


def test_torch_parity_on_face_crops(torch_net, crops, flax_out):
    ref = torch_forward(torch_net, crops)
    assert np.abs(ref).max() > 1.0  # non-trivial output (non-zero heads)
    err = rel_err(flax_out, ref)
    print(f"torch parity: max |diff| / max |ref| = {err:.2e}")
    np.testing.assert_allclose(flax_out, ref, rtol=RTOL, atol=RTOL * np.abs(ref).max())


def test_converted_metadata(converted, pth_file):
    out, _, config = converted
    assert config == RNetConfig(variant="torch", input="rgb01", bn_eps=1e-5, dtype="float32")
    meta = json.loads((out / "rnet.json").read_text())
    assert meta["source"]["format"] == "pytorch" and meta["source"]["file"] == "epoch_20.pth"
    assert len(meta["source"]["sha256"]) == 64


def test_shapes_dtypes_and_coeffs(converted, flax_out, crops):
    _, variables, config = converted
    assert flax_out.shape == (2, 257) and flax_out.dtype == np.float32
    c = Coeffs.from_vector(flax_out)
    assert c.id.shape == (2, 80) and c.trans.shape == (2, 3)
    # uint8 crops are scaled like float 0-1 ones
    u8 = np.round(crops * 255).astype(np.uint8)
    np.testing.assert_allclose(np.asarray(predict(variables, u8, config)), flax_out, rtol=1e-5,
                               atol=1e-5 * np.abs(flax_out).max())


def test_batch_size_independence(converted, crops, flax_out):
    _, variables, config = converted
    single = np.asarray(predict(variables, crops[1:2], config))
    assert rel_err(single[0], flax_out[1]) < 1e-5


def test_bfloat16_close_to_float32(converted, crops, flax_out):
    _, variables, config = converted
    out = np.asarray(predict(variables, crops, dataclasses.replace(config, dtype="bfloat16")))
    assert out.dtype == np.float32
    err = rel_err(out, flax_out)
    print(f"bf16 vs f32: max |diff| / max |ref| = {err:.2e}")
    assert err < BF16_TOL


@pytest.mark.parametrize("shape", [(2, 112, 112, 8), (1, 111, 111, 4), (1, 7, 8, 3)])
def test_max_pool_equals_reduce_window(shape):
    """The nine-slice max pool equals flax's reduce-window pool, values and gradients, in both
    layouts' padding (torch: 1 each side; slim: 'SAME', padding after for even sizes)."""
    import flax.linen as nn

    from jaxface.rnet.network import _max_pool

    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    def same(n):  # TF 'SAME' for a 3x3/2 window
        total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
        return total // 2, total - total // 2

    for variant, pads in (("torch", ((1, 1), (1, 1))), ("slim", (same(shape[1]), same(shape[2])))):
        ref = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)  # noqa: E731
        np.testing.assert_array_equal(_max_pool(x, variant), ref(x))
        w = jnp.asarray(np.random.default_rng(1).standard_normal(ref(x).shape).astype(np.float32))
        grads = [jax.grad(lambda x: jnp.sum(f(x) * w))(x) for f in (lambda x: _max_pool(x, variant), ref)]
        np.testing.assert_allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("shape,k,stride", [((2, 14, 14, 16), 3, 1), ((1, 14, 13, 8), 3, 2), ((1, 7, 7, 4), 3, 1),
                                            ((2, 9, 11, 3), 5, 2), ((1, 8, 8, 5), 1, 2)])
def test_row_products_equal_convolution(shape, k, stride):
    """The 3x3 convolutions of bfloat16 R-Net on a CPU run as K products over column shifts:
    values and gradients equal XLA's convolution with the same symmetric padding."""
    from jaxface.rnet.network import _row_products

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    kernel = jnp.asarray(rng.standard_normal((k, k, shape[-1], 6)).astype(np.float32))
    pad = (k - 1) // 2

    def ref(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=jax.lax.Precision.HIGHEST)

    out = _row_products(x, kernel, stride)
    np.testing.assert_allclose(out, ref(x, kernel), rtol=1e-5, atol=1e-5)
    w = jnp.asarray(rng.standard_normal(out.shape).astype(np.float32))
    grads = [jax.grad(lambda x, kk: jnp.sum(f(x, kk) * w), argnums=(0, 1))(x, kernel)
             for f in (lambda x, kk: _row_products(x, kk, stride), ref)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_train_mode_updates_batch_stats(converted, crops):
    _, variables, config = converted
    out, updates = RNet(config).apply(variables, crops, train=True, mutable=["batch_stats"])
    assert out.shape == (2, 257)
    old = variables["batch_stats"]["bn1"]["mean"]
    new = updates["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(old, new)


def test_init_rnet_zero_heads():
    variables = init_rnet(jax.random.key(0), "torch")
    assert np.all(np.asarray(variables["params"]["head"]["kernel"]) == 0)
    out = predict(variables, jnp.zeros((1, 224, 224, 3)), RNetConfig())
    assert out.shape == (1, 257) and np.all(np.asarray(out) == 0)


# ----------------------------------------------------------------------------- TF path

def slim_graph(net, bn_eps: float | None = None) -> bytes:
    """A frozen-GraphDef-like FaceReconModel.pb from a torch slim-layout net, names written out
    from slim's resnet_v1_50 scopes (not from the converter's tables); with `bn_eps`, each batch
    norm also gets its FusedBatchNorm node carrying that epsilon, as frozen TF1 graphs do."""
    from tensorboard.compat.proto import graph_pb2
    from tensorboard.util import tensor_util

    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    g = graph_pb2.GraphDef()

    def node(name, op, array=None):
        n = g.node.add()
        n.name, n.op = name, op
        if array is not None:
            n.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(np.asarray(array, np.float32)))
        return n

    def conv_bn(scope, torch_conv, torch_bn):
        node(f"{scope}/weights", "Const", sd[f"{torch_conv}.weight"].transpose(2, 3, 1, 0))
        for tf_name, t_name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                ("moving_variance", "running_var")):
            node(f"{scope}/BatchNorm/{tf_name}", "Const", sd[f"{torch_bn}.{t_name}"])
        if bn_eps is not None:
            node(f"{scope}/BatchNorm/FusedBatchNorm", "FusedBatchNorm").attr["epsilon"].f = bn_eps

    node("input_imgs", "Placeholder")
    conv_bn("resnet_v1_50/conv1", "backbone.conv1", "backbone.bn1")
    for b, n_units in enumerate((3, 4, 6, 3), 1):
        for u in range(1, n_units + 1):
            scope, mod = f"resnet_v1_50/block{b}/unit_{u}/bottleneck_v1", f"backbone.layer{b}.{u - 1}"
            for k in (1, 2, 3):
                conv_bn(f"{scope}/conv{k}", f"{mod}.conv{k}", f"{mod}.bn{k}")
            if u == 1:
                conv_bn(f"{scope}/shortcut", f"{mod}.downsample.0", f"{mod}.downsample.1")
    for h, name in enumerate(("fc-id", "fc-ex", "fc-tex", "fc-angles", "fc-gamma", "fc-XY", "fc-Z")):
        node(f"{name}/weights", "Const", sd[f"final_layers.{h}.weight"].transpose(2, 3, 1, 0))
        node(f"{name}/biases", "Const", sd[f"final_layers.{h}.bias"])
    # the release with a 258th output (focal length) has one more head; it must be ignored
    node("fc-f/weights", "Const", np.ones((1, 1, 2048, 1)))
    node("fc-f/biases", "Const", np.ones((1,)))
    node("coeff", "ConcatV2")
    return g.SerializeToString()


def test_tf_parity_on_face_crops(crops, tmp_path):
    pytest.importorskip("tensorboard")
    net = randomize_(TorchRNet("slim"), seed=1)
    for m in net.modules():  # TF1's fused batch norm raises slim's 1e-5 to 1.001e-5
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1.001e-5
    pb = tmp_path / "FaceReconModel.pb"
    pb.write_bytes(slim_graph(net, bn_eps=1.001e-5))
    out_dir = convert_tf(pb, tmp_path / "rnet")
    variables, config = load_rnet(out_dir)
    assert config == RNetConfig(variant="slim", input="bgr255", bn_eps=1.001e-5)  # read from the graph
    meta = json.loads((out_dir / "rnet.json").read_text())
    assert meta["source"]["ignored_heads"] == ["fc-f"] and meta["source"]["output_node"] == "coeff"
    ref = torch_forward(net, crops[..., ::-1] * 255.0)  # the TF model sees BGR 0-255
    assert np.abs(ref).max() > 1.0
    out = np.asarray(predict(variables, crops, config))  # callers pass RGB 0-1
    err = rel_err(out, ref)
    print(f"tf (slim) parity: max |diff| / max |ref| = {err:.2e}")
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=RTOL * np.abs(ref).max())


def test_tf_batch_norm_epsilon_and_folded_graphs(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto import graph_pb2
    from tensorboard.util import tensor_util

    from jaxface.rnet.convert_tf import graph_bn_epsilon

    def graph(*nodes):
        g = graph_pb2.GraphDef()
        for name, op, value in nodes:
            n = g.node.add()
            n.name, n.op = name, op
            if op == "FusedBatchNormV3":
                n.attr["epsilon"].f = value
            elif value is not None:
                n.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(np.asarray(value, np.float32)))
        return g

    mixed = graph(("a/BatchNorm/FusedBatchNorm", "FusedBatchNormV3", 1e-3),
                  ("b/BatchNorm/FusedBatchNorm", "FusedBatchNormV3", 1e-5))
    with pytest.raises(ValueError, match=r"different epsilons \[1e-05, 0.001\]"):
        graph_bn_epsilon(mixed.node)
    unfused = graph(("s/conv1/BatchNorm/batchnorm/add/y", "Const", 1e-3))
    assert graph_bn_epsilon(unfused.node) == 1e-3 and graph_bn_epsilon(graph().node) is None
    # optimize_for_inference folds each batch norm into its conv: scaled weights, a
    # `<conv>_bn_offset` Const and a BiasAdd that keeps the batch norm's name.
    folded = graph(("resnet_v1_50/conv1/weights", "Const", np.ones((7, 7, 3, 64))),
                   ("resnet_v1_50/conv1/Conv2D", "Conv2D", None),
                   ("resnet_v1_50/conv1/Conv2D_bn_offset", "Const", np.zeros(64)),
                   ("resnet_v1_50/conv1/BatchNorm/FusedBatchNorm", "BiasAdd", None))
    pb = tmp_path / "folded.pb"
    pb.write_bytes(folded.SerializeToString())
    with pytest.raises(ValueError, match="batch norms were folded into the convolutions.*optimize_for_inference"):
        convert_tf(pb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_slim_layout_differs_from_torch_layout(torch_net, crops):
    """Same weights, other layout -> other output: the variant switch really matters."""
    slim = TorchRNet("slim")
    slim.load_state_dict(torch_net.state_dict())
    slim.eval()
    assert rel_err(torch_forward(slim, crops), torch_forward(torch_net, crops)) > 1e-2


# ----------------------------------------------------------------------------- errors

def test_missing_weights_folder_explains(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_rnet(tmp_path / "nothing")
    msg = str(e.value)
    assert "epoch_20.pth" in msg and "FaceReconModel.pb" in msg and "jaxface convert-weights" in msg


def test_load_rnet_on_unconverted_file(pth_file):
    with pytest.raises(ValueError, match="convert-weights"):
        load_rnet(pth_file)


def test_missing_source_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="epoch_20.pth"):
        convert_torch(tmp_path / "epoch_20.pth", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="FaceReconModel.pb"):
        convert_tf(tmp_path / "FaceReconModel.pb", tmp_path / "out")


def test_wrong_shape_is_named(torch_net, tmp_path):
    sd = dict(torch_net.state_dict())
    sd["backbone.layer2.0.conv2.weight"] = torch.zeros(128, 128, 5, 5)
    path = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": sd}, path)
    with pytest.raises(ValueError, match=r"layer2\.0\.conv2\.weight.*\(128, 128, 5, 5\)"):
        convert_torch(path, tmp_path / "out")


def test_missing_and_unexpected_tensors(torch_net, tmp_path):
    sd = dict(torch_net.state_dict())
    del sd["final_layers.6.bias"]
    torch.save({"net_recon": sd}, tmp_path / "a.pth")
    with pytest.raises(ValueError, match="missing"):
        convert_torch(tmp_path / "a.pth", tmp_path / "out")
    sd = dict(torch_net.state_dict(), **{"backbone.fc.weight": torch.zeros(3, 3)})
    torch.save({"net_recon": sd}, tmp_path / "b.pth")
    with pytest.raises(ValueError, match="unexpected"):
        convert_torch(tmp_path / "b.pth", tmp_path / "out")
    torch.save({"model": {}}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="net_recon"):
        convert_torch(tmp_path / "c.pth", tmp_path / "out")


class _NotATensor:
    pass


def test_refuses_arbitrary_pickles_and_junk(tmp_path):
    torch.save({"net_recon": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        convert_torch(tmp_path / "evil.pth", tmp_path / "out")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="epoch_20.pth"):
        convert_torch(tmp_path / "junk.pth", tmp_path / "out")
    (tmp_path / "empty.pb").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        convert_tf(tmp_path / "empty.pb", tmp_path / "out")
    pytest.importorskip("tensorboard")
    (tmp_path / "junk.pb").write_bytes(b"\xff\xff\xff\xff junk")
    with pytest.raises(ValueError, match="FaceReconModel.pb|GraphDef"):
        convert_tf(tmp_path / "junk.pb", tmp_path / "out")


def test_optional_deps_have_install_hints(monkeypatch, tmp_path):
    import sys

    (tmp_path / "epoch_20.pth").write_bytes(b"x")
    (tmp_path / "FaceReconModel.pb").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"jaxface\[torch\]"):
        convert_torch(tmp_path / "epoch_20.pth")
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"jaxface\[tf\]"):
        convert_tf(tmp_path / "FaceReconModel.pb")


def test_save_rnet_rejects_wrong_tree(tmp_path):
    variables = init_rnet(jax.random.key(0))
    variables["params"]["head"]["bias"] = jnp.zeros((258,))
    with pytest.raises(ValueError, match="do not match"):
        save_rnet(variables, RNetConfig(), tmp_path / "rnet")


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        convert_weights_cli(["--help"])
    assert e.value.code == 0 and "epoch_20.pth" in capsys.readouterr().out
    assert convert_weights_cli([str(tmp_path / "missing.pth")]) == 1
    assert "not found" in capsys.readouterr().err
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert convert_weights_cli([str(tmp_path / "weights.bin")]) == 2


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        RNetConfig(variant="tf")
    with pytest.raises(ValueError, match="dtype"):
        RNetConfig(dtype="float16")
    assert RNetConfig.for_variant("slim").input == "bgr255"
