"""R-Net in plain PyTorch (torch.nn only, no torchvision), for parity tests and benchmarks.

`TorchRNet("torch")` has the module names of Deep3DFaceRecon_pytorch's `ReconNetWrapper`
(`backbone.*` torchvision ResNet-50, `final_layers.0..6`), so its `state_dict()` is the
`net_recon` of an `epoch_20.pth`. `TorchRNet("slim")` runs the TF-slim resnet_v1_50 layout
(stride on the last unit, subsampled identity shortcut, 'SAME' max pool) on NCHW BGR 0-255
input, written independently of the Flax code to check the TF conversion. Needs torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Written out here rather than imported, so the reference stays independent of network.py.
_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))
_HEAD_WIDTHS = (80, 64, 80, 3, 27, 2, 1)
# torchvision: stride 2 on the first bottleneck of layers 2-4; slim: on the last unit of blocks 1-3.
_STRIDES = {
    "torch": ((1, 1, 1), (2, 1, 1, 1), (2, 1, 1, 1, 1, 1), (2, 1, 1)),
    "slim": ((1, 1, 2), (1, 1, 1, 2), (1, 1, 1, 1, 1, 2), (1, 1, 1)),
}


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, project: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.stride = stride
        self.downsample = (nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4))
                           if project else None)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = self.downsample(x) if self.downsample is not None else x[:, :, :: self.stride, :: self.stride]
        return F.relu(y + shortcut)


class Backbone(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        self.variant = variant
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, ((width, _), strides) in enumerate(zip(_STAGES, _STRIDES[variant])):
            units = []
            for j, s in enumerate(strides):
                units.append(Bottleneck(cin, width, s, project=(j == 0)))
                cin = width * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.variant == "torch":
            x = F.max_pool2d(x, 3, 2, 1)
        else:  # TF 'SAME': pad total (out-1)*2+3-n, the smaller half first
            pads = []
            for n in (x.shape[3], x.shape[2]):
                total = max((math.ceil(n / 2) - 1) * 2 + 3 - n, 0)
                pads += [total // 2, total - total // 2]
            x = F.max_pool2d(F.pad(x, pads, value=-math.inf), 3, 2)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return F.adaptive_avg_pool2d(x, 1)


class TorchRNet(nn.Module):
    """NCHW input in the variant's convention -> [B, 257]."""

    def __init__(self, variant: str = "torch"):
        super().__init__()
        self.backbone = Backbone(variant)
        self.final_layers = nn.ModuleList([nn.Conv2d(2048, w, 1, bias=True) for w in _HEAD_WIDTHS])

    def forward(self, x):
        x = self.backbone(x)
        return torch.flatten(torch.cat([layer(x) for layer in self.final_layers], dim=1), 1)


def randomize_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random He-scaled convs, non-trivial BN statistics and affine, NON-zero heads (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return net.eval()
