"""``generate``: any DenoiseFn, the same images whatever the batch size, the CUDA-graph policy (and, on
a GPU, graph == eager for every deterministic sampler), zoomed grids and raw | EMA sheets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffengine.config import UNetConfig, get_preset
from diffengine.doctor import gaussian_denoiser
from diffengine.generate import (
    GRAPH_MIN_BATCHES,
    _use_graph,
    build_denoiser,
    generate,
    grid_zoom,
    save_comparison,
    save_grid,
)
from diffengine.precond import make_formulation
from diffengine.samplers import DETERMINISTIC


def test_generate_any_denoise_fn_whatever_the_batch_size() -> None:
    """A closed-form denoiser (no module): formulation and resolution given; the batch split does not
    change any image, and the data mean comes out."""
    mu = torch.tensor([0.5, -0.5, 0.0]).view(1, 3, 1, 1)
    denoise = gaussian_denoiser(mu, torch.full((1, 3, 1, 1), 0.2))
    edm = make_formulation("edm")

    def run(n: int, batch_size: int, graph: bool | None = None) -> torch.Tensor:
        return generate(
            denoise, n, "ipndm", 12, seed=3, batch_size=batch_size, resolution=4, formulation=edm, graph=graph
        )

    whole, split = run(10, batch_size=10), run(10, batch_size=3)
    assert whole.dtype == torch.uint8 and whole.shape == (10, 3, 4, 4)
    assert torch.equal(whole, split)
    means = whole.float().mean(dim=(0, 2, 3)) / 127.5 - 1
    torch.testing.assert_close(means, mu.flatten(), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="formulation="):
        generate(denoise, 1, resolution=4)
    with pytest.raises(ValueError, match="CUDA device"):
        run(1, batch_size=1, graph=True)


def test_graph_policy() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert _use_graph(None, "ipndm", cuda, GRAPH_MIN_BATCHES)
    assert not _use_graph(None, "ipndm", cuda, GRAPH_MIN_BATCHES - 1)  # too few batches to pay the capture
    assert not _use_graph(None, "ipndm", cpu, 100)
    assert not _use_graph(None, "edm_stochastic", cuda, 100)  # draws noise: not capturable
    assert _use_graph(True, "euler", cuda, 1) and not _use_graph(False, "euler", cuda, 100)
    with pytest.raises(ValueError, match="draws noise"):
        _use_graph(True, "euler_ancestral", cuda, 1)
    assert {"ipndm", "ipndm_v", "dpmpp3m", "dpmpp2m", "heun", "euler", "ddim"} == DETERMINISTIC


def test_grids_are_zoomed_and_sheets_side_by_side(tmp_path: Path) -> None:
    assert (grid_zoom(16), grid_zoom(32), grid_zoom(64), grid_zoom(256)) == (6, 3, 1, 1)
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    images[0, :, 0, 0] = 255  # one white pixel: a 3x3 block after the zoom
    path = save_grid(images, tmp_path / "g.png")
    with Image.open(path) as grid:
        assert grid.size == (2 * 96 + 3 * 2,) * 2
        assert grid.getpixel((2, 2)) == grid.getpixel((4, 4)) == (255, 255, 255)
        assert grid.getpixel((5, 5)) == (0, 0, 0)
    sheet = save_comparison({"raw": images, "EMA": images}, tmp_path / "s.png")
    with Image.open(sheet) as img:
        assert img.size == (2 * 198 + 16, 28 + 198)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sampler", sorted(DETERMINISTIC))
def test_graph_and_eager_generate_the_same_images(sampler: str) -> None:
    unet = UNetConfig(
        resolution=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
        num_groups=8, head_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    denoiser = build_denoiser(dataclasses.replace(get_preset("faces32"), unet=unet)).cuda().eval()
    conv_out = denoiser.net.get_submodule("conv_out")
    assert isinstance(conv_out, torch.nn.Conv2d)
    with torch.no_grad():  # a trained-looking output: the zero-initialised last layer gets weights
        conv_out.weight.normal_(0, 0.05)
    eager = generate(denoiser, 12, sampler, 6, seed=1, batch_size=4, graph=False)
    graphed = generate(denoiser, 12, sampler, 6, seed=1, batch_size=4, graph=True)  # one graph, 3 replays
    assert (eager.float() - graphed.float()).abs().max() <= 1  # uint8: at most one rounding step apart
    assert (eager != graphed).float().mean() < 0.01
    assert eager.float().std() > 1  # not a constant image
