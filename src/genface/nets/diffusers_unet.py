"""diffusers' `UNet2DModel` behind the call signature of genface's diffusion U-Net.

`DiffusersUNet(x, t, y=None) -> Tensor` is what DDPM (and latent diffusion's spatial denoiser) call, so the
diffusers net trains, samples and guides exactly as `genface.nets.unet.UNet` does. Class conditioning uses
UNet2DModel's `num_class_embeds`: K classes get K + 1 embeddings, index K being the null class that
classifier-free guidance drops labels to (as genface's UNet does); y=None means the null class. The wrapped
model is `self.unet`, a plain UNet2DModel that `save_pretrained` writes and diffusers pipelines load.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

log = logging.getLogger("genface.nets.diffusers_unet")

#: UNet2DModel settings that genface sets itself: the resolution (sample_size) and the class embedding.
_MANAGED = ("sample_size", "num_class_embeds", "class_embed_type")
_SIGNATURE = inspect.signature(UNet2DModel.__init__).parameters
_ARCHITECTURE = tuple(p for p in _SIGNATURE if p != "self")
_DEFAULT_DOWN_BLOCKS = _SIGNATURE["down_block_types"].default


class DiffusersUNet(nn.Module):
    """A `diffusers.UNet2DModel` built from config kwargs: `forward(x, t, y=None)` returns a tensor like x.

    Args:
        in_channels, out_channels: image (or latent) channels.
        resolution: the image side (UNet2DModel's `sample_size`); it must be divisible by 2 per downsampling
            block (all down blocks but the last).
        num_classes: 0 for an unconditional net; K > 0 builds K + 1 class embeddings (K = the null class).
        pretrained: a local folder written by `UNet2DModel.save_pretrained` to start from. Its config.json sets
            the architecture; `unet_kwargs` that differ from it are ignored (logged). Channels, resolution and
            class count must agree with the folder.
        unet_kwargs: any other UNet2DModel argument (block_out_channels, layers_per_block, down_block_types,
            up_block_types, norm_num_groups, attention_head_dim, dropout, ...).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        resolution: int = 32,
        num_classes: int = 0,
        pretrained: str | None = None,
        **unet_kwargs: Any,
    ) -> None:
        super().__init__()
        # block lists as tuples, UNet2DModel's own type, whatever sequence type the config system passed
        unet_kwargs = {k: _tuple(v) for k, v in unet_kwargs.items()}
        managed = sorted(set(unet_kwargs) & set(_MANAGED))
        if managed:
            raise ValueError(
                f"model.net sets {managed}, which genface derives: the size is model.net.resolution (the data's) "
                "and the class embedding follows model.num_classes"
            )
        unknown = sorted(set(unet_kwargs) - set(_ARCHITECTURE))
        if unknown:
            raise ValueError(
                f"model.net has keys that diffusers' UNet2DModel does not take: {unknown} (genface UNet settings? "
                "model/net=unet2d_diffusers goes with model=ddpm, whose net keys are UNet2DModel's)"
            )
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.num_classes = resolution, num_classes
        class_embeds = num_classes + 1 if num_classes else None
        if pretrained:
            self.unet = _load_pretrained(Path(pretrained).expanduser(), unet_kwargs)
            _check_fits(self.unet, in_channels, out_channels, resolution, class_embeds, pretrained)
            _check_resolution(resolution, self.unet.config.down_block_types)
        else:
            _check_resolution(resolution, unet_kwargs.get("down_block_types", _DEFAULT_DOWN_BLOCKS))
            self.unet = UNet2DModel(
                in_channels=in_channels, out_channels=out_channels, sample_size=resolution,
                num_class_embeds=class_embeds, **unet_kwargs,
            )  # fmt: skip

    def architecture(self) -> dict[str, Any]:
        """The config that rebuilds this net without `pretrained` (its weights come from elsewhere, e.g. a
        checkpoint): the UNet2DModel settings as plain lists and scalars, `_target_` included."""
        config = {k: v for k, v in self.unet.config.items() if k in _ARCHITECTURE and k not in _MANAGED}
        for key in ("in_channels", "out_channels"):
            config.pop(key)
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
        return {
            "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "resolution": self.resolution,
            "pretrained": None,
            **plain,
        }

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        if x.shape[1:] != (self.in_channels, self.resolution, self.resolution):
            raise ValueError(
                f"DiffusersUNet expects input (B, {self.in_channels}, {self.resolution}, {self.resolution}), "
                f"got {tuple(x.shape)}"
            )
        if t.shape != (b,):
            raise ValueError(f"timesteps t must have shape (B,) = ({b},), got {tuple(t.shape)}")
        if self.num_classes:
            if y is None:
                y = torch.full((b,), self.num_classes, device=x.device, dtype=torch.long)
        elif y is not None:
            raise ValueError("labels y were given but the net was built with num_classes=0")
        return self.unet(x, t, class_labels=y, return_dict=False)[0]


def _check_resolution(resolution: int, down_block_types: Sequence[str]) -> None:
    downsamplings = len(down_block_types) - 1
    if resolution % 2**downsamplings:
        raise ValueError(
            f"model.net.resolution={resolution} must be divisible by 2**{downsamplings}: UNet2DModel halves the "
            f"image in each down block but the last ({list(down_block_types)})"
        )


def _load_pretrained(folder: Path, unet_kwargs: dict[str, Any]) -> UNet2DModel:
    """UNet2DModel.from_pretrained of a local folder, with errors that name the setting and the folder."""
    config_file = folder / "config.json"
    hint = (
        "a folder written by UNet2DModel.save_pretrained (config.json + diffusion_pytorch_model.safetensors)"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"model.net.pretrained={folder}: no such folder; give {hint}")
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name")
    except (OSError, ValueError) as err:
        raise ValueError(f"model.net.pretrained={folder} is not {hint}: {err}") from err
    if class_name != UNet2DModel.__name__:
        raise ValueError(
            f"model.net.pretrained={folder} holds a {class_name!r} config, not a UNet2DModel: give {hint}"
        )
    try:
        unet = UNet2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model.net.pretrained={folder}: UNet2DModel could not be loaded from it ({err})"
        ) from err
    ignored = {
        k: (v, unet.config[k]) for k, v in unet_kwargs.items() if _plain(unet.config.get(k)) != _plain(v)
    }
    if ignored:
        log.warning(
            "model.net.pretrained=%s sets the architecture; these model.net settings differ and are ignored "
            "(setting: config value, folder's value): %s", folder, ignored,
        )  # fmt: skip
    return unet


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def _check_fits(
    unet: UNet2DModel,
    in_channels: int,
    out_channels: int,
    resolution: int,
    class_embeds: int | None,
    folder: str,
) -> None:
    """The pretrained net must fit the data (channels, size) and the model's classes (K + 1 embeddings)."""
    config = unet.config
    wanted = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "sample_size": resolution,
        "num_class_embeds": class_embeds,
    }
    got = {k: config.get(k) for k in wanted}
    if config.get("class_embed_type") is not None:
        raise ValueError(
            f"model.net.pretrained={folder} uses class_embed_type={config.class_embed_type!r}; genface conditions "
            "through num_class_embeds (class indices) only"
        )
    wrong = {k: (wanted[k], got[k]) for k in wanted if _plain(got[k]) != wanted[k]}
    if wrong:
        raise ValueError(
            f"model.net.pretrained={folder} does not fit this model (setting: wanted, folder's): {wrong}. "
            "in/out_channels and sample_size follow data.channels and data.resolution; num_class_embeds is "
            "model.num_classes + 1 (the null class), or null for model.num_classes=0"
        )
