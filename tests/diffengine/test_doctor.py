"""Doctor: names the failure modes it finds, exits non-zero on failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from diffengine.doctor import (
    check_data,
    check_pairing,
    check_sampler_on_gaussian,
    data_statistics,
    run_doctor,
)
from diffengine.precond import make_formulation
from diffengine.schedules import get_sigmas, karras_sigmas


def test_pairing_and_gaussian_checks() -> None:
    edm, eps = make_formulation("edm"), make_formulation("vp-eps")
    assert check_pairing(edm, get_sigmas("karras", 18, edm)).severity == "ok"
    assert check_pairing(eps, get_sigmas("vp", 50, eps)).severity == "ok"
    # An ε-model sampled from σ_max = 2 (e.g. a schedule truncated to the last timesteps): named.
    bad = check_pairing(eps, karras_sigmas(20, 0.01, 2.0))
    assert bad.severity == "fail" and bad.name == "scheduler-pairing" and "σ_max" in bad.message
    # The closed-form Gaussian denoiser through a sampler reproduces μ and s; a truncated schedule does not.
    mu, std = torch.tensor([0.2, -0.1, -0.3]), torch.tensor([0.5, 0.4, 0.3])
    mean_err, std_err = check_sampler_on_gaussian(mu, std, "dpmpp2m", edm, "karras", 32)
    assert mean_err < 0.03 and std_err < 0.05
    sigmas = karras_sigmas(32, 0.002, 0.3)
    x = torch.randn(2000, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    from diffengine.doctor import gaussian_denoiser
    from diffengine.samplers import get_sampler

    out = get_sampler("dpmpp2m")(
        gaussian_denoiser(mu.view(1, 3, 1, 1), std.view(1, 3, 1, 1)), x, sigmas.float()
    )
    assert float((out.transpose(0, 1).flatten(1).std(1) / std - 1).abs().max()) > 0.2


def test_data_statistics_on_known_images() -> None:
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    images[1] = 255
    stats = data_statistics(images)
    assert stats["count"] == 2 and stats["resolution"] == 4
    assert stats["mean"] == [0.0, 0.0, 0.0] and stats["min"] == -1.0 and stats["max"] == 1.0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*only")
def test_doctor_on_real_faces_and_dark_data(faces: Path, tmp_path: Path) -> None:
    report = run_doctor(faces, out=tmp_path / "doc", preset="faces32")
    by_name = {f.name: f for f in report.findings}
    assert by_name["too-few-images"].severity == "warn"
    assert by_name["overfit"].severity == "ok", by_name["overfit"].message
    assert by_name["sampler"].severity == "ok", by_name["sampler"].message
    assert by_name["data-range"].severity == "ok"
    assert not report.failed and report.stats["count"] == 8
    picture = Image.open(tmp_path / "doc" / "denoise.png")
    assert picture.size[0] > 8 * 32 and picture.size[1] > 9 * 32  # 8 columns, 1 + 2·4 rows, zoomed
    text = report.format()
    assert "too-few-images" in text and "OK" in text.splitlines()[-1]

    # Nearly black images (the [0, 1]-scaled-to-uint8 mistake): a named data-range warning.
    dark = tmp_path / "dark"
    dark.mkdir()
    rng = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = torch.randint(0, 2, (16, 16, 3), generator=rng, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(dark / f"{i}.png")
    findings, _, _ = check_data(dark, 16)
    flagged = [f for f in findings if f.name == "data-range"]
    assert flagged and flagged[0].severity == "warn" and "low contrast" in flagged[0].message


@pytest.mark.parametrize("sampler", ["ipndm", "ipndm_v", "dpmpp3m", "edm_stochastic"])
def test_new_samplers_reproduce_a_gaussian_at_the_doctors_step_counts(sampler: str) -> None:
    from diffengine.doctor import GAUSSIAN_STEPS

    mu, std = torch.tensor([0.2, -0.1, -0.3]), torch.tensor([0.5, 0.4, 0.3])
    steps = GAUSSIAN_STEPS.get(sampler, 32)
    mean_err, std_err = check_sampler_on_gaussian(mu, std, sampler, make_formulation("edm"), "karras", steps)
    assert mean_err < 0.05 and std_err < 0.1, (mean_err, std_err)
    assert GAUSSIAN_STEPS["edm_stochastic"] == 64
