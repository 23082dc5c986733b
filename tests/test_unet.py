"""The diffusion U-Net: shapes, conditioning inputs, gradients, determinism, parameter counts, GroupNorm group
counts, config errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from genface.nets.unet import ResBlock, UNet, group_count

TINY: dict[str, Any] = dict(
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(8,),
    resolution=16,
    num_groups=8,
)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _perturb(m: nn.Module, seed: int = 0) -> None:
    """Move the zero-initialised layers off zero so every parameter influences the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"attention_resolutions": ()},
        {"attention_resolutions": (16, 8), "channel_mult": (1, 2, 2)},
        {"num_classes": 3},
        {"z_dim": 8},
        {"resblock_updown": True, "dropout": 0.1},
        {"time_embed": "fourier", "base_channels": 24, "num_groups": 32},
        {"in_channels": 1, "out_channels": 2},
    ],
)
def test_output_shape(overrides: dict[str, Any]) -> None:
    m = UNet(**{**TINY, **overrides})
    x = torch.randn(2, m.in_channels, 16, 16)
    y = torch.tensor([0, 2]) if m.num_classes else None
    z = torch.randn(2, m.z_dim) if m.z_dim else None
    out = m(x, torch.tensor([0, 999]), y=y, z=z)
    assert out.shape == (2, overrides.get("out_channels", 3), 16, 16)
    assert not out.any()  # zero-initialised output conv


def test_parameter_counts() -> None:
    """Ho et al.'s CIFAR-10 DDPM has 35,746,307 parameters; ours has the same layout plus the ADM scale-shift
    (each ResBlock's embedding projection is twice as wide). The other two numbers guard against drift."""
    ddpm = UNet(base_channels=128, channel_mult=(1, 2, 2, 2), attention_resolutions=(16,), resolution=32)
    scale_halves = sum(
        b.emb_proj.out_features // 2 * (b.emb_proj.in_features + 1)
        for b in ddpm.modules()
        if isinstance(b, ResBlock)
    )
    assert _params(ddpm) - scale_halves == 35_746_307
    assert (
        _params(UNet(base_channels=64, channel_mult=(1, 2, 2, 2), attention_resolutions=(16,), resolution=64))
        == 9_593_539
    )
    assert _params(UNet(**TINY)) == 190_947


#: GroupNorm groups per width with min_channels_per_group 4 (NVlabs DD-GAN / score_sde: min(C // 4, 32)) and 1
#: (largest divisor <= 32). A U-Net of base width b with channel_mult (1, 2) normalises widths b, 2b, 3b, 4b.
_WIDE = dict.fromkeys((128, 192, 256, 384, 512, 768, 1024), 32)
GROUPS = {
    4: {16: 4, 32: 8, 48: 12, 64: 16, 96: 24, **_WIDE},
    1: {16: 16, 32: 32, 48: 24, 64: 32, 96: 32, **_WIDE},
}


def _groups(m: nn.Module) -> dict[int, int]:
    """{channels: groups} of every GroupNorm of `m` (one entry per width)."""
    return {n.num_channels: n.num_groups for n in m.modules() if isinstance(n, nn.GroupNorm)}


@pytest.mark.parametrize("base", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("min_channels", [4, 1])
def test_group_counts_per_layer(base: int, min_channels: int) -> None:
    with torch.device("meta"):  # layer shapes only: no need to allocate the 256-wide net
        m = UNet(**{**TINY, "base_channels": base, "num_groups": 32}, min_channels_per_group=min_channels)
    norms = [n for n in m.modules() if isinstance(n, nn.GroupNorm)]
    assert {n.num_channels for n in norms} == {base, 2 * base, 3 * base, 4 * base}
    for n in norms:  # every layer, not one per width: the AdaGN, attention and output norms too
        assert n.num_groups == GROUPS[min_channels][n.num_channels], (n.num_channels, n.num_groups)


def test_group_count_falls_back_to_a_divisor() -> None:
    # min(C // 4, 32) does not divide 200 or 6: the largest divisor below it keeps GroupNorm valid.
    assert group_count(200, 32, 4) == 25 and group_count(6, 32, 4) == 1 and group_count(3, 32, 4) == 1
    assert group_count(200, 32, 1) == 25 and group_count(6, 32, 1) == 6
    assert group_count(64, 8, 4) == 8  # num_groups caps the count


def test_a_config_without_the_key_rebuilds_the_largest_divisor_groups() -> None:
    """GroupNorm weights fit any group count: a net config saved before `min_channels_per_group` existed
    (e.g. a checkpoint's hyper-parameters) must rebuild the groups its weights were trained with."""
    assert _groups(UNet(**{**TINY, "num_groups": 32})) == {c: GROUPS[1][c] for c in (16, 32, 48, 64)}


def test_group_rule_does_not_change_the_parameter_count() -> None:
    assert _params(UNet(**TINY, min_channels_per_group=4)) == _params(UNet(**TINY)) == 190_947


@pytest.mark.parametrize("experiment", ["ddpm_synthfaces", "ddpm_dlstudio_celeba64"])
def test_shipped_ddpm_recipes_use_groups_of_four_channels(compose_train, experiment: str) -> None:
    net = compose_train(f"experiment={experiment}").model.net
    assert net.min_channels_per_group == 4 and net.get("num_groups", 32) == 32


def test_gradients_reach_every_parameter_and_input() -> None:
    m = UNet(**TINY, num_classes=3, z_dim=4)
    _perturb(m)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    z = torch.randn(2, 4, requires_grad=True)
    m(x, torch.tensor([3, 7]), y=torch.tensor([1, 3]), z=z).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and z.grad.abs().sum() > 0


def test_eval_is_deterministic_train_dropout_is_not() -> None:
    m = UNet(**TINY, dropout=0.5)
    _perturb(m)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 6])
    m.eval()
    assert torch.equal(m(x, t), m(x, t))
    m.train()
    assert not torch.equal(m(x, t), m(x, t))


def test_conditioning_inputs_change_the_output() -> None:
    m = UNet(**TINY, num_classes=2, z_dim=4).eval()
    _perturb(m)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 5])
    z = torch.randn(2, 4)
    base = m(x, t, y=torch.tensor([0, 0]), z=z)
    assert not torch.allclose(base, m(x, t, y=torch.tensor([1, 1]), z=z))
    assert not torch.allclose(base, m(x, t, y=torch.tensor([0, 0]), z=z + 1))
    assert not torch.allclose(base, m(x, t + 1, y=torch.tensor([0, 0]), z=z))
    # y=None is the null class of classifier-free guidance
    torch.testing.assert_close(m(x, t, z=z), m(x, t, y=torch.tensor([2, 2]), z=z))
    # integer timesteps may come as floats (DD-GAN, continuous-time callers)
    torch.testing.assert_close(m(x, t.float(), y=torch.tensor([0, 0]), z=z), base)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"resolution=30 must be divisible .*channel_mult"):
        UNet(resolution=30, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"attention_resolutions \[5\] are never reached"):
        UNet(**{**TINY, "attention_resolutions": (5,)})
    with pytest.raises(ValueError, match="time_embed"):
        UNet(**TINY, time_embed="learned")
    with pytest.raises(ValueError, match=r"min_channels_per_group must be >= 1 \(.*4 = NVlabs"):
        UNet(**TINY, min_channels_per_group=0)


def test_forward_errors() -> None:
    m = UNet(**TINY)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"expects input \(B, 3, 16, 16\)"):
        m(torch.randn(2, 3, 32, 32), t)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        m(x, torch.tensor(1))
    with pytest.raises(ValueError, match="num_classes=0"):
        m(x, t, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="z_dim=0"):
        m(x, t, z=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"needs z of shape \(2, 4\)"):
        UNet(**TINY, z_dim=4)(x, t)
