"""UNet: shapes for every preset's layout, noise-level dependence, zero-init, channels_last, the kernel
seam, gradient checkpointing, config round trips."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

import diffengine.kernels as kernels
from diffengine.config import PRESETS, Preset, UNetConfig, config_from_dict, config_to_dict, get_preset
from diffengine.networks.unet import UNet

TINY = UNetConfig(
    resolution=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
    head_dim=16, num_groups=8,
)  # fmt: skip


def _perturbed(config: UNetConfig, seed: int = 0) -> UNet:
    """A UNet whose zero-initialised layers got random weights (so every path matters)."""
    torch.manual_seed(seed)
    net = UNet(config)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.05)
    return net


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_layouts_give_image_shaped_output(name: str) -> None:
    """Each preset's resolution, levels and attention placement, with narrow channels for speed."""
    cfg = dataclasses.replace(PRESETS[name].unet, model_channels=8, num_groups=8, head_dim=8, dropout=0.0)
    net = _perturbed(cfg)
    x = torch.randn(1, 3, cfg.resolution, cfg.resolution)
    with torch.no_grad():
        out = net(x, torch.tensor([0.3]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    n_attn = sum(1 for m in net.modules() if type(m).__name__ == "AttentionBlock")
    levels_with_attn = sum(cfg.resolution >> i in cfg.attn_resolutions for i in range(len(cfg.channel_mult)))
    expected = levels_with_attn * (2 * cfg.num_res_blocks + 1) + 1  # encoder + decoder blocks + middle
    assert n_attn == expected


def test_preset_sizes() -> None:
    """faces32 is small enough for CPU training; the presets grow with resolution."""
    counts = {}
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in UNet(preset.unet).parameters())
    assert 2e6 <= counts["faces32"] <= 6e6, counts
    assert counts["faces32"] < counts["faces64"] < 8e7 and counts["faces256"] < 1.2e8, counts


def test_fresh_network_outputs_zero() -> None:
    net = UNet(TINY)
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([0.1, -1.0]))
    assert torch.equal(out, torch.zeros_like(out))


def test_output_depends_on_noise_level() -> None:
    net = _perturbed(TINY).eval()
    x = torch.randn(1, 3, 16, 16).expand(3, -1, -1, -1)
    with torch.no_grad():
        out = net(x, torch.tensor([-1.0, -0.9, 5.0]))
    assert (out[0] - out[1]).abs().max() > 1e-4  # nearby EDM c_noise values are told apart
    assert (out[0] - out[2]).abs().max() > 1e-3
    # The same c_noise gives the same result (no batch coupling).
    with torch.no_grad():
        single = net(x[:1], torch.tensor([5.0]))
    torch.testing.assert_close(single, out[2:], rtol=1e-5, atol=1e-5)


def test_channels_last_matches_contiguous() -> None:
    net = _perturbed(TINY).eval()
    x, c = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        ref = net(x, c)
        # Module.to takes memory_format (keyword only), but torch's overloads of it leave it out.
        channels_last: dict[str, Any] = {"memory_format": torch.channels_last}
        cl = net.to(**channels_last)(x.to(memory_format=torch.channels_last), c)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)


def test_norms_and_attention_go_through_the_kernel_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {"group_norm_silu": 0, "attention": 0}

    def counting(name: str) -> Callable[..., Any]:
        original = getattr(kernels, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(kernels, name, counting(name))
    net = UNet(TINY)
    net(torch.randn(1, 3, 16, 16), torch.tensor([0.0]))
    n_res = sum(1 for m in net.modules() if type(m).__name__ == "ResBlock")
    n_attn = sum(1 for m in net.modules() if type(m).__name__ == "AttentionBlock")
    assert calls["attention"] == n_attn > 0
    assert calls["group_norm_silu"] == 2 * n_res + n_attn + 1  # two per res block, attention, output


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x, c = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.7])
    grads = []
    for checkpointing in (False, True):
        net = _perturbed(dataclasses.replace(TINY, checkpointing=checkpointing)).train()
        net(x, c).square().mean().backward()
        grads.append([p.grad for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_bad_shapes_give_clear_errors() -> None:
    net = UNet(TINY)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\), got \(1, 3, 32, 32\)"):
        net(torch.randn(1, 3, 32, 32), torch.zeros(1))
    with pytest.raises(ValueError, match="c_noise must have shape"):
        net(torch.randn(2, 3, 16, 16), torch.zeros(1))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible by 2\\*\\*2"):
        UNetConfig(resolution=30, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="num_groups"):
        UNetConfig(model_channels=48, num_groups=32)
    with pytest.raises(ValueError, match="head_dim"):
        UNetConfig(model_channels=96, channel_mult=(1, 1), attn_resolutions=(16,), head_dim=64)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    preset = get_preset(name)
    data = json.loads(json.dumps(config_to_dict(preset)))
    assert config_from_dict(data) == preset
    assert config_from_dict(data["unet"], UNetConfig) == preset.unet
    assert preset.name == name and preset.unet.resolution == int(name.removeprefix("faces").split("-")[0])


def test_unknown_names_and_fields_are_reported() -> None:
    with pytest.raises(KeyError, match="faces32, faces64"):
        get_preset("faces48")
    data = config_to_dict(get_preset("faces32"))
    data["unet"]["widht"] = 3
    with pytest.raises(ValueError, match="unknown UNetConfig fields \\['widht'\\]"):
        config_from_dict(data, Preset)


def test_bf16_autocast_matches_fp32_loosely() -> None:
    """The precision policy's bf16 path: same network, autocast on, output close to fp32."""
    net = _perturbed(TINY).eval()
    x, c = torch.randn(2, 3, 16, 16), torch.tensor([0.2, -0.7])
    with torch.no_grad():
        ref = net(x, c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, c)
    assert low.dtype == torch.bfloat16
    scale = ref.abs().max().item()
    assert scale > 1e-3 and (low.float() - ref).abs().max().item() < 0.05 * scale
