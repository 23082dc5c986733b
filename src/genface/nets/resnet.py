"""ResNet-18 (torchvision's, built from scratch) with a `features()` hook for the attribute classifier.

Nothing is downloaded: weights come only from a file the user names (`weights_path`), e.g. torchvision's
``resnet18-f37072fd.pth`` copied by hand, or another genface classifier checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from genface.safe_load import safe_load

log = logging.getLogger(__name__)


class ResNetNet(ResNet):
    """torchvision's ResNet whose penultimate (pooled) features are reachable: `features(x) -> (N, D)`.

    The stem divides the resolution by 4 (7x7/2 convolution, then a 3x3/2 max-pool). `maxpool=False` drops
    the max-pool (divides by 2: 4x the compute of the residual stages, same weights, so a checkpoint of
    either loads into the other), `small_stem` replaces both by one 3x3/1 convolution (the CIFAR variant,
    16x the compute). Finer maps keep details a pixel or two wide at 64 px; on synthfaces (renderer v1) a
    4-epoch no-pool fine-tune did not lift Big_Lips, so the default keeps the pool.
    """

    def __init__(
        self, num_outputs: int, in_channels: int = 3, small_stem: bool = False, maxpool: bool = True
    ) -> None:
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_outputs)
        self.in_channels, self.small_stem = in_channels, small_stem
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        elif in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if not maxpool:
            self.maxpool = nn.Identity()

    @property
    def num_features(self) -> int:
        return self.fc.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or the network part of a Lightning checkpoint (keys under ``net.``); read without
    running code (`safe_load`), as weights files are often downloaded."""
    obj = safe_load(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = {k.removeprefix("net."): v for k, v in obj["state_dict"].items() if k.startswith("net.")}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds neither a ResNet state dict nor a genface classifier checkpoint")
    return obj


def load_pretrained(net: ResNetNet, path: str | Path) -> list[str]:
    """Copy every weight of `path` whose name and shape fit; returns the names left at their init.

    The head (`fc`) is skipped when the number of outputs differs, the stem when it was replaced; an
    RGB stem loaded into a grey net is summed over its colour channels (the usual grey adaptation).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ResNet weights not found: {path} (model.net.weights_path)")
    source = _read_state_dict(path)
    target = net.state_dict()
    conv = source.get("conv1.weight")
    if conv is not None and conv.shape[1] == 3 and target["conv1.weight"].shape[1] == 1:
        source["conv1.weight"] = conv.sum(dim=1, keepdim=True)
    loaded = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
    if not any(k.startswith("layer") for k in loaded):
        raise ValueError(f"{path}: no residual-stage weight fits a ResNet-18 (wrong architecture?)")
    net.load_state_dict(loaded, strict=False)
    skipped = sorted(k for k in target if k not in loaded)
    if skipped:
        log.info("ResNet weights from %s: kept the initialisation of %s", path, ", ".join(skipped))
    return skipped


def resnet18(
    num_outputs: int,
    in_channels: int = 3,
    small_stem: bool = False,
    weights_path: str | None = None,
    maxpool: bool = True,
) -> ResNetNet:
    """ResNet-18 with `num_outputs` logits, randomly initialised or from `weights_path` (never downloaded)."""
    net = ResNetNet(num_outputs, in_channels=in_channels, small_stem=small_stem, maxpool=maxpool)
    if weights_path:
        load_pretrained(net, weights_path)
    return net
