"""Inpainting with diffengine models: the known-region wrapper with every deterministic sampler, RePaint
resampling, the conditioned network, and runs of both tasks trained for a few steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from diffengine.checkpoint import CheckpointError, save_checkpoint
from diffengine.config import UNetConfig, config_to_dict, get_preset
from diffengine.inpaint import (
    COND_CHANNELS,
    ConditionedDenoiser,
    KnownRegionDenoiser,
    inpaint,
    inpaint_cond,
    load_inpaint_model,
    run_task,
    sample_known,
)
from diffengine.masks import random_masks
from diffengine.networks.unet import UNet
from diffengine.precond import EDM, Denoiser
from diffengine.samplers import DETERMINISTIC
from diffengine.schedules import karras_sigmas

# A 16 px, two-level network without attention: milliseconds per step on a CPU.
TINY_UNET = UNetConfig(
    resolution=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
    num_groups=8, head_dim=16,
)  # fmt: skip


def _smooth_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A closed-form stand-in for a network: shrinks x towards its blurred self (depends on σ)."""
    s = sigma.view(-1, 1, 1, 1)
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return blurred / (1 + s**2)


def _case(seed: int = 0, n: int = 3, res: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    known = torch.rand((n, 3, res, res), generator=g) * 2 - 1
    mask = random_masks(n, res, g)
    mask[0, :, :, :4] = 1  # at least one image with something to fill
    noise = torch.randn((n, 3, res, res), generator=g)
    return known, mask, noise


@pytest.mark.parametrize("sampler", sorted(DETERMINISTIC))
def test_known_region_is_held_with_every_deterministic_sampler(sampler: str) -> None:
    known, mask, noise = _case()
    sigmas = karras_sigmas(10, 0.002, 80.0).float()
    fn = KnownRegionDenoiser(_smooth_denoiser, known, mask, noise)
    out = sample_known(fn, noise * sigmas[0], sigmas, sampler)
    keep = mask == 0
    # without any pasting, the sampler's own trajectory ends on the known pixels
    assert torch.allclose(
        out.expand_as(known)[keep.expand_as(known)], known[keep.expand_as(known)], atol=1e-4
    )
    assert out.isfinite().all()
    # and the generated part depends on the known part (information flows across the boundary)
    other = KnownRegionDenoiser(_smooth_denoiser, known * 0.5, mask, noise)
    moved = sample_known(other, noise * sigmas[0], sigmas, sampler)
    hole = (mask == 1).expand_as(known)
    assert not torch.allclose(out[hole], moved[hole])


def test_known_region_wrapper_feeds_the_photo_noised_to_sigma() -> None:
    known, mask, noise = _case(n=1)
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros_like(x)

    fn = KnownRegionDenoiser(spy, known, mask, noise)
    out = fn(torch.full_like(known, 7.0), torch.tensor([2.5]))
    keep = (mask == 0).expand_as(known)
    assert torch.allclose(seen[0][keep], (known + 2.5 * noise)[keep])
    assert torch.equal(seen[0][~keep], torch.full_like(known, 7.0)[~keep])
    assert torch.equal(out[keep], known[keep]) and torch.equal(out[~keep], torch.zeros_like(known)[~keep])


def test_repaint_resampling_runs_each_sub_schedule_repeats_times() -> None:
    known, mask, noise = _case(n=2)
    calls = []

    def counting(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(float(sigma[0]))
        return _smooth_denoiser(x, sigma)

    sigmas = karras_sigmas(9, 0.002, 80.0).float()
    fn = KnownRegionDenoiser(counting, known, mask, noise)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = sample_known(fn, noise * sigmas[0], sigmas, "euler", jump=3, repeats=3, generators=gens)
    assert len(calls) == 9 * 3  # every step sampled three times
    assert calls[:4] == pytest.approx([float(s) for s in sigmas[:3]] + [float(sigmas[0])])
    keep = (mask == 0).expand_as(known)
    assert torch.allclose(out[keep], known[keep], atol=1e-4)
    with pytest.raises(ValueError, match="one generator per image"):
        sample_known(fn, noise, sigmas, "euler", jump=3, repeats=2)


def _tiny_net(cond: int = 0) -> Denoiser:
    torch.manual_seed(0)
    net = UNet(TINY_UNET, cond_channels=cond)
    for p in net.parameters():  # zero-initialised outputs would make every test trivially pass
        torch.nn.init.normal_(p, std=0.05)
    return Denoiser(net, EDM()).eval()


def test_conditioned_unet_sees_the_cond_channels() -> None:
    den = _tiny_net(COND_CHANNELS)
    known, mask, noise = _case(n=2)
    cond = inpaint_cond(known, mask)
    assert cond.shape == (2, 4, 16, 16) and torch.equal(cond[:, 3:], mask)
    assert torch.equal(cond[:, :3][(mask == 1).expand_as(known)], torch.zeros(int(mask.sum()) * 3))
    with torch.no_grad():
        a = den(noise, 1.0, cond)
        b = den(noise, 1.0, inpaint_cond(-known, mask))
        assert a.shape == noise.shape and not torch.allclose(a, b)
        with pytest.raises(ValueError, match="conditioned"):
            den(noise, 1.0)
        with pytest.raises(ValueError, match="unconditional"):
            _tiny_net()(noise, 1.0, cond)
        assert torch.equal(ConditionedDenoiser(den, cond)(noise, torch.ones(2)), a)


def test_default_unet_is_unchanged() -> None:
    assert UNet(TINY_UNET).conv_in.in_channels == TINY_UNET.in_channels
    assert UNet(TINY_UNET, cond_channels=4).conv_in.in_channels == TINY_UNET.in_channels + 4


def _uncond_run(path: Path) -> Path:
    den = _tiny_net()
    preset = dataclasses.replace(get_preset("faces32"), unet=TINY_UNET)
    save_checkpoint(path / "checkpoints", 7, den.net.state_dict(), {"preset": config_to_dict(preset)})
    return path


def test_inpaint_unconditional_run_is_seeded_and_keeps_known(tmp_path: Path) -> None:
    model = load_inpaint_model(_uncond_run(tmp_path / "u"))
    assert model.task == "unconditional" and model.step == 7 and model.resolution == 16
    known, mask, _ = _case(n=2)
    a = inpaint(model, known, mask, [1, 2], steps=4, jump=2, repeats=2)
    b = inpaint(model, known, mask, [1, 2], steps=4, jump=2, repeats=2)
    single = inpaint(model, known[1:], mask[1:], [2], steps=4, jump=2, repeats=2)
    c = inpaint(model, known, mask, [1, 3], steps=4, jump=2, repeats=2)
    assert torch.equal(a, b)
    assert torch.allclose(a[1:], single, atol=1e-5)  # a face's result does not depend on its batch
    keep = (mask == 0).expand_as(known)
    assert torch.equal(a[keep], known[keep])
    assert not torch.allclose(a[1], c[1])
    assert a.min() >= -1 and a.max() <= 1


def test_inpaint_from_an_initial_guess_corrects_it_sdedit_style(tmp_path: Path) -> None:
    model = load_inpaint_model(_uncond_run(tmp_path / "u"))
    known, mask, _ = _case(n=2)
    guess = torch.linspace(-0.5, 0.5, 16)[None, None, None, :].expand(2, 3, 16, 16).contiguous()
    near = inpaint(model, known, mask, [1, 2], steps=3, init=guess, init_sigma=0.004)
    far = inpaint(model, known, mask, [1, 2], steps=3, init=guess, init_sigma=40.0)
    hole = (mask == 1).expand_as(known)
    keep = ~hole
    assert torch.equal(near[keep], known[keep]) and torch.equal(far[keep], known[keep])
    # from a barely noised guess the result is the guess; from σ = 40 the guess is forgotten
    assert (near[hole] - guess[hole]).abs().max() < 0.05
    assert (far[hole] - guess[hole]).abs().mean() > 0.1
    torch.testing.assert_close(
        near, inpaint(model, known, mask, [1, 2], steps=3, init=guess, init_sigma=0.004)
    )
    with pytest.raises(ValueError, match="go together"):
        inpaint(model, known, mask, [1, 2], steps=3, init=guess)
    with pytest.raises(ValueError, match="shape of known"):
        inpaint(model, known, mask, [1, 2], steps=3, init=guess[:, :, :8], init_sigma=1.0)


def test_train_task_inpaint_run_end_to_end(faces: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from diffengine.cli import main

    overrides = [f"--unet={k}={v!r}" for k, v in dataclasses.asdict(TINY_UNET).items()]
    args = ["train", str(faces), "--out", str(tmp_path / "inp"), "--preset", "faces32", "--task", "inpaint"]
    args += ["--max-steps", "3", "--batch-size", "4", "--sample-every", "3", "--device", "cpu", *overrides]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "inp" / "checkpoints" / "step_00000003").is_dir()
    assert (tmp_path / "inp" / "samples" / "step_00000003.png").is_file()  # previews of an inpaint net
    model = load_inpaint_model(tmp_path / "inp")
    assert model.task == "inpaint" and model.conditioned and model.denoiser.net.cond_channels == 4
    known, mask, _ = _case(n=2)
    out = inpaint(model, known, mask, [5, 6], steps=3)
    assert torch.equal(out, inpaint(model, known, mask, [5, 6], steps=3))
    keep = (mask == 0).expand_as(known)
    assert torch.equal(out[keep], known[keep])


def test_run_task_reads_the_record() -> None:
    assert run_task({"preset": {"unet": {}}}) == "unconditional"
    assert run_task({"task": "inpaint"}) == "inpaint"
    assert run_task({"train": {"task": "inpaint"}}) == "inpaint"
    assert run_task({"preset": {"unet": {"cond_channels": 4}}}) == "inpaint"
    with pytest.raises(CheckpointError, match="unknown task"):
        run_task({"task": "colourise"})


def test_missing_run_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such run"):
        load_inpaint_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_inpaint_model(tmp_path / "empty")


def test_damaged_weights_are_a_checkpoint_error(tmp_path: Path) -> None:
    run = _uncond_run(tmp_path / "run")
    (run / "checkpoints" / "step_00000007" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="run"):
        load_inpaint_model(run)
    wrong = _uncond_run(tmp_path / "wrong")
    state = torch.load(wrong / "checkpoints" / "step_00000007" / "state.pt", weights_only=True)
    state["task"] = "inpaint"  # the record says inpaint, the weights are an unconditional network
    torch.save(state, wrong / "checkpoints" / "step_00000007" / "state.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_inpaint_model(wrong)
