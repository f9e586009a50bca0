"""Fixtures shared by the diffengine tests: one intra-op thread, a zip of real faces, tiny training
configurations (factory fixtures) and the Inception weights guard.

Helpers are fixtures rather than an importable module because pytest runs with
``--import-mode=importlib``, under which ``tests`` is not a package on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:  # imported where used: kernel tests need not load the training stack
    from diffengine.train import TrainConfig


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


def _tiny_train_kwargs(data: Path, **overrides: Any) -> dict[str, Any]:
    from diffengine.doctor import TINY_UNET

    base: dict[str, Any] = {
        "data": str(data),
        "preset": "faces32",
        "batch_size": 4,
        "log_every": 2,
        "sample_every": 10**6,
        "ckpt_every": 10**6,
        "num_samples": 4,
        "progress": False,
        "unet": dataclasses.asdict(TINY_UNET),
    }
    return base | overrides


@pytest.fixture(scope="session")
def tiny_train_kwargs() -> Callable[..., dict[str, Any]]:
    """``(data, **overrides) -> dict``: ``TrainConfig`` keywords for a few CPU steps of ``doctor.TINY_UNET``
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
