"""R-Net: the ResNet-50 coefficient regressor, trained-weight conversion and checkpoints.

`torch_reference` (a plain-PyTorch R-Net for parity tests and benchmarks) is not imported
here; it needs the optional `jaxface[torch]`.
"""

from jaxface.rnet.checkpoint import default_rnet_dir, load_rnet, save_rnet
from jaxface.rnet.convert import convert_torch, convert_weights_cli
from jaxface.rnet.convert_tf import convert_tf
from jaxface.rnet.network import RNet, RNetConfig, init_rnet, predict, to_network_input

__all__ = [
    "RNet",
    "RNetConfig",
    "convert_tf",
    "convert_torch",
    "convert_weights_cli",
    "default_rnet_dir",
    "init_rnet",
    "load_rnet",
    "predict",
    "save_rnet",
    "to_network_input",
]
