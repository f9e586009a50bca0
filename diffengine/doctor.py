"""``diffengine doctor DATA [--run RUN]``: a one-minute CPU check that names what would go wrong.

Checks, each a :class:`Finding` with a failure-mode name:

- ``data-range`` / ``data-stats``: count, source sizes, per-channel mean/std and min/max after scaling
  to [-1, 1] (what the training loop sees), low contrast, upscaled sources;
- ``too-few-images``: under ~1000 images a diffusion model memorises;
- ``overfit``: a tiny UNet must fit one fixed batch (fixed σ and noise): the loss has to fall by a large
  factor (reported), otherwise model, loss or optimiser are broken;
- ``denoise``: real images noised at a few σ and denoised (by the run's EMA model when ``--run`` is
  given, else the overfit model) written to a PNG to look at;
- ``sampler``: every sampler driven by the closed-form denoiser of a Gaussian N(μ, s²) with the data's
  per-channel μ, s must reproduce μ and s;
- ``scheduler-pairing``: the σ schedule a run samples with must cover the formulation's trained range
  (e.g. an ε-model sampled from a too-small σ_max gives "almost noise");
- ``no-ema``: a run without EMA weights (raw weights give noisy samples);
- ``fp16-old-card``: fp16 on a card below compute capability 7.0 (GTX 10xx: no tensor cores, unstable).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from diffengine.config import Preset, UNetConfig, get_preset
from diffengine.data import FEW_IMAGES, DataCheckError, check_batch, load_images, open_source, to_model_range
from diffengine.generate import (
    build_denoiser,
    initial_noise,
    make_grid,
    sample_from_noise,
    step_generator,
    to_pil,
)
from diffengine.loss import diffusion_loss
from diffengine.precond import Denoiser, Formulation, make_formulation
from diffengine.samplers import SAMPLERS
from diffengine.schedules import get_sigmas

Severity = Literal["ok", "info", "warn", "fail"]
TINY_UNET = UNetConfig(
    resolution=16,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    num_groups=8,
    head_dim=16,
)
OVERFIT_SIGMAS = (0.2, 0.5, 1.0, 2.0)
# First-order samplers converge slowly (error ∝ 1/steps): give them enough steps for the 10% tolerance.
GAUSSIAN_STEPS = {"euler": 100, "ddim": 100, "euler_ancestral": 250}


@dataclass(frozen=True)
class Finding:
    """One check's outcome. ``name`` is the failure mode it looks for."""

    name: str
    severity: Severity
    message: str


@dataclass(frozen=True)
class DoctorReport:
    data: str
    findings: tuple[Finding, ...]
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(f.severity == "fail" for f in self.findings)

    def format(self) -> str:
        lines = [f"diffengine doctor {self.data}"]
        lines += [f"  [{f.severity:>4}] {f.name}: {f.message}" for f in self.findings]
        fails = [f.name for f in self.findings if f.severity == "fail"]
        warns = [f.name for f in self.findings if f.severity == "warn"]
        verdict = f"FAILED: {', '.join(fails)}" if fails else "OK"
        lines.append(
            f"{verdict}" + (f" (warnings: {', '.join(warns)})" if warns else "") + f" in {self.seconds:.0f}s"
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Data


def data_statistics(images: torch.Tensor) -> dict[str, Any]:
    """Per-channel mean/std and the range of uint8 images (N, C, H, W) after scaling to [-1, 1]."""
    x = to_model_range(images)
    per_channel = x.transpose(0, 1).flatten(1)  # (C, N·H·W)
    return {
        "count": int(images.shape[0]),
        "resolution": int(images.shape[-1]),
        "mean": [round(float(v), 4) for v in per_channel.mean(1)],
        "std": [round(float(v), 4) for v in per_channel.std(1)],
        "min": float(x.min()),
        "max": float(x.max()),
    }


def check_data(
    path: str | os.PathLike[str], resolution: int, limit: int = 512
) -> tuple[list[Finding], torch.Tensor, dict[str, Any]]:
    """Findings about the data, up to ``limit`` images (evenly spread) at ``resolution`` as uint8, and
    their :func:`data_statistics`."""
    source = open_source(path)
    n = len(source.names)
    pick = [source.names[i] for i in torch.linspace(0, n - 1, min(n, limit)).round().long().unique().tolist()]
    images = load_images(source, resolution, pick)
    stats = data_statistics(images)
    sizes = [_source_size(source, name) for name in pick[:32]]
    small = min(min(s) for s in sizes)
    findings = [
        Finding(
            "data-stats",
            "info",
            f"{n} images ({'zip' if source.is_zip else 'folder'}), source sizes "
            f"{min(sizes)}..{max(sizes)}; at {resolution}px in [-1, 1]: mean {stats['mean']} "
            f"std {stats['std']} "
            f"min {stats['min']:.3f} max {stats['max']:.3f} (from {stats['count']} images)",
        )
    ]
    try:
        notes = check_batch(to_model_range(images))
        low = min(stats["std"]) < 0.1
        findings.append(
            Finding(
                "data-range",
                "warn" if notes or low else "ok",
                "; ".join(notes)
                if notes
                else (
                    "very low contrast (std < 0.1)" if low else "pixels scaled to [-1, 1] and using the range"
                ),
            )
        )
    except DataCheckError as exc:
        findings.append(Finding("data-range", "fail", str(exc)))
    if small < resolution:
        findings.append(
            Finding("data-range", "warn", f"some sources are {small}px, upscaled to {resolution}px")
        )
    few = n < FEW_IMAGES
    findings.append(
        Finding(
            "too-few-images",
            "warn" if few else "ok",
            f"{n} images" + (f": under ~{FEW_IMAGES} the model memorises them; get more data" if few else ""),
        )
    )
    return findings, images, stats


def _source_size(source: Any, name: str) -> tuple[int, int]:
    import io

    with Image.open(io.BytesIO(source.read_bytes(name))) as img:
        return img.size


# ---------------------------------------------------------------------------------------------------
# One-batch overfit


def overfit_one_batch(
    denoiser: Denoiser,
    x: torch.Tensor,
    steps: int = 150,
    lr: float = 1e-3,
    target_factor: float = 20.0,
    sigmas: tuple[float, ...] = OVERFIT_SIGMAS,
    seed: int = 0,
) -> tuple[float, list[float]]:
    """Fit one batch with fixed σ and fixed noise (Adam); returns (first/last loss factor, losses).

    Stops early once the loss has fallen by ``target_factor``. A working model/loss/optimiser gets
    ≥ 10× within ~150 steps on 8 real faces at 16 px.
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g).to(x.device)
    sigma = torch.tensor(sigmas, device=x.device).repeat(x.shape[0] // len(sigmas) + 1)[: x.shape[0]]
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    denoiser.train()
    losses: list[float] = []
    for _ in range(steps):
        loss = diffusion_loss(denoiser, x, sigma=sigma, noise=noise).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if losses[0] / max(losses[-1], 1e-12) >= target_factor:
            break
    denoiser.eval()
    return losses[0] / max(losses[-1], 1e-12), losses


# ---------------------------------------------------------------------------------------------------
# Denoising picture


@torch.no_grad()
def denoise_picture(
    denoiser: Denoiser, x: torch.Tensor, out: Path, sigmas: tuple[float, ...] = (0.1, 0.5, 2.0, 10.0)
) -> Path:
    """Rows: clean, then for each σ the noisy input and the denoised output (σ grows downwards)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g).to(x.device)
    rows = [x]
    for s in sigmas:
        noisy = x + s * noise
        rows += [noisy / max(1.0, (1 + s**2) ** 0.5), denoiser(noisy, s)]  # noisy shown rescaled
    from diffengine.data import to_uint8

    images = to_uint8(torch.cat(rows))
    zoom = max(1, 64 // images.shape[-1])  # small images: nearest-neighbour zoom so one can see them
    images = images.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
    grid = make_grid(images, nrow=x.shape[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid).save(out)
    return out


# ---------------------------------------------------------------------------------------------------
# Samplers on a Gaussian (closed-form denoiser)


def gaussian_denoiser(
    mu: torch.Tensor, std: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Ideal D(x; σ) = μ + s²/(s² + σ²)·(x − μ) for data N(μ, diag(s²)); μ, s broadcast over (B, C, H, W)."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = std.square()
        sig2 = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1).square()
        return mu + s2 / (s2 + sig2) * (x - mu)

    return denoise


def check_sampler_on_gaussian(
    mu: torch.Tensor,
    std: torch.Tensor,
    sampler: str,
    formulation: Formulation,
    schedule: str = "karras",
    steps: int = 20,
    n: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """(max |mean error|, max relative std error) over channels of ``n`` samples of N(μ, s²) at 4×4 px."""
    sigmas = get_sigmas(schedule, steps, formulation).float()
    c = mu.numel()
    denoiser = gaussian_denoiser(mu.view(1, c, 1, 1), std.view(1, c, 1, 1))
    noise = initial_noise((n, c, 4, 4), seed)
    out = sample_from_noise(denoiser, noise, sampler, sigmas, step_generator(seed))
    flat = out.transpose(0, 1).flatten(1)
    mean_err = float((flat.mean(1) - mu).abs().max())
    std_err = float(((flat.std(1) - std).abs() / std).max())
    return mean_err, std_err


def check_pairing(formulation: Formulation, sigmas: torch.Tensor, data_std: float = 0.5) -> Finding:
    """Does a sampling σ schedule fit the formulation? Starts far above the data scale, ends near 0, and
    stays inside the σ range the network was trained for."""
    s = sigmas[sigmas > 0]
    top, bottom = float(s[0]), float(s[-1])
    problems = []
    if top < 20 * data_std:
        problems.append(
            f"σ_max {top:.3g} is < 20× the data std {data_std:.2g}: samples start from data+noise, "
            "not noise (the result stays noisy or washed out)"
        )
    if bottom > 0.05 * data_std:
        problems.append(f"σ_min {bottom:.3g} is too large: residual noise is left in the samples")
    if top > 2 * formulation.sigma_max or bottom < 0.5 * formulation.sigma_min:
        problems.append(
            f"σ range [{bottom:.3g}, {top:.3g}] leaves the trained range "
            f"[{formulation.sigma_min:.3g}, {formulation.sigma_max:.3g}] of {formulation.name}"
        )
    if problems:
        return Finding("scheduler-pairing", "fail", "; ".join(problems))
    return Finding(
        "scheduler-pairing",
        "ok",
        f"{formulation.name}: σ {top:.3g} → {bottom:.3g} inside [{formulation.sigma_min:.3g}, "
        f"{formulation.sigma_max:.3g}]",
    )


# ---------------------------------------------------------------------------------------------------
# Environment and run


def check_environment(precision: str | None = None) -> list[Finding]:
    """fp16 on cards below compute capability 7.0; what precision ``auto`` will pick."""
    if not torch.cuda.is_available():
        return [Finding("fp16-old-card", "ok", "no CUDA device: training runs in fp32 on the CPU")]
    findings = []
    for i in range(torch.cuda.device_count()):
        name, cap = torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i)
        old = cap < (7, 0)
        if precision == "fp16" and old:
            findings.append(
                Finding(
                    "fp16-old-card",
                    "fail",
                    f"{name} (compute capability {cap[0]}.{cap[1]}) trains fp16 slowly and "
                    "unstably: use --precision fp32 (the default 'auto' does)",
                )
            )
        else:
            auto = "bf16" if cap >= (8, 0) else "fp32"
            findings.append(
                Finding(
                    "fp16-old-card",
                    "warn" if old else "ok",
                    f"{name} (capability {cap[0]}.{cap[1]}): precision auto = {auto}"
                    + ("; never use fp16 on this card" if old else ""),
                )
            )
    return findings


def check_run(run: Path) -> tuple[list[Finding], Denoiser | None, Preset | None]:
    """EMA present, sampler/schedule pairing and precision of a trained run."""
    from diffengine.checkpoint import latest_checkpoint, load_checkpoint
    from diffengine.config import config_from_dict
    from diffengine.generate import load_run

    found = latest_checkpoint(run / "checkpoints")
    if found is None:
        return [Finding("run", "fail", f"{run}: no checkpoint in {run / 'checkpoints'}")], None, None
    ckpt = load_checkpoint(found, tensors=False)
    preset: Preset = config_from_dict(ckpt.state["preset"])
    findings = [Finding("run", "info", f"{found} (step {ckpt.step}, {preset.name}, {preset.formulation})")]
    has_ema = (found / "ema.safetensors").is_file()
    findings.append(
        Finding(
            "no-ema",
            "ok" if has_ema else "fail",
            "EMA weights saved; sampling uses them"
            if has_ema
            else f"{found} has no EMA weights: samples from raw weights are noisy (train with EMA)",
        )
    )
    formulation = make_formulation(preset.formulation, **preset.formulation_kwargs)
    findings.append(check_pairing(formulation, get_sigmas(preset.schedule, preset.sample_steps, formulation)))
    findings += check_environment(ckpt.state.get("train", {}).get("precision"))
    denoiser, _ = load_run(run, use_ema=has_ema)
    return findings, denoiser, preset


# ---------------------------------------------------------------------------------------------------
# The whole check


def run_doctor(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] = "doctor",
    run: str | os.PathLike[str] | None = None,
    preset: str = "faces64",
    overfit_steps: int = 150,
    limit: int = 512,
    seed: int = 0,
) -> DoctorReport:
    """Run every check; writes ``out/denoise.png`` and returns the report (``.failed``, ``.format()``)."""
    start = time.perf_counter()
    out = Path(out)
    torch.manual_seed(seed)
    run_findings: list[Finding] = []
    run_denoiser: Denoiser | None = None
    resolution = get_preset(preset).unet.resolution
    if run is not None:
        run_findings, run_denoiser, run_preset = check_run(Path(run))
        if run_preset is not None:
            resolution = run_preset.unet.resolution
    findings, images, stats = check_data(data, resolution, limit)

    # One-batch overfit of a tiny model at 16 px on 8 real images.
    pick = torch.linspace(0, images.shape[0] - 1, min(8, images.shape[0])).round().long()
    small = torch.nn.functional.interpolate(to_model_range(images[pick]), size=16, mode="area")
    tiny = build_denoiser(dataclasses.replace(get_preset(preset), unet=TINY_UNET))
    factor, losses = overfit_one_batch(tiny, small, steps=overfit_steps, seed=seed)
    findings.append(
        Finding(
            "overfit",
            "ok" if factor >= 10 else "fail",
            f"one batch of {small.shape[0]} images: loss {losses[0]:.3f} → {losses[-1]:.4f} "
            f"({factor:.0f}× in {len(losses)} steps; needs ≥ 10×)",
        )
    )

    # Denoising picture: the run's model on its own resolution, else the overfit model.
    if run_denoiser is not None:
        picture = denoise_picture(run_denoiser, to_model_range(images[pick]), out / "denoise.png")
        who = "the run's EMA model"
    else:
        picture = denoise_picture(tiny, small, out / "denoise.png")
        who = "the one-batch overfit model (pass --run RUN to see a trained one)"
    findings.append(
        Finding(
            "denoise", "info", f"{picture}: clean row, then noisy/denoised rows at σ 0.1, 0.5, 2, 10 by {who}"
        )
    )

    # Samplers against the closed form, with the data's per-channel mean/std.
    mu, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"]).clamp_min(0.2)
    edm = make_formulation("edm")
    bad = []
    for name in SAMPLERS:
        form = make_formulation("vp-eps") if name == "ddpm" else edm
        schedule, steps = ("vp", 100) if name == "ddpm" else ("karras", GAUSSIAN_STEPS.get(name, 32))
        mean_err, std_err = check_sampler_on_gaussian(mu, std, name, form, schedule, steps, seed=seed)
        if mean_err > 0.05 or std_err > 0.1:
            bad.append(f"{name} (mean error {mean_err:.3f}, std error {std_err:.1%})")
    findings.append(
        Finding(
            "sampler",
            "fail" if bad else "ok",
            ("wrong distribution from " + ", ".join(bad))
            if bad
            else f"all {len(SAMPLERS)} samplers reproduce N(data mean, data std) within 0.05 / 10%",
        )
    )
    if run is None:
        findings.append(check_pairing(edm, get_sigmas("karras", 18, edm)))
        findings += check_environment()
        findings.append(
            Finding("no-ema", "info", "no --run given; `diffengine train` keeps an EMA by default")
        )
    findings += run_findings
    return DoctorReport(str(data), tuple(findings), stats, time.perf_counter() - start)
