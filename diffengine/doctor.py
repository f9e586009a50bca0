"""``diffengine doctor DATA [--run RUN]``: a one-minute CPU check that names what would go wrong.

Checks, each a :class:`Finding` with a failure-mode name:

- ``data-range`` / ``data-stats``: count, source sizes, per-channel mean/std and min/max after scaling
  to [-1, 1] (what the training loop sees), low contrast, upscaled sources;
- ``too-few-images``: under ~1000 images a diffusion model memorises;
- ``overfit``: a tiny UNet (:data:`OVERFIT_UNET`) must fit one fixed batch (fixed σ and noise): the
  loss has to fall by a large factor (reported), otherwise model, loss or optimiser are broken;
- ``denoise``: real images noised at a few σ and denoised (by the run's EMA model when ``--run`` is
  given, else the overfit model) written to a PNG to look at, each row labelled with its σ;
- ``ema-behind``: with ``--run``, the EMA weights' denoising loss on a fixed batch of DATA (fixed noise,
  σ in :data:`EMA_CHECK_SIGMAS`) over the raw weights'; above :data:`EMA_BEHIND_RATIO` the EMA samples
  are much worse than raw ones (the "EMA samples stay noise" reports: a half-life too long for the run);
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
from collections.abc import Sequence
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
from diffengine.precond import DenoiseFn, Denoiser, Formulation, make_formulation
from diffengine.samplers import SAMPLERS
from diffengine.schedules import get_sigmas

Severity = Literal["ok", "info", "warn", "fail"]
# The network of the one-batch overfit check: small enough for a CPU minute, part of the product.
OVERFIT_UNET = UNetConfig(
    resolution=16,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    num_groups=8,
    head_dim=16,
)
OVERFIT_SIGMAS = (0.2, 0.5, 1.0, 2.0)
DENOISE_SIGMAS = (0.1, 0.5, 2.0, 10.0)
EMA_CHECK_SIGMAS = (0.2, 0.5, 1.0, 2.0, 5.0)  # where a face's content is decided
EMA_BEHIND_RATIO = 1.5
# First-order samplers converge slowly (error ∝ 1/steps): give them enough steps for the 10% tolerance;
# the stochastic ones also average their added noise out. The rest (2nd-4th order) get 32.
GAUSSIAN_STEPS = {"euler": 100, "ddim": 100, "euler_ancestral": 250, "edm_stochastic": 64}


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
    denoiser: DenoiseFn, x: torch.Tensor, out: Path, sigmas: tuple[float, ...] = DENOISE_SIGMAS
) -> Path:
    """Rows: clean, then for each σ the noisy input and the denoised output (σ grows downwards), each row
    labelled on the left; small images zoomed (nearest neighbour) to ~96 px."""
    from diffengine.data import to_uint8
    from diffengine.generate import grid_zoom, zoom
    from diffengine.plots import with_row_labels

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g).to(x.device)
    rows, labels = [x], ["clean"]
    for s in sigmas:
        noisy = x + s * noise
        batch_sigma = torch.full((x.shape[0],), s, device=x.device)
        rows += [noisy / max(1.0, (1 + s**2) ** 0.5), denoiser(noisy, batch_sigma)]  # noisy shown rescaled
        labels += [f"σ = {s:g}  noisy", f"σ = {s:g}  denoised"]
    images = zoom(to_uint8(torch.cat(rows)), grid_zoom(x.shape[-1]))
    pad = 2
    grid = with_row_labels(to_pil(make_grid(images, nrow=x.shape[0], pad=pad)), labels, images.shape[-2], pad)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


# ---------------------------------------------------------------------------------------------------
# EMA against raw weights


@torch.no_grad()
def fixed_batch_loss(
    denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float] = EMA_CHECK_SIGMAS, seed: int = 0
) -> float:
    """The training loss (EDM-weighted) of ``denoiser`` on every image of ``x`` at every σ, with fixed
    noise: the same number for the same weights, comparable between two sets of weights."""
    xs = x.repeat(len(sigmas), 1, 1, 1)
    sigma = torch.tensor(list(sigmas), device=x.device).repeat_interleave(x.shape[0])
    noise = torch.randn(xs.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
    was_training = denoiser.training
    denoiser.eval()
    try:
        return float(diffusion_loss(denoiser, xs, sigma=sigma, noise=noise).loss)
    finally:
        denoiser.train(was_training)


def check_ema(raw: Denoiser, ema: Denoiser, x: torch.Tensor) -> Finding:
    """``ema-behind``: EMA loss / raw loss on the fixed batch ``x`` above :data:`EMA_BEHIND_RATIO`."""
    raw_loss, ema_loss = fixed_batch_loss(raw, x), fixed_batch_loss(ema, x)
    ratio = ema_loss / max(raw_loss, 1e-12)
    measured = (
        f"denoising loss on {x.shape[0]} fixed images at σ {', '.join(f'{s:g}' for s in EMA_CHECK_SIGMAS)}: "
        f"EMA {ema_loss:.4f}, raw {raw_loss:.4f} ({ratio:.2f}x)"
    )
    if ratio > EMA_BEHIND_RATIO:
        return Finding(
            "ema-behind",
            "warn",
            f"EMA far behind raw: {measured} > {EMA_BEHIND_RATIO}x. EMA samples will look worse than raw "
            "ones (noise, early in training): the EMA half-life is long for this run's length; train "
            "longer, lower --ema-half-life-kimg, or sample with --raw for now",
        )
    return Finding("ema-behind", "ok", measured)


# ---------------------------------------------------------------------------------------------------
# Samplers on a Gaussian (closed-form denoiser)


def gaussian_denoiser(mu: torch.Tensor, std: torch.Tensor) -> DenoiseFn:
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


@dataclass(frozen=True)
class RunModels:
    """A trained run as the doctor sees it: its preset and its raw and EMA denoisers (EMA ``None`` when
    the run saved none)."""

    preset: Preset
    raw: Denoiser
    ema: Denoiser | None


def check_run(run: Path) -> tuple[list[Finding], RunModels | None]:
    """EMA present, sampler/schedule pairing and precision of a trained run; its models."""
    from diffengine.checkpoint import latest_checkpoint, load_checkpoint
    from diffengine.config import config_from_dict
    from diffengine.generate import load_run

    found = latest_checkpoint(run / "checkpoints")
    if found is None:
        return [Finding("run", "fail", f"{run}: no checkpoint in {run / 'checkpoints'}")], None
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
    # Checkpoints before Preset.precision was read recorded the choice in the train config only.
    findings += check_environment(ckpt.state.get("train", {}).get("precision") or preset.precision)
    raw, _ = load_run(run, use_ema=False)
    ema = load_run(run, use_ema=True)[0] if has_ema else None
    return findings, RunModels(preset, raw, ema)


# ---------------------------------------------------------------------------------------------------
# The whole check: every check is a function returning its findings; run_doctor lists them in order.


def check_overfit(
    images: torch.Tensor, preset: Preset, steps: int, seed: int
) -> tuple[list[Finding], Denoiser]:
    """``overfit``: :data:`OVERFIT_UNET` fits 8 real images at 16 px by ≥ 10x; returns the fitted model."""
    small = _overfit_batch(images)
    tiny = build_denoiser(dataclasses.replace(preset, unet=OVERFIT_UNET))
    factor, losses = overfit_one_batch(tiny, small, steps=steps, seed=seed)
    finding = Finding(
        "overfit",
        "ok" if factor >= 10 else "fail",
        f"one batch of {small.shape[0]} images: loss {losses[0]:.3f} → {losses[-1]:.4f} "
        f"({factor:.0f}× in {len(losses)} steps; needs ≥ 10×)",
    )
    return [finding], tiny


def _pick(images: torch.Tensor, n: int = 8) -> torch.Tensor:
    return images[torch.linspace(0, images.shape[0] - 1, min(n, images.shape[0])).round().long()]


def _overfit_batch(images: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(to_model_range(_pick(images)), size=16, mode="area")


def check_denoise(images: torch.Tensor, out: Path, models: RunModels | None, tiny: Denoiser) -> list[Finding]:
    """``denoise``: the picture, by the run's EMA (else raw) model at its resolution, else the overfit one."""
    if models is not None:
        model, x = models.ema or models.raw, to_model_range(_pick(images))
        who = "the run's EMA model" if models.ema is not None else "the run's raw model"
    else:
        model, x = tiny, _overfit_batch(images)
        who = "the one-batch overfit model (pass --run RUN to see a trained one)"
    picture = denoise_picture(model, x, out / "denoise.png")
    sigmas = ", ".join(f"{s:g}" for s in DENOISE_SIGMAS)
    return [
        Finding("denoise", "info", f"{picture}: clean row, then noisy/denoised rows at σ {sigmas} by {who}")
    ]


def check_ema_of_run(images: torch.Tensor, models: RunModels | None) -> list[Finding]:
    """``ema-behind`` for a run with EMA weights (nothing to compare otherwise)."""
    if models is None or models.ema is None:
        return []
    return [check_ema(models.raw, models.ema, to_model_range(_pick(images)))]


def check_samplers(stats: dict[str, Any], seed: int) -> list[Finding]:
    """``sampler``: every sampler reproduces N(data mean, data std) through the closed-form denoiser."""
    mu, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"]).clamp_min(0.2)
    edm = make_formulation("edm")
    bad = []
    for name in SAMPLERS:
        form = make_formulation("vp-eps") if name == "ddpm" else edm
        schedule, steps = ("vp", 100) if name == "ddpm" else ("karras", GAUSSIAN_STEPS.get(name, 32))
        mean_err, std_err = check_sampler_on_gaussian(mu, std, name, form, schedule, steps, seed=seed)
        if mean_err > 0.05 or std_err > 0.1:
            bad.append(f"{name} (mean error {mean_err:.3f}, std error {std_err:.1%})")
    return [
        Finding(
            "sampler",
            "fail" if bad else "ok",
            ("wrong distribution from " + ", ".join(bad))
            if bad
            else f"all {len(SAMPLERS)} samplers reproduce N(data mean, data std) within 0.05 / 10%",
        )
    ]


def check_defaults(preset: Preset) -> list[Finding]:
    """Without a run: the preset's default sampling schedule, the environment, the EMA reminder."""
    formulation = make_formulation(preset.formulation, **preset.formulation_kwargs)
    return [
        check_pairing(formulation, get_sigmas(preset.schedule, preset.sample_steps, formulation)),
        *check_environment(preset.precision),
        Finding("no-ema", "info", "no --run given; `diffengine train` keeps an EMA by default"),
    ]


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
    torch.manual_seed(seed)
    run_findings, models = check_run(Path(run)) if run is not None else ([], None)
    chosen = models.preset if models is not None else get_preset(preset)
    findings, images, stats = check_data(data, chosen.unet.resolution, limit)
    overfit, tiny = check_overfit(images, chosen, overfit_steps, seed)
    findings += overfit
    findings += check_denoise(images, Path(out), models, tiny)
    findings += check_ema_of_run(images, models)
    findings += check_samplers(stats, seed)
    findings += run_findings if run is not None else check_defaults(chosen)
    return DoctorReport(str(data), tuple(findings), stats, time.perf_counter() - start)
