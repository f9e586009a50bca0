"""Fixtures shared by the diffengine tests: one intra-op thread, a zip of real faces, the tiny test
network (``tiny_unet``, ``tiny_cli_args``), tiny training configurations (factory fixtures) and the
Inception weights guard.

Helpers are fixtures rather than an importable module because pytest runs with
``--import-mode=importlib``, under which ``tests`` is not a package on ``sys.path``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:  # imported where used: kernel tests need not load the training stack
    from diffengine.config import UNetConfig
    from diffengine.train import TrainConfig

# The tests' network: 16 px, two levels, no attention (a training step takes milliseconds on a CPU).
TINY_UNET_FIELDS: dict[str, Any] = {
    "resolution": 16,
    "model_channels": 32,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (),
    "num_groups": 8,
    "head_dim": 16,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The CI box has 2 shared cores: one intra-op thread is several times faster than two that contend,
    for tiny models and Inception convolutions alike."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def faces(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first eight UTKFace images (by name) in a zip in tmp; the shared data is never copied into
    the repo."""
    folder = shared_dir / "data" / "utkface"
    path = tmp_path_factory.mktemp("faces") / "eight.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(p.name for p in folder.iterdir())[:8]:
            zf.write(folder / name, name)
    return path


@pytest.fixture(scope="session")
def tiny_unet() -> UNetConfig:
    """The tests' tiny ``UNetConfig``."""
    from diffengine.config import UNetConfig

    return UNetConfig(**TINY_UNET_FIELDS)


@pytest.fixture(scope="session")
def tiny_cli_args() -> list[str]:
    """``diffengine train`` options for a few CPU steps of the tiny network (faces32 preset, batch 4,
    a log line every step)."""
    args = ["--preset", "faces32", "--batch-size", "4", "--log-every", "1"]
    for key, value in TINY_UNET_FIELDS.items():
        args += ["--unet", f"{key}={value}"]
    return args


def _tiny_train_kwargs(data: Path, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "data": str(data),
        "preset": "faces32",
        "batch_size": 4,
        "log_every": 2,
        "sample_every": 10**6,
        "ckpt_every": 10**6,
        "num_samples": 4,
        "progress": False,
        "unet": dict(TINY_UNET_FIELDS),
    }
    return base | overrides


@pytest.fixture(scope="session")
def tiny_train_kwargs() -> Callable[..., dict[str, Any]]:
    """``(data, **overrides) -> dict``: ``TrainConfig`` keywords for a few CPU steps of ``tiny_unet``
    on ``data`` (no preview grids or checkpoints until the end, no progress bar); overrides win."""
    return _tiny_train_kwargs


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., TrainConfig]:
    """``(data, out, **overrides) -> TrainConfig`` built from ``tiny_train_kwargs``."""

    def make(data: Path, out: Path, **overrides: Any) -> TrainConfig:
        from diffengine.train import TrainConfig

        return TrainConfig(**_tiny_train_kwargs(data, out=str(out), **overrides))

    return make


@pytest.fixture(scope="session")
def inception_weights() -> Path:
    """The pinned Inception weights file; skips the test with the reason when it is unavailable."""
    from diffengine.metrics.inception import InceptionWeightsError, default_weights_path

    try:
        return default_weights_path()
    except InceptionWeightsError as err:
        pytest.skip(str(err))
