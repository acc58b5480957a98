"""A plain-PyTorch iresnet with arcface_torch's module names and definition, for parity tests
of the conversion (`jaxface.identity.arcface`). Needs the optional `jaxface[torch]`; not
imported by the package.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (64, 128, 256, 512)


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3(cin, width)
        self.bn2 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        self.conv2 = _conv3(width, width, stride)
        self.bn3 = nn.BatchNorm2d(width, eps=1e-5)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class TorchIResNet(nn.Module):
    """NCHW [B, 3, 112, 112] in [-1, 1] -> [B, features]."""

    def __init__(self, layers=(3, 4, 14, 3), features: int = 512):
        super().__init__()
        self.conv1 = _conv3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, (blocks, width) in enumerate(zip(layers, WIDTHS)):
            down = nn.Sequential(nn.Conv2d(cin, width, 1, 2, bias=False), nn.BatchNorm2d(width, eps=1e-5))
            mods = [IBasicBlock(cin, width, 2, down)] + [IBasicBlock(width, width, 1, None) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*mods))
            cin = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, features)
        self.features = nn.BatchNorm1d(features, eps=1e-5)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def randomize_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random convs and linear layers, non-trivial BatchNorm statistics and PReLU slopes (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                c = m.num_features
                m.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.1 + 0.3 * torch.rand(m.weight.shape, generator=g))
    return net.eval()
