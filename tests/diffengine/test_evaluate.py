"""End to end: a tiny trained run → ``diffengine eval`` → JSON; cached reference statistics; sweep."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffengine.evaluate import default_extractor, kid_during_training, score_images, sweep
from diffengine.evaluate_cli import eval_command
from diffengine.generate import generate, load_run
from diffengine.metrics.fid import kid
from diffengine.metrics.inception import InceptionFeatures
from diffengine.metrics.refstats import (
    RefStats,
    default_cache_dir,
    load_refstats,
    reference_statistics,
    select_names,
)
from diffengine.train import TrainConfig, train

RES = 16
TINY_UNET = {
    "resolution": RES,
    "model_channels": 16,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (),
    "head_dim": 32,
    "num_groups": 8,
}


N_IMAGES = 4  # Inception costs ~0.1-0.5 s per image on a CPU core: the whole module embeds ~20


@pytest.fixture(scope="module")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory,
    shared_dir: Path,
    inception_weights: Path,
    tiny_config: Callable[..., TrainConfig],
) -> tuple[Path, Path]:
    """(run dir, image folder): a few real faces and a 2-step training run on them."""
    root = tmp_path_factory.mktemp("evalrun")
    data = root / "faces"
    data.mkdir()
    for src in sorted((shared_dir / "data" / "utkface").glob("*.jpg"))[:N_IMAGES]:
        (data / src.name).write_bytes(src.read_bytes())
    run = root / "run"
    cfg = tiny_config(data, run, max_steps=2, log_every=1, unet=TINY_UNET, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only 8 images" and "loss did not fall" are expected here
        train(cfg)
    return run, data


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ref(tiny_run: tuple[Path, Path], cache_root: Path) -> RefStats:
    """Reference statistics of the run's images, cached where ``DIFFENGINE_CACHE=cache_root`` looks."""
    return reference_statistics(tiny_run[1], RES, cache_dir=cache_root / "refstats", verbose=False)


def test_eval_cli_end_to_end(
    tiny_run: tuple[Path, Path], ref: RefStats, cache_root: Path, tmp_path: Path
) -> None:
    run, data = tiny_run
    out = tmp_path / "result.json"
    args = [str(run), "--ref", str(data), "--n", "4", "--sampler", "euler", "--steps", "2", "--out", str(out)]
    result = CliRunner().invoke(
        eval_command, args, env={"DIFFENGINE_CACHE": str(cache_root)}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "n_gen=4" in result.output and "n_ref=4" in result.output
    assert "embedding" not in result.output  # the reference came from the cache
    record = json.loads(out.read_text())
    assert (record["sampler"], record["steps"], record["nfe"], record["n"]) == ("euler", 2, 2, 4)
    assert record["resolution"] == RES and record["ref_count"] == N_IMAGES
    assert record["ref_fingerprint"] == ref.fingerprint
    metrics = {m["metric"]: m for m in record["metrics"]}
    assert set(metrics) == {"fid", "kid"}
    assert metrics["fid"]["value"] > 0 and np.isfinite(metrics["kid"]["value"])
    assert metrics["kid"]["n_gen"] == 4 and metrics["kid"]["subset_size"] == 4
    assert record["wall_time_s"] > 0 and record["sampling_images_per_s"] > 0


def test_eval_cli_rejects_unknown_sampler(tiny_run: tuple[Path, Path]) -> None:
    run, data = tiny_run
    result = CliRunner().invoke(eval_command, [str(run), "--ref", str(data), "--sampler", "nope"])
    assert result.exit_code != 0 and "unknown sampler" in result.output


class _NoEmbedding:
    """Stands in for Inception when statistics must come from the cache."""

    def __init__(self, preprocessing_id: str) -> None:
        self.preprocessing_id = preprocessing_id

    def embed(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        raise AssertionError("reference statistics were recomputed instead of read from the cache")


def test_refstats_are_cached_and_reloaded(
    tiny_run: tuple[Path, Path], ref: RefStats, cache_root: Path
) -> None:
    _, data = tiny_run
    assert (
        ref.count == N_IMAGES and ref.features.shape == (N_IMAGES, 2048) and ref.sigma.shape == (2048, 2048)
    )
    np.testing.assert_allclose(ref.mu, ref.features.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    (cached,) = (cache_root / "refstats").glob("*.npz")
    fake = cast(InceptionFeatures, _NoEmbedding(ref.preprocessing))  # duck-typed: only .embed is used
    again = reference_statistics(data, RES, extractor=fake, cache_dir=cache_root / "refstats", verbose=False)
    np.testing.assert_array_equal(again.sigma, ref.sigma)
    assert load_refstats(cached).fingerprint == ref.fingerprint
    # A different resolution is a different reference.
    with pytest.raises(AssertionError, match="recomputed"):
        reference_statistics(data, 8, extractor=fake, cache_dir=cache_root / "refstats", verbose=False)
    # ...and a cached .npz passed directly must match the model resolution.
    with pytest.raises(ValueError, match="16px"):
        reference_statistics(cached, 32)


def test_select_names_is_split_and_unbiased() -> None:
    names = [f"{age}_0_0_x{i}.jpg" for age in range(1, 101) for i in range(5)]
    held = select_names(names, "heldout", 0.2, None)
    train_names = select_names(names, "train", 0.2, None)
    assert set(held).isdisjoint(train_names) and len(held) + len(train_names) == len(names)
    subset = select_names(names, "all", 0.1, 50)
    ages = [int(n.split("_")[0]) for n in subset]
    assert len(subset) == 50 and max(ages) - min(ages) > 50  # not the 50 alphabetically first


def test_sweep_and_training_kid(tiny_run: tuple[Path, Path], ref: RefStats, tmp_path: Path) -> None:
    run, _ = tiny_run
    table = sweep(run, ref, n=2, samplers=("euler", "heun"), nfes=(3,), out=tmp_path / "sweep.json")
    rows = {(r["sampler"], r["steps"], r["nfe"]) for r in table["rows"]}
    assert rows == {("euler", 3, 3), ("heun", 2, 3)}  # heun: 2 steps → 3 NFE
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"][0]["n"] == 2
    denoiser, _ = load_run(run)
    record = kid_during_training(denoiser, ref, n=2, sampler="euler", steps=2, batch_size=2)
    assert set(record) >= {"kid", "kid_std", "n", "nfe", "wall_time_s"} and record["n"] == 2
    assert np.isfinite(record["kid"])


def test_samples_of_a_2_step_model_score_worse_than_the_real_faces(
    tiny_run: tuple[Path, Path], ref: RefStats
) -> None:
    # Sanity of the whole chain: the real faces (their features are in ``ref``) sit closer to the
    # reference than the noise-like samples of a model trained for 2 steps.
    denoiser, _ = load_run(tiny_run[0])
    fake = default_extractor().embed(generate(denoiser, N_IMAGES, sampler="euler", steps=2, seed=1)).numpy()
    kid_real = kid(ref.features, ref.features).value
    kid_fake = kid(fake, ref.features).value
    assert kid_fake > kid_real + 0.01
    with pytest.raises(ValueError, match="reference is at 16px"):
        score_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ref)


def test_refstats_cache_follows_the_cache_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DIFFENGINE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "diffengine" / "refstats"
    monkeypatch.setenv("DIFFENGINE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "refstats"
    monkeypatch.delenv("DIFFENGINE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "diffengine" / "refstats"
