"""Convert the TensorFlow frozen graph `FaceReconModel.pb` (Deep3DFaceReconstruction).

Slim `resnet_v1_50/...` variables and `fc-*` heads are Const nodes; the graph is parsed with
the GraphDef protos shipped in tensorboard, no TensorFlow (`jaxface[tf]`). Heads beyond the
seven (one release has an eighth, a focal-length output making `coeff:0` 258 wide) are
ignored. The batch-norm epsilon is read from the graph; graphs whose batch norms were folded
into the convolutions are refused with that reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxface.rnet.checkpoint import save_rnet
from jaxface.rnet.convert import TF_HEADS, assemble_variables, check_source_file, file_sha256, slim_name_table
from jaxface.rnet.network import RNetConfig


def _import_tf_protos():
    try:
        from tensorboard.compat.proto import graph_pb2
        from tensorboard.util import tensor_util
    except ImportError as e:
        raise ImportError("converting a TensorFlow FaceReconModel.pb needs the GraphDef protos of "
                          "tensorboard: pip install 'jaxface[tf]'") from e
    return graph_pb2, tensor_util


def read_graph_consts(pb_path: str | Path) -> tuple[dict[str, Any], list[Any]]:
    """(Const name -> TensorProto, every NodeDef) of a frozen GraphDef, without decoding tensors."""
    graph_pb2, _ = _import_tf_protos()
    from google.protobuf.message import DecodeError

    path = check_source_file(pb_path, "FaceReconModel.pb")
    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(path.read_bytes())
    except DecodeError as e:
        raise ValueError(f"{path} is not a TensorFlow GraphDef ({e}); expected the frozen FaceReconModel.pb") from e
    consts = {n.name: n.attr["value"].tensor for n in graph.node if n.op == "Const"}
    return consts, list(graph.node)


_FUSED_BN_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")


def graph_bn_epsilon(nodes, what: str = "graph") -> float | None:
    """The batch-norm epsilon a frozen graph computes with, or None when it does not say.

    TF1 stores it in every FusedBatchNorm node (`epsilon`: slim asks for 1e-5 and
    `fused_batch_norm` raises it to cuDNN's floor 1.001e-5), or in the `batchnorm/add/y`
    Const of unfused batch norms. R-Net has one epsilon, so all must agree.
    """
    _, tensor_util = _import_tf_protos()
    found = {float(n.attr["epsilon"].f) for n in nodes if n.op in _FUSED_BN_OPS and "epsilon" in n.attr}
    found |= {float(tensor_util.make_ndarray(n.attr["value"].tensor).reshape(-1)[0]) for n in nodes
              if n.op == "Const" and n.name.endswith("BatchNorm/batchnorm/add/y")}
    found = {float(str(np.float32(e))) for e in found}  # the graph holds float32: 1.001e-05, not 1.0010000e-05
    if len(found) > 1:
        raise ValueError(f"{what}: the batch norms use different epsilons {sorted(found)}; R-Net has one")
    return found.pop() if found else None


def refuse_folded_batch_norm(names, what: str = "graph") -> None:
    """Raise when a graph's batch norms were folded into its convolutions (optimize_for_inference,
    transform_graph fold_batch_norms): no BatchNorm statistics left, offsets after the convs."""
    names = list(names)
    has_stats = any(n.endswith(("BatchNorm/moving_mean", "BatchNorm/moving_variance")) for n in names)
    if not has_stats and any(n.endswith("_bn_offset") or "/BatchNorm/" in n for n in names):
        raise ValueError(
            f"{what}: its batch norms were folded into the convolutions (no BatchNorm moving_mean/"
            "moving_variance constants, as after optimize_for_inference or fold_batch_norms), which "
            "jaxface does not convert; use the unmodified frozen FaceReconModel.pb of "
            "Deep3DFaceReconstruction, whose batch norms are separate")


def slim_consts_to_variables(consts: Mapping[str, Any], what: str = "graph",
                             bn_eps: float | None = None) -> tuple[dict, RNetConfig, dict]:
    """R-Net variables + config (+ notes) from slim Const TensorProtos (`resnet_v1_50/...`, `fc-*`).

    Names may carry a common prefix (e.g. an import scope); it is found from the stem conv.
    bn_eps: the graph's batch-norm epsilon (`graph_bn_epsilon`); None keeps slim's 1e-5.
    """
    _, tensor_util = _import_tf_protos()
    refuse_folded_batch_norm(consts, what)
    stem = "resnet_v1_50/conv1/weights"
    prefixes = [n[: -len(stem)] for n in consts if n.endswith(stem)]
    if len(prefixes) != 1:
        raise ValueError(f"{what}: expected one Const named '{stem}' (slim resnet_v1_50), found {len(prefixes)}; "
                         "is this FaceReconModel.pb of Deep3DFaceReconstruction?")
    prefix = prefixes[0]
    config = RNetConfig.for_variant("slim", **({} if bn_eps is None else {"bn_eps": bn_eps}))
    heads = tuple((f"{h}/weights", f"{h}/biases") for h in TF_HEADS)

    def shape(t) -> tuple[int, ...]:
        return tuple(int(d.size) for d in t.tensor_shape.dim)

    shapes = {n[len(prefix):]: shape(t) for n, t in consts.items() if n.startswith(prefix)}

    def load(name):
        try:
            return tensor_util.make_ndarray(consts[prefix + name]).astype(np.float32)
        except (ValueError, TypeError) as e:  # content length or dtype not matching the declared shape
            raise ValueError(f"{what}: Const {prefix + name!r} could not be decoded ({e})") from e

    variables = assemble_variables(shapes, load, slim_name_table(), heads, "HWIO", config, what)
    extra = sorted({m.group(1) for n in shapes if (m := re.match(r"(fc-[^/]+)/weights$", n))} - set(TF_HEADS))
    return variables, config, {"prefix": prefix, "ignored_heads": extra}


def convert_tf(pb_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """`FaceReconModel.pb` -> weights folder (default weights/rnet/); returns the folder."""
    path = check_source_file(pb_path, "FaceReconModel.pb")
    consts, nodes = read_graph_consts(path)
    names = {n.name for n in nodes}
    refuse_folded_batch_norm(names, str(path))  # its BiasAdd nodes keep the BatchNorm names
    bn_eps = graph_bn_epsilon(nodes, what=str(path))
    variables, config, notes = slim_consts_to_variables(consts, what=str(path), bn_eps=bn_eps)
    source = {"format": "tensorflow-frozen-graph", "file": path.name, "sha256": file_sha256(path),
              "reference": "microsoft/Deep3DFaceReconstruction",
              "input_node": "input_imgs" if "input_imgs" in names else None,
              "output_node": "coeff" if "coeff" in names else None,
              "bn_eps_from_graph": bn_eps is not None, **notes}
    return save_rnet(variables, config, out_dir, source)
